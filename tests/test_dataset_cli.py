"""``kohyawrap dataset build`` and ``lint`` through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kohyawrap.cli import main
from tests.fixtures.images import write_jpeg


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # rich wraps long messages at 80 columns


def test_build_then_lint_json(
    good_photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    code, stdout, _ = _run(
        ["dataset", "build", str(good_photos), "--trigger", "sks dog", "--class-word", "dog",
         "--model", "sdxl", "-o", str(out), "--jobs", "1", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0
    report = json.loads(stdout)
    assert [c["folder"] for c in report["concepts"]] == ["17_sks dog"]
    assert report["lint"]["ok"] is True
    code, stdout, _ = _run(
        ["dataset", "lint", str(out), "--model", "sdxl", "--trigger", "sks dog", "--json"], capsys
    )
    assert code == 0
    lint = json.loads(stdout)
    assert lint["images_with_repeats"] == 102 and lint["total_steps"] == 1020  # preset: 10 epochs
    assert lint["total_steps"] == report["lint"]["total_steps"]  # build and lint count alike


def test_build_prints_tables(
    good_photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = _run(
        ["dataset", "build", str(good_photos), "--trigger", "sks", "--model", "sd15",
         "-o", str(tmp_path / "d"), "--repeats", "4", "--caption-template", "a photo of {trigger}"],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert "4_sks" in stdout and "Buckets" in stdout and "total steps" in stdout
    assert (tmp_path / "d" / "4_sks" / "dog1.txt").read_text(encoding="utf-8") == "a photo of sks\n"


def test_missing_input_exits_2_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = _run(
        [
            "dataset",
            "build",
            str(tmp_path / "nope"),
            "--trigger",
            "x",
            "--model",
            "sd15",
            "-o",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2
    assert "does not exist" in stderr and "hint:" in stderr and "Traceback" not in stderr


def test_strict_exits_2(
    hostile_photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = _run(
        ["dataset", "build", str(hostile_photos), "--trigger", "x", "--model", "sd15",
         "-o", str(tmp_path / "o"), "--strict"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "--strict" in stderr and "empty.jpg" in stderr
    assert not (tmp_path / "o").exists()


def test_unknown_model_exits_2(
    good_photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = _run(
        [
            "dataset",
            "build",
            str(good_photos),
            "--trigger",
            "x",
            "--model",
            "sdxI",
            "-o",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "unknown model" in stderr and "sdxl" in stderr


def test_lint_exits_1_on_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "data" / "2_x"
    write_jpeg(folder / "a.jpg")
    (folder / "a.caption").write_text("x\n", encoding="utf-8")
    code, stdout, _ = _run(["dataset", "lint", str(tmp_path / "data"), "--model", "sd15"], capsys)
    assert code == 1
    assert "caption_extension" in stdout and "not ready" in stdout
    code, _, _ = _run(
        [
            "dataset",
            "lint",
            str(tmp_path / "data"),
            "--model",
            "sd15",
            "--caption-extension",
            ".caption",
        ],
        capsys,
    )
    assert code == 0


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (
        ["dataset", "--help"],
        ["dataset", "build", "--help"],
        ["dataset", "lint", "--help"],
    ):
        code, stdout, _ = _run(command, capsys)
        assert code == 0 and "kohyawrap dataset" in stdout


def test_python_dash_m_bad_input_exit_code(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "kohyawrap", "dataset", "lint", str(tmp_path), "--model", "sd15"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no concept folder" in proc.stderr and "Traceback" not in proc.stderr
