"""kohyawrap.logparse against output captured from the real sd-scripts (tests/data/sdscripts)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import TypeVar

import pytest

from kohyawrap.logparse import LogParser, diagnose, parse, readable_lines
from kohyawrap.models import (
    CheckpointSaved,
    EpochStart,
    Event,
    Failure,
    LogWarning,
    ModelSaved,
    Progress,
    TrainingStarted,
)

E = TypeVar("E")
DATA = Path(__file__).parent / "data" / "sdscripts"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sd-scripts"
ORIGINALS = {
    "sample_run_stdout.log": "sample_run/stdout.log",
    "sample_run2_stdout.log": "sample_run2_unknown_keys/stdout.log",
    "sample_run3_resume_stdout.log": "sample_run3_resume/stdout.log",
    "sample_run4_wrong_script_stdout.log": "sample_run4_wrong_script/stdout.truncated.log",
    "seed_run1_stdout.log": "seed_config_check/run1_seed_as_is.stdout.log",
    "seed_run2_stdout.log": "seed_config_check/run2_resolution_quoted.stdout.log",
}


def log(name: str) -> bytes:
    return (DATA / name).read_bytes()


def of(events: list[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_copies_equal_the_shared_originals(name: str) -> None:
    original = SHARED / ORIGINALS[name]
    if not original.is_file():
        pytest.skip(f"{original} is absent (no ../shared checkout): the copy is used alone")
    assert log(name) == original.read_bytes()


def test_sample_run_rich_log() -> None:
    events = parse(log("sample_run_stdout.log"))
    assert of(events, TrainingStarted) == [TrainingStarted(40, 40, 2, 1, 80)]
    assert of(events, EpochStart) == [EpochStart(1, 2), EpochStart(2, 2)]
    assert of(events, CheckpointSaved) == [
        CheckpointSaved("output/demo-000001.safetensors"),
        CheckpointSaved("output/demo.safetensors"),
    ]
    assert of(events, ModelSaved) == [ModelSaved()]
    assert of(events, Failure) == []
    last = of(events, Progress)[-1]
    assert (last.step, last.total, last.avr_loss, last.epoch) == (80, 80, 1.02, 2)
    assert last.sec_per_it == pytest.approx(5.29)
    assert last.elapsed_s == 7 * 60 + 3


def test_progress_covers_every_step_without_repeats() -> None:
    progress = of(parse(log("sample_run_stdout.log")), Progress)
    keys = [(p.step, p.avr_loss) for p in progress]
    assert sorted({p.step for p in progress}) == list(range(81))
    assert all(a != b for a, b in itertools.pairwise(keys))
    assert len(progress) <= 2 * 80 + 1  # at most two redraws per step are worth reporting
    assert [p.step for p in progress] == sorted(p.step for p in progress)


def test_progress_reads_eta_and_first_loss() -> None:
    progress = of(parse(log("sample_run_stdout.log")), Progress)
    first = [p for p in progress if p.step == 1]
    assert first[0].avr_loss is None  # tqdm's very first redraw has no postfix yet
    assert first[1].avr_loss == 1.22
    assert first[1].eta_s == 10 * 60 + 44
    assert first[1].epoch == 1


def test_warnings_from_rich_and_accelerate() -> None:
    warnings = [w.message for w in of(parse(log("sample_run_stdout.log")), LogWarning)]
    ignored = "ignore directory without repeats / 繰り返し回数のないディレクトリを無視します"
    assert f"{ignored}: no_prefix_folder" in warnings
    assert any("--num_cpu_threads_per_process was set to 2" in w for w in warnings)
    assert not any("no regularization images" in w for w in warnings)


def test_simple_log_with_step_saves() -> None:
    events = parse(log("sample_run2_stdout.log"))
    assert of(events, TrainingStarted) == [TrainingStarted(40, 40, 1, 1, 4)]
    assert [c.path for c in of(events, CheckpointSaved)] == [
        "output_run2/demo_steps-step00000002.safetensors",
        "output_run2/demo_steps-step00000004.safetensors",
        "output_run2/demo_steps.safetensors",
    ]
    last = of(events, Progress)[-1]
    assert (last.step, last.total, last.avr_loss) == (4, 4, 1.15)
    warnings = [w.message for w in of(events, LogWarning)]
    assert any(w.startswith("ignore directory without repeats") for w in warnings)


def test_resumed_run_starts_at_epoch_two_and_stops_at_half() -> None:
    events = parse(log("sample_run3_resume_stdout.log"))
    assert of(events, EpochStart) == [EpochStart(2, 2)]
    last = of(events, Progress)[-1]
    assert (last.step, last.total, last.avr_loss) == (40, 80, 1.02)
    assert of(events, CheckpointSaved) == [CheckpointSaved("output_resume/demo.safetensors")]


def test_rich_records_unwrap_to_the_simple_log_messages() -> None:
    # The same messages, printed rich-wrapped in sample_run and plain in sample_run2.
    rich = readable_lines(log("sample_run_stdout.log"))
    simple = readable_lines(log("sample_run2_stdout.log"))
    for message in (
        "load tokenizer from cache: model/tokenizer_cache/openai_clip-vit-large-patch14",
        "found directory train/10_sks thing contains 4 image files",
        "create LoRA network. base dim (rank): 4, alpha: 1.0",
        "neuron dropout: p=None, rank dropout: p=None, module dropout: p=None",
        "loading u-net: <All keys matched successfully>",
        "enable LoRA for text encoder: 72 modules",
    ):
        assert message in rich
        assert message in simple


def test_readable_lines_keep_the_last_frame_of_each_bar() -> None:
    lines = readable_lines(log("sample_run_stdout.log"))
    assert "steps:  50%|█████     | 40/80 [03:44<03:44,  5.61s/it, avr_loss=1.1]" in lines
    assert (
        "save train state to output/demo-000001-state/train_state.json at epoch 1 step 40" in lines
    )
    assert not any("\r" in line for line in lines)


def chunked(data: bytes, sizes: list[int]) -> list[Event]:
    parser, events, pos = LogParser(), [], 0
    for size in sizes:
        events += parser.feed(data[pos : pos + size])
        pos += size
    return events + parser.feed(data[pos:]) + parser.close()


@pytest.mark.parametrize("name", sorted(ORIGINALS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunking_never_changes_the_events(name: str, seed: int) -> None:
    data = log(name)
    rng = random.Random(seed)
    sizes = [1] * len(data) if seed == 0 else [rng.randint(1, 300) for _ in range(len(data))]
    assert chunked(data, sizes) == parse(data)


def test_a_finished_frame_is_reported_before_the_next_redraw() -> None:
    data = log("sample_run2_stdout.log")
    end = data.index(b"avr_loss=1.22]") + len(b"avr_loss=1.22]")
    parser = LogParser()
    last = parser.feed(data[:end])[-1]
    assert isinstance(last, Progress)
    assert (last.step, last.avr_loss) == (1, 1.22)
    assert not [e for e in parser.feed(b"\r") if isinstance(e, Progress)]


def test_traceback_glued_to_a_frame() -> None:
    data = (
        b"\rsteps:  50%|\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88     | 2/4"
        b" [00:14<00:14,  7.08s/it, avr_loss=1.22]Traceback (most recent call last):\n"
        b'  File "train_network.py", line 1913, in <module>\n'
        b"    trainer.train(args)\n"
        b"ValueError: boom\n"
    )
    events = parse(data)
    assert isinstance(events[0], Progress)
    assert (events[0].step, events[0].avr_loss) == (2, 1.22)
    assert events[-1] == Failure(
        "other", "ValueError: boom", "see the log lines above for the cause"
    )


def test_parser_reports_failures_as_they_happen() -> None:
    events = parse(log("sample_run4_wrong_script_stdout.log"))
    failures = of(events, Failure)
    assert [f.kind for f in failures] == ["model_load"]
    assert "SdxlUNet2DConditionModel" in failures[0].message


def test_parser_tail_is_readable() -> None:
    parser = LogParser(tail_lines=5)
    parser.feed(log("seed_run1_stdout.log"))
    parser.close()
    tail = parser.tail()
    assert len(tail) == 5
    assert tail[-1] == "AttributeError: 'int' object has no attribute 'split'"


def test_tail_mid_run_ends_with_the_current_frame() -> None:
    data = log("sample_run2_stdout.log")
    end = data.index(b"avr_loss=1.22]") + len(b"avr_loss=1.22]")
    parser = LogParser()
    parser.feed(data[:end])
    assert parser.tail()[-1].endswith("1/4 [00:07<00:22,  7.59s/it, avr_loss=1.22]")
    assert parser.tail() == parser.tail()


@pytest.mark.parametrize(
    ("name", "kind", "hint_word"),
    [
        ("sample_run4_wrong_script_stdout.log", "model_load", "not SDXL"),
        ("seed_run1_stdout.log", "config", "resolution"),
        ("seed_run2_stdout.log", "config", "network_module"),
    ],
)
def test_diagnose_captured_failures(name: str, kind: str, hint_word: str) -> None:
    failure = diagnose(log(name).decode("utf-8"))
    assert failure is not None
    assert failure.kind == kind
    assert hint_word in failure.hint


def test_diagnose_a_clean_run_finds_nothing() -> None:
    assert diagnose(log("sample_run_stdout.log").decode("utf-8")) is None


OOM_TAIL = (
    "steps:   1%|▏         | 1/80 [00:03<04:12,  3.20s/it, avr_loss=0.121]"
    "Traceback (most recent call last):\n"
    '  File "/root/sd-scripts/train_network.py", line 1913, in <module>\n'
    "    trainer.train(args)\n"
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total"
    " capacity of 23.55 GiB of which 1.06 GiB is free.\n"
    "Traceback (most recent call last):\n"
    '  File "/venv/bin/accelerate", line 8, in <module>\n'
    "    sys.exit(main())\n"
    "subprocess.CalledProcessError: Command '['/venv/bin/python', 'train_network.py']' returned"
    " non-zero exit status 1.\n"
)


def test_oom_hint_names_the_next_settings_to_change() -> None:
    settings = {
        "train_batch_size": 4,
        "gradient_checkpointing": False,
        "cache_latents": True,
        "optimizer_type": "AdamW8bit",
        "mixed_precision": "bf16",
        "network_dim": 32,
    }
    failure = diagnose(OOM_TAIL, settings)
    assert failure is not None
    assert failure.kind == "oom"
    assert failure.message.startswith("torch.OutOfMemoryError: CUDA out of memory.")
    assert "--set gradient_checkpointing=true" in failure.hint
    assert "--set train_batch_size=2 (now 4)" in failure.hint
    assert "--set network_dim=16 (now 32)" in failure.hint
    assert "cache_latents" not in failure.hint  # already on


def test_oom_hint_when_every_saving_is_on() -> None:
    settings = {
        "train_batch_size": 1,
        "gradient_checkpointing": True,
        "cache_latents": True,
        "optimizer_type": "AdamW8bit",
        "mixed_precision": "bf16",
        "network_dim": 8,
        "resolution": "512",
    }
    failure = diagnose(OOM_TAIL, settings)
    assert failure is not None
    assert "larger GPU" in failure.hint


def test_oom_hint_without_settings_lists_the_levers() -> None:
    failure = diagnose("RuntimeError: CUDA error: out of memory\n")
    assert failure is not None
    assert failure.kind == "oom"
    for word in ("train_batch_size", "gradient_checkpointing", "network_dim", "AdamW8bit"):
        assert word in failure.hint


@pytest.mark.parametrize(
    ("tail", "kind", "hint_word"),
    [
        ("OSError: [Errno 28] No space left on device\n", "disk", "disk is full"),
        ("ModuleNotFoundError: No module named 'bitsandbytes'\n", "import", "optimizer_type=AdamW"),
        ("ModuleNotFoundError: No module named 'xformers'\n", "import", "sdpa=true"),
        ("ModuleNotFoundError: No module named 'cv2'\n", "import", "pip install opencv-python"),
        (
            "RuntimeError: Error(s) in loading state_dict for UNet2DConditionModel:\n",
            "model_load",
            "sdxl preset",
        ),
        ("run/config.toml not found.\n", "config", "--config_file"),
    ],
)
def test_diagnose_signatures(tail: str, kind: str, hint_word: str) -> None:
    failure = diagnose(tail)
    assert failure is not None
    assert (failure.kind, hint_word in failure.hint) == (kind, True)


def test_no_data_names_the_ignored_folders_even_with_exit_zero() -> None:
    # sd-scripts logs this and returns normally: the exit status is 0.
    text = (
        "ignore directory without repeats / 繰り返し回数のないディレクトリを無視します: dogs\n"
        "0 train images with repeats.\n"
        "No data found. Please verify arguments (train_data_dir must be the parent of folders"
        " with images)\n"
    )
    events = parse(text.encode())
    failure = of(events, Failure)[-1]
    assert failure.kind == "no_data"
    assert "<repeats>_<concept>" in failure.hint
    assert failure.hint.endswith("ignored (no repeat count): dogs")


def test_nan_loss_is_reported_once_while_running() -> None:
    frames = "".join(
        f"\rsteps:  {n}%|          | {n}/9 [00:0{n}<00:01,  1.00s/it, avr_loss=nan]"
        for n in range(1, 5)
    )
    events = parse(frames.encode(), settings={"unet_lr": 1e-4, "mixed_precision": "fp16"})
    failures = of(events, Failure)
    assert len(failures) == 1
    assert failures[0].kind == "nan"
    assert "--set unet_lr=5e-05" in failures[0].hint
    assert "mixed_precision=bf16" in failures[0].hint


def test_other_failure_prefers_the_scripts_exception_over_accelerates() -> None:
    tail = (
        "Traceback (most recent call last):\n"
        "KeyError: 'model.diffusion_model.input_blocks.0.0.weight'\n"
        "Traceback (most recent call last):\n"
        "subprocess.CalledProcessError: Command '['python']' returned non-zero exit status 1.\n"
    )
    failure = diagnose(tail)
    assert failure is not None
    assert (failure.kind, failure.message) == (
        "other",
        "KeyError: 'model.diffusion_model.input_blocks.0.0.weight'",
    )


def test_a_killed_script_hints_at_host_memory() -> None:
    tail = (
        "subprocess.CalledProcessError: Command '['python', 'train_network.py']'"
        " died with <Signals.SIGKILL: 9>.\n"
    )
    failure = diagnose(tail)
    assert failure is not None
    assert "ran out of RAM" in failure.hint


def test_the_loss_shown_for_a_step_is_that_steps_loss() -> None:
    # sd-scripts draws step N first with step N-1's loss, then with its own. Whatever the chunks
    # a follower reads, a reported step never carries the previous step's loss: the real run's
    # frames are checked against its own TensorBoard scalars (loss/average per step).
    scalars = json.loads((DATA / "sample_run_tensorboard_scalars.json").read_text())["scalars"]
    average = {int(step): value for step, value in scalars["loss/average"]}
    data = log("sample_run_stdout.log")
    for seed in (0, 1, 2, 3):
        rng = random.Random(seed)
        sizes = [rng.randint(1, 200) for _ in range(len(data))]
        reported = [e for e in chunked(data, sizes) if isinstance(e, Progress)]
        with_loss = [p for p in reported if p.avr_loss is not None]
        assert len({p.step for p in with_loss}) == 80, "every step is reported with its loss"
        for p in with_loss:
            assert p.avr_loss == float(f"{average[p.step]:.3g}"), (p.step, p.avr_loss)
