"""The entry point as a shell sees it: closed pipes and shell completion, in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.images import write_jpeg


def kohyawrap_closed_stdout(*args: str) -> subprocess.CompletedProcess[str]:
    """``kohyawrap ARGS`` writing into a pipe whose reader has already gone (``| head -0``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    try:
        return subprocess.run(
            [sys.executable, "-m", "kohyawrap", *args],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ["presets", "list"],  # rich tables
        ["presets", "list", "--json"],  # click.echo
        ["presets", "show", "rtx4090", "--model", "sdxl"],
        ["--help"],  # printed while the arguments are parsed
        ["presets", "show", "--help"],
        ["--version"],
    ],
    ids=" ".join,
)
def test_a_closed_pipe_ends_quietly_with_0(args: list[str]) -> None:
    done = kohyawrap_closed_stdout(*args)
    assert (done.returncode, done.stderr) == (0, "")


def test_a_reader_that_leaves_after_one_line_is_no_failure() -> None:
    # kohyawrap presets show ... | head -1: the reader goes away while output still comes.
    with subprocess.Popen(
        [sys.executable, "-m", "kohyawrap", "presets", "show", "rtx4090", "--model", "sdxl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "400"},
    ) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
    assert first.strip() and (code, err) == (0, b"")


def test_a_closed_pipe_keeps_the_exit_code_of_an_error() -> None:
    done = kohyawrap_closed_stdout("presets", "show", "rtx9999", "--model", "sdxl")
    assert done.returncode == 2 and "unknown GPU preset" in done.stderr


@pytest.mark.parametrize("json", [[], ["--json"]], ids=["text", "json"])
def test_lint_errors_still_exit_1_into_a_closed_pipe(tmp_path: Path, json: list[str]) -> None:
    data = tmp_path / "数据"
    (data / "10_sks dog").mkdir(parents=True)
    write_jpeg(data / "10_sks dog" / "a.jpg", (600, 600))
    (data / "10_sks dog" / "b.jpg").write_bytes(b"not a jpeg")
    done = kohyawrap_closed_stdout("dataset", "lint", str(data), "--model", "sd15", *json)
    assert (done.returncode, done.stderr) == (1, "")
    clean = tmp_path / "clean"
    (clean / "10_sks dog").mkdir(parents=True)
    write_jpeg(clean / "10_sks dog" / "a.jpg", (600, 600))
    assert kohyawrap_closed_stdout("dataset", "lint", str(clean), "--model", "sd15").returncode == 0


# ---------------------------------------------------------------------------------------------
# Shell completion (click's own, through the lazily imported command groups)


def complete(words: str, shell: str = "bash") -> list[str]:
    """What ``kohyawrap`` answers a shell asking to complete the last of ``words``."""
    parts = words.split(" ")
    env = {
        **os.environ,
        "_KOHYAWRAP_COMPLETE": f"{shell}_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1),
    }
    done = subprocess.run(
        [sys.executable, "-m", "kohyawrap"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [line.split(",", 1)[1] for line in done.stdout.splitlines()]


def test_completion_lists_subcommands_of_the_lazy_group() -> None:
    assert complete("kohyawrap p") == ["presets", "plan", "pull"]
    assert complete("kohyawrap dataset ") == ["build", "caption", "lint"]
    assert complete("kohyawrap config r") == ["render"]


def test_completion_lists_options_and_preset_names() -> None:
    assert "--compare" in complete("kohyawrap plan --co")
    assert complete("kohyawrap dataset lint ./data --model sd") == [
        "sd15",
        "sd2",
        "sd35-large",
        "sd35-medium",
        "sdxl",
    ]
    assert complete("kohyawrap plan --gpu rtx40") == ["rtx4060ti-16gb", "rtx4080-16gb", "rtx4090"]
    assert "rtx3090" in complete("kohyawrap presets show rtx")


def test_completion_offers_a_users_own_presets(tmp_path: Path, monkeypatch) -> None:
    models = tmp_path / "presets" / "models"
    models.mkdir(parents=True)
    (models / "sdxl_pony.toml").write_text('extends = "sdxl"\n', encoding="utf-8")
    monkeypatch.setenv("KOHYAWRAP_CONFIG_DIR", str(tmp_path))
    assert "sdxl_pony" in complete("kohyawrap config render --model sdxl")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_is_produced_for_each_documented_shell(shell: str) -> None:
    env = {**os.environ, "_KOHYAWRAP_COMPLETE": f"{shell}_source"}
    done = subprocess.run(
        [sys.executable, "-m", "kohyawrap"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "_KOHYAWRAP_COMPLETE" in done.stdout and "kohyawrap" in done.stdout
    docs = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text("utf-8")
    assert f"_KOHYAWRAP_COMPLETE={shell}_source kohyawrap" in docs


def test_bash_completes_through_the_documented_line() -> None:
    script = Path(sys.executable).parent / "kohyawrap"
    if not script.exists():
        pytest.skip("no kohyawrap console script next to this python (not installed with pip)")
    line = 'eval "$(_KOHYAWRAP_COMPLETE=bash_source kohyawrap)"'  # docs/cli.md, for ~/.bashrc
    words = "COMP_WORDS=(kohyawrap dataset lint ./数据 --model s); COMP_CWORD=5"
    done = subprocess.run(
        ["bash", "-c", f'{line}; {words}; _kohyawrap_completion kohyawrap; echo "${{COMPREPLY[@]}}"'],
        env={**os.environ, "PATH": f"{script.parent}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.split() == ["sd15", "sd2", "sd35-large", "sd35-medium", "sdxl"], done.stderr
