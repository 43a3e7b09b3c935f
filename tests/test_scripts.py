"""scripts/check, scripts/test and scripts/demo, run by the real bash in a copy of the repository.

The interpreter in the copy's .venv is a recording stand-in (a shell script that logs how it was
called), so these tests check what each script runs without installing or linting anything.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RECORDER = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "{log}"
"""


def _repo_copy(tmp_path: Path, *scripts: str) -> tuple[Path, Path]:
    """A folder with the given scripts and a .venv whose python records its arguments."""
    repo = tmp_path / "仓库 repo"
    (repo / "scripts").mkdir(parents=True)
    for name in scripts:
        shutil.copy2(ROOT / "scripts" / name, repo / "scripts" / name)
    log = tmp_path / "calls.log"
    _recorder(repo / ".venv" / "bin" / "python", log)
    return repo, log


def _recorder(path: Path, log: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECORDER.format(log=log), encoding="utf-8")
    path.chmod(0o755)


def _path_without_python(tmp_path: Path) -> str:
    """A PATH where `python` fails, as on a machine whose python lacks the dev tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    broken = bin_dir / "python"
    broken.write_text("#!/bin/sh\necho 'No module named ruff' >&2\nexit 1\n", encoding="utf-8")
    broken.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_check_uses_the_venv_not_the_python_on_path(tmp_path: Path) -> None:
    repo, log = _repo_copy(tmp_path, "check")
    env = {**os.environ, "PATH": _path_without_python(tmp_path)}
    env.pop("PYTHON", None)
    done = subprocess.run(
        [str(repo / "scripts" / "check")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    assert "python -c import ruff, mypy" in calls  # the dev tools are there: no reinstall
    assert "python -m ruff format --check kohyawrap tests scripts" in calls
    assert "python -m ruff check kohyawrap tests scripts" in calls
    assert calls[-1] == "python -m mypy kohyawrap"
    assert "check: ok" in done.stdout


def test_check_honours_python(tmp_path: Path) -> None:
    repo, log = _repo_copy(tmp_path, "check")
    other = tmp_path / "other" / "python3.12"
    _recorder(other, log)
    env = {**os.environ, "PYTHON": str(other)}
    done = subprocess.run(
        [str(repo / "scripts" / "check")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    assert calls == [
        "python3.12 -m ruff format --check kohyawrap tests scripts",
        "python3.12 -m ruff check kohyawrap tests scripts",
        "python3.12 -m mypy kohyawrap",
    ]


def test_test_passes_arguments_to_pytest_for_the_fast_tier(tmp_path: Path) -> None:
    repo, log = _repo_copy(tmp_path, "test")
    env = {**os.environ, "KOHYAWRAP_TEST_SSHD": str(ROOT / "scripts" / "test")}  # "installed"
    done = subprocess.run(
        [str(repo / "scripts" / "test"), "-m", "not slow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    # The fast tier runs on every core (pytest-xdist), two workers a core.
    assert re.fullmatch(r"python -m pytest -q -n (\d+) -m not slow", calls[-1]), calls
    workers = int(calls[-1].split()[5])
    assert workers >= 2 and workers % 2 == 0


def test_test_runs_the_fast_tier_in_parallel_then_the_slow_tier_alone(tmp_path: Path) -> None:
    repo, log = _repo_copy(tmp_path, "test")
    env = {**os.environ, "KOHYAWRAP_TEST_SSHD": str(ROOT / "scripts" / "test")}  # "installed"
    done = subprocess.run(
        [str(repo / "scripts" / "test")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    calls = [c for c in log.read_text(encoding="utf-8").splitlines() if "pytest" in c]
    assert len(calls) == 2, calls
    assert re.fullmatch(r"python -m pytest -q -n \d+ -m not slow", calls[0]), calls
    assert calls[1] == "python -m pytest -q -m slow"
    # Anything else goes to one pytest process as given.
    done = subprocess.run(
        [str(repo / "scripts" / "test"), "-k", "ssh"], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert log.read_text(encoding="utf-8").splitlines()[-1] == "python -m pytest -q -k ssh"


@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/test installs sshd only as root")
def test_test_installs_sshd_with_apt_get_when_root(tmp_path: Path) -> None:
    repo, log = _repo_copy(tmp_path, "test")
    tools = tmp_path / "tools"
    _recorder(tools / "apt-get", log)
    env = {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "KOHYAWRAP_TEST_SSHD": str(tmp_path / "no" / "sshd"),
    }
    done = subprocess.run(
        [str(repo / "scripts" / "test")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    assert "apt-get update -qq" in calls
    assert "apt-get install -y -qq openssh-server" in calls
    first_pytest = next(i for i, call in enumerate(calls) if "pytest" in call)
    assert calls.index("apt-get install -y -qq openssh-server") < first_pytest
    assert "installing openssh-server" in done.stderr


@pytest.mark.slow
def test_missing_sshd_ends_the_run_with_one_line_and_the_command(tmp_path: Path) -> None:
    env = {**os.environ, "KOHYAWRAP_TEST_SSHD": str(tmp_path / "no" / "sshd")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_hosts_ssh.py", "-k", "not silent_port"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    skipped = int(last.split(" SSH tests skipped")[0])
    assert skipped >= 5
    assert f"no {tmp_path / 'no' / 'sshd'}" in last
    assert "openssh" in last and last.endswith("&& scripts/test")
