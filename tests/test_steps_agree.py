"""One dataset, one step count: the README's dataset build, dataset lint and plan commands, run as
written on the example photos, print the same total steps (sd-scripts' arithmetic, from the same
presets); without a GPU preset, build and lint agree and say what they assumed."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from kohyawrap.dataset.example import make_example_photos
from tests.fixtures.cli import run_cli

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_command(prefix: str) -> list[str]:
    """The README's first command line that starts with ``prefix`` (continuations joined)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            text = line
            while text.endswith("\\"):
                i += 1
                text = text[:-1] + lines[i]
            words = shlex.split(text, comments=True)
            assert words[0] == "kohyawrap"
            return words[1:]
    raise AssertionError(f"README.md has no `{prefix}` command")


def steps_of(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, out = run_cli([*args, "--json"], capsys, flatten_stderr=False)
    assert code == 0, out
    return json.loads(out)


def test_readme_build_lint_and_plan_count_the_same_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the README's paths are relative: ./photos, ./training_data
    make_example_photos(tmp_path / "photos")
    build = steps_of(readme_command("kohyawrap dataset build"), capsys)["lint"]
    lint = steps_of(readme_command("kohyawrap dataset lint"), capsys)
    plan = steps_of(readme_command("kohyawrap plan"), capsys)["steps"]
    assert build["total_steps"] == lint["total_steps"] == plan["total_steps"]
    assert build["batch_size"] == lint["batch_size"] == plan["batch_size"] > 1
    assert build["epochs"] == lint["epochs"] == plan["epochs"]
    assert "rtx4090" in lint["steps_from"] and "batch size" in lint["steps_from"]


def test_without_a_gpu_build_and_lint_agree_and_say_what_they_assumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = make_example_photos(tmp_path / "照片")
    data = tmp_path / "训练 data"
    build = steps_of(["dataset", "build", str(photos), "--trigger", "zkw", "--model", "sd15",
                      "-o", str(data)], capsys)["lint"]  # fmt: skip
    lint = steps_of(["dataset", "lint", str(data), "--model", "sd15"], capsys)
    assert build["total_steps"] == lint["total_steps"] == build["batches_per_epoch"] * 10
    assert lint["epochs"] == 10  # the sd15 preset's max_train_epochs, not sd-scripts' 1600 steps
    assert "assumed" in lint["steps_from"] and "--gpu" in lint["steps_from"]
    code, text = run_cli(["dataset", "lint", str(data), "--model", "sd15"], capsys)
    assert code == 0 and "batch size 1 (assumed with no --gpu" in text


def test_lint_options_replace_the_presets_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = make_example_photos(tmp_path / "photos")
    data = tmp_path / "data"
    steps_of(["dataset", "build", str(photos), "--trigger", "zkw", "--model", "sdxl",
              "-o", str(data)], capsys)  # fmt: skip
    base = ["dataset", "lint", str(data), "--model", "sdxl", "--gpu", "rtx4090"]
    tier = steps_of(base, capsys)
    given = steps_of([*base, "--batch-size", "2", "--max-train-steps", "300"], capsys)
    assert (tier["batch_size"], tier["steps_basis"]) == (4, "epochs")
    assert (given["batch_size"], given["total_steps"], given["steps_basis"]) == (
        2,
        300,
        "max_train_steps",
    )
    assert "(given)" in given["steps_from"] and "max_train_steps=300" in given["steps_from"]
    plan = steps_of(["plan", "--gpu", "rtx4090", "--model", "sdxl", "--dataset", str(data),
                     "--set", "train_batch_size=2"], capsys)  # fmt: skip
    assert plan["steps"]["batches_per_epoch"] == given["batches_per_epoch"]
