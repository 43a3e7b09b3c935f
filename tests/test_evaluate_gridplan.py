"""The grid as data: checkpoints read from sd-scripts' names and metadata, which ones are drawn,
the prompt file of each call, image names, the command, the estimate."""

from __future__ import annotations

import pytest

from kohyawrap.errors import UsageError
from kohyawrap.evaluate.gridplan import (
    Checkpoint,
    build_grid,
    call_count,
    cell_name,
    check_listed_epochs,
    checkpoint_of,
    choose,
    generation_args,
    image_count,
    planned_checkpoints,
    saved_epochs,
    spread,
)
from kohyawrap.evaluate.options import GridOptions, parse_grid
from kohyawrap.evaluate.prompts import PromptDefaults, split_line
from kohyawrap.evaluate.record import GridRecord

NAME = "柴犬 lora"
DEFAULTS = PromptDefaults("lowres", 512, 768, 28, 7.0)


def ckpt(epoch: int, total: int = 10) -> Checkpoint:
    # As train_network.py names them: <name>.safetensors at the end, <name>-<epoch:06d> before.
    name = f"{NAME}.safetensors" if epoch == total else f"{NAME}-{epoch:06d}.safetensors"
    found = checkpoint_of(f"output/{name}", f"checkpoints/{name}", NAME,
                          {"ss_epoch": str(epoch), "ss_steps": str(epoch * 40)})  # fmt: skip
    assert found is not None
    return found


def test_checkpoints_are_read_from_sd_scripts_names_and_metadata() -> None:
    final = ckpt(10)
    assert (final.kind, final.epoch, final.step, final.key, final.label) == (
        "final", 10, 400, "final", "epoch 10 (last)"
    )  # fmt: skip
    six = ckpt(6)
    assert (six.kind, six.epoch, six.key, six.label) == ("epoch", 6, "e000006", "epoch 6")
    step = checkpoint_of(f"output/{NAME}-step{500:08d}.safetensors", "x", NAME, {"ss_epoch": "2"})
    assert step is not None and (step.kind, step.step, step.key) == ("step", 500, "s00000500")
    assert checkpoint_of("output/other.safetensors", "x", NAME, {}) is None


def test_saved_epochs_and_listed_epochs_are_checked_before_renting() -> None:
    assert saved_epochs(10, 2) == (2, 4, 6, 8, 10)
    assert saved_epochs(5, None) == (5,)
    check_listed_epochs(parse_grid("epochs=4,10"), 10, 2)
    with pytest.raises(UsageError, match="epoch\\(s\\) 3") as err:
        check_listed_epochs(parse_grid("epochs=3,10"), 10, 2)
    assert "2, 4, 6, 8, 10" in err.value.evidence[0]


def test_auto_choice_spreads_over_the_later_part_and_keeps_the_last() -> None:
    assert spread(3) == [0, 1, 2]
    assert spread(10) == [4, 5, 7, 9]  # epochs 5, 6, 8, 10
    assert spread(5) == [1, 2, 3, 4]
    all_ = [ckpt(e) for e in range(1, 11)]
    chosen, missing = choose(all_, GridOptions())
    assert [c.epoch for c in chosen] == [5, 6, 8, 10] and missing == ()
    # The loss verdict's epoch is swapped in for the nearest automatic pick.
    chosen, _ = choose(all_, GridOptions(), prefer=[3])
    assert [c.epoch for c in chosen] == [3, 6, 8, 10]
    listed, missing = choose(all_[:5], parse_grid("epochs=2,5,9"))
    assert [c.epoch for c in listed] == [2, 5] and missing == (9,)
    assert len(choose(all_, parse_grid("epochs=all"))[0]) == 10


def test_the_grid_draws_the_base_model_once_without_the_lora_and_names_every_image() -> None:
    options = parse_grid("strengths=0,0.5,1,seeds=2")
    prompts = ("a photo of sks dog", "一只 sks dog --n 模糊 --w 640")
    plan = build_grid([ckpt(6), ckpt(10)], options, prompts, DEFAULTS)
    assert len(plan.cells) == image_count(2, options, len(prompts)) == 2 * 2 * (1 + 2 * 2)
    base, first, second = plan.calls
    assert (base.checkpoint, base.key, base.label) == (None, "base", "the base model")
    assert len(base.lines) == 2 * 2 and not any("--am" in line for line in base.lines)
    assert base.names[0] == cell_name("", 0, 1, 0) == "base_p01_d1.png"
    assert len(first.lines) == len(first.names) == len(second.lines) == 2 * 2 * 2
    assert second.names[-1] == "final_p02_d2_m+1p000.png"
    assert len({n for call in plan.calls for n in call.names}) == len(plan.cells)
    assert call_count(2, options) == 3 and call_count(2, parse_grid("strengths=1")) == 2
    text, line_options = split_line(first.lines[-1])
    assert text == "一只 sks dog"
    assert dict(line_options) == {"n": "模糊", "w": "640", "h": "768", "s": "28", "l": "7",
                                  "d": "2", "am": "1"}  # fmt: skip
    # Same strength next to each other: gen_img.py batches lines with the same settings.
    strengths = [dict(split_line(line)[1])["am"] for line in first.lines]
    assert strengths == sorted(strengths, key=float) and set(strengths) == {"0.5", "1"}


def test_grid_record_rebuilds_the_same_plan_from_json() -> None:
    options = parse_grid("epochs=6,10,seeds=2")
    record = GridRecord("01", "running", options, checkpoints=(ckpt(6), ckpt(10)),
                        prompts=("a 柴犬",), defaults=DEFAULTS, failed={"e000006": 1})  # fmt: skip
    again = GridRecord.from_json(record.to_json())
    assert again == record
    assert again is not None and again.plan() == record.plan()
    assert GridRecord.from_json(None) is None


def test_planned_checkpoints_for_the_estimate() -> None:
    assert planned_checkpoints(GridOptions(), 10, 1) == 4
    assert planned_checkpoints(GridOptions(), 2, 1) == 2
    assert planned_checkpoints(parse_grid("epochs=all"), 10, 2) == 5
    assert planned_checkpoints(parse_grid("epochs=4,8"), 10, 2) == 2


@pytest.mark.parametrize(
    ("script", "settings", "expected", "absent"),
    [
        ("train_network.py", {"mixed_precision": "fp16", "v2": True, "v_parameterization": True,
                              "clip_skip": 2},
         ["gen_img.py", "--fp16", "--v2", "--v_parameterization", "--clip_skip", "--sdpa"], []),
        ("sdxl_train_network.py", {"mixed_precision": "bf16", "xformers": True, "v2": True,
                                   "no_half_vae": True},
         ["sdxl_gen_img.py", "--bf16", "--xformers", "--no_half_vae"], ["--v2", "--sdpa"]),
        ("train_network.py", {"mixed_precision": "no"}, ["gen_img.py"], ["--fp16", "--bf16"]),
    ],
)  # fmt: skip
def test_generation_args_follow_the_training_settings(
    script: str, settings: dict[str, object], expected: list[str], absent: list[str]
) -> None:
    args = generation_args(
        training_script=script, sd_scripts="/w/sds", model="/w/m.safetensors",
        lora="/w/run/output/x.safetensors", prompt_file="/w/p.txt", outdir="/w/raw",
        settings={"network_module": "networks.lora", "sample_sampler": "k_euler_a", **settings},
        batch_size=4, tokenizer_cache_dir="/w/tok",
    )  # fmt: skip
    joined = " ".join(args)
    for flag in expected:
        assert flag in joined
    for flag in absent:
        assert flag not in args
    assert args[0].endswith(expected[0])
    pairs = dict(zip(args[1::2], args[2::2], strict=False))
    assert args[args.index("--network_weights") + 1] == "/w/run/output/x.safetensors"
    assert args[args.index("--sampler") + 1] == "k_euler_a"
    assert args[args.index("--batch_size") + 1] == "4"
    assert "--sequential_file_name" in args and pairs


def test_the_base_models_call_loads_no_lora() -> None:
    args = generation_args(
        training_script="train_network.py", sd_scripts="/s", model="/m", lora=None,
        prompt_file="/p", outdir="/o", settings={}, batch_size=1, tokenizer_cache_dir=None,
    )  # fmt: skip
    assert not any(a.startswith("--network") for a in args)


def test_no_grid_for_a_family_without_a_generation_script() -> None:
    with pytest.raises(UsageError, match=r"flux_train_network\.py"):
        generation_args(
            training_script="flux_train_network.py", sd_scripts="/s", model="/m", lora="/l",
            prompt_file="/p", outdir="/o", settings={}, batch_size=1, tokenizer_cache_dir=None,
        )  # fmt: skip
