"""``kohyawrap plan`` and ``kohyawrap demo`` through the CLI."""

from __future__ import annotations

import json

from tests.fixtures.cli import run_cli
from tests.test_forecast import make_dataset


def run(args: list[str], capsys) -> tuple[int, str]:
    return run_cli(args, capsys)


def test_plan_prints_steps_time_and_cost(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    code, text = run(
        ["plan", "--gpu", "rtx4090", "--model", "sd15", "--dataset", str(data), "--price", "0.70"],
        capsys,
    )
    assert code == 0, text
    for needle in ("160 steps", "16 batches of 4", "training", "model download", "$0.70/h", "fits"):
        assert needle in text, needle
    assert "at once" in text and "set-up and transfers" in text, "set-up is costed apart"


def test_plan_json_with_compare(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    code, text = run(
        [
            "plan",
            "--gpu",
            "rtx3090",
            "--model",
            "sdxl",
            "--dataset",
            str(data),
            "--compare",
            "--json",
        ],
        capsys,
    )
    assert code == 0, text
    plan = json.loads(text)
    assert plan["estimate"]["gpu"] == "rtx3090" and plan["script"] == "sdxl_train_network.py"
    assert len(plan["compare"]) == 11 and {"fits", "dollars", "train_seconds"} <= set(
        plan["compare"][0]
    )


def test_plan_refuses_what_will_not_fit_unless_forced(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    args = ["plan", "--gpu", "rtx3060-12gb", "--model", "sdxl", "--dataset", str(data),
            "--set", "train_batch_size=8", "--set", "gradient_checkpointing=false"]  # fmt: skip
    code, text = run(args, capsys)
    assert (
        code == 2
        and "VRAM" in text
        and "gradient_checkpointing" in text
        and "Traceback" not in text
    )
    code, text = run([*args, "--force"], capsys)
    assert code == 0 and "does NOT fit" in text


def test_plan_of_a_missing_dataset_is_a_clear_error(tmp_path, capsys):
    code, text = run(
        ["plan", "--gpu", "rtx4090", "--model", "sd15", "--dataset", str(tmp_path / "nope")], capsys
    )
    assert code == 2 and "Traceback" not in text


def test_demo_builds_renders_and_plans(tmp_path, capsys):
    out = tmp_path / "demo"
    code, text = run(["demo", "-o", str(out)], capsys)
    assert code == 0, text
    assert (out / "my_lora" / "training_config.toml").is_file()
    assert any(p.name[0].isdigit() for p in (out / "training_data").iterdir())
    assert "steps" in text and "h100" in text and "fits?" in text
    assert "writing the demo into" in text


def test_demo_runs_again_replacing_its_own_output(tmp_path, capsys):
    out = tmp_path / "演示 demo"
    assert run(["demo", "-o", str(out)], capsys)[0] == 0
    config = (out / "my_lora" / "training_config.toml").read_bytes()
    (out / "photos" / "stray.jpg").write_bytes(b"not a photo")  # in the demo's own folder
    code, text = run(["demo", "-o", str(out)], capsys)
    assert code == 0, text
    assert f"replacing the earlier demo in {out}" in " ".join(text.split())  # rich wraps
    assert not (out / "photos" / "stray.jpg").exists()
    assert (out / "my_lora" / "training_config.toml").read_bytes() == config


def test_demo_refuses_a_folder_it_did_not_make_unless_forced(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "holiday.jpg").write_bytes(b"the user's own file")
    code, text = run(["demo", "-o", str(out)], capsys)
    assert code == 2 and "did not make" in text and "--force" in text
    assert run(["demo", "-o", str(out), "--force"], capsys)[0] == 0
    # Forced into a foreign folder: nothing there becomes the demo's to delete later.
    assert run(["demo", "-o", str(out), "--force"], capsys)[0] == 0
    assert (out / "photos" / "holiday.jpg").read_bytes() == b"the user's own file"
