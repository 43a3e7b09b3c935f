"""Every command registered in kohyawrap.cli.COMMANDS has working help with an example."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest

from kohyawrap.cli import COMMANDS
from tests.fixtures.cli import run_cli


def _walk(command: click.Command, path: tuple[str, ...]):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _walk(sub, (*path, name))


def _all_commands():
    for name, (module, attr, _help) in COMMANDS.items():
        command = getattr(importlib.import_module(module), attr)
        yield from _walk(command, (name,))


ALL = [path for path, _ in _all_commands()]


def run(args: list[str], capsys) -> tuple[int, str]:
    return run_cli(args, capsys, flatten_stderr=False)


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_help_exits_0_and_shows_an_example(path, capsys):
    code, text = run([*path, "--help"], capsys)
    assert code == 0, text
    examples = [ln for ln in text.splitlines() if "kohyawrap " in ln and "Usage:" not in ln]
    assert examples, f"{' '.join(path)} --help has no example line (a 'kohyawrap ...' line)"


def test_top_level_help_lists_every_command(capsys):
    code, text = run(["--help"], capsys)
    assert code == 0
    assert all(name in text for name in COMMANDS)


def test_entry_points_start(tmp_path):
    command = [sys.executable, "-m", "kohyawrap", "--help"]
    module = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert module.returncode == 0 and "kohyawrap demo" in module.stdout
    script = Path(sys.executable).parent / "kohyawrap"
    if script.exists():
        result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "Commands" in result.stdout
