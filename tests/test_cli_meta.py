"""Every command registered in kohyawrap.cli.COMMANDS has working help with an example."""

from __future__ import annotations

import importlib
import re
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


# ---------------------------------------------------------------------------------------------
# Every option is documented: in a docs/*.md page that names its command, or in an example of
# the command's own --help. Written over whatever commands and options exist, so it keeps up
# with new ones.

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _lazy_walk(command: click.Command, path: tuple[str, ...], ctx: click.Context):
    """Every command reachable the way a user reaches it: through the LazyGroup."""
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from _lazy_walk(
                sub, (*path, name), click.Context(sub, info_name=name, parent=ctx)
            )


def _options() -> list[tuple[str, click.Command, click.Option]]:
    from kohyawrap.cli import cli

    found = []
    for path, command in _lazy_walk(cli, (), click.Context(cli, info_name="kohyawrap")):
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help" and path:
                found.append((" ".join(path), command, param))
    return found


OPTIONS = _options()


def _mentions(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def _names_command(text: str, path: str) -> bool:
    return f"kohyawrap {path}" in text or f"`{path}`" in text or f"`{path} " in text


def _help_examples(command: click.Command) -> str:
    """The example lines of a command's help (a `kohyawrap ...` line and its continuations)."""
    lines, keep = [], False
    for line in (command.help or "").splitlines():
        keep = "kohyawrap " in line or (keep and lines[-1].rstrip().endswith("\\"))
        if keep:
            lines.append(line)
    return "\n".join(lines)


def test_every_command_and_option_is_found() -> None:
    paths = {path for path, _, _ in OPTIONS}
    assert {"dataset build", "dataset lint", "plan", "config render", "train"} <= paths
    assert len(OPTIONS) > 100


@pytest.mark.parametrize(
    ("path", "command", "option"),
    OPTIONS,
    ids=[f"{path} {option.opts[-1]}" for path, _, option in OPTIONS],
)
def test_every_option_is_documented(path: str, command: click.Command, option: click.Option):
    flags = [*option.opts, *option.secondary_opts]
    if any(_mentions(_help_examples(command), flag) for flag in flags):
        return
    pages = [p for p in sorted(DOCS.glob("*.md")) if _names_command(p.read_text("utf-8"), path)]
    documented = [p.name for p in pages if any(_mentions(p.read_text("utf-8"), f) for f in flags)]
    assert documented, (
        f"`kohyawrap {path}` {'/'.join(flags)} is in no example of its --help and in no docs page "
        f"that names the command ({', '.join(p.name for p in pages) or 'none'})"
    )


@pytest.mark.parametrize(
    ("path", "command"), list(_all_commands()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_no_two_options_of_a_command_share_a_flag_or_a_name(path: str, command: click.Command):
    # Two option groups adding the same flag (or the same parameter name) on one command make
    # click warn, and the command then crashes on a KeyError when it runs.
    flags = [f for p in command.params for f in (*p.opts, *p.secondary_opts)]
    names = [p.name for p in command.params]
    assert len(flags) == len(set(flags)), sorted(f for f in flags if flags.count(f) > 1)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)  # type: ignore[arg-type]
