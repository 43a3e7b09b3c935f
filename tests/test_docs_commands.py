"""Every `kohyawrap ...` command written in README.md and docs/*.md names a command, and options,
that exist: the lines of code blocks and the inline code of the prose, read with click's own
command tree (nothing is run). A renamed option or command fails here, in the fast tier, before
a user copies the line. tests/test_readme.py runs the README's blocks for real."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from kohyawrap.cli import cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_INLINE = re.compile(r"`(kohyawrap [^`]+)`")
_SHELL_ENDS = ("|", "||", "&&", ";", ">", ">>", "2>", "<", "&")
PLACEHOLDER = "..."  # `kohyawrap train ... --grid ...`: words left out on purpose


@dataclass(frozen=True)
class Written:
    """One `kohyawrap` command as a page writes it."""

    page: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def _fenced_commands(name: str, lines: list[str]) -> list[Written]:
    found, fenced, i = [], False, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced and re.match(r"\s*(\$ )?kohyawrap ", line):
            start, text = i, line.strip().removeprefix("$ ")
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            found.append(Written(name, start + 1, text))
        i += 1
    return found


def _inline_commands(name: str, lines: list[str]) -> list[Written]:
    """Inline code of the prose, read a paragraph at a time (a span may wrap)."""
    found: list[Written] = []
    fenced, paragraph, start = False, [], 0
    for number, line in enumerate([*lines, ""], 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or line.lstrip().startswith("```") or not line.strip():
            text = " ".join(paragraph)
            found += [Written(name, start, m.group(1)) for m in _INLINE.finditer(text)]
            paragraph = []
            continue
        start = start if paragraph else number
        paragraph.append(line.strip())
    return found


def written_commands(page: Path) -> list[Written]:
    """The `kohyawrap` commands of a Markdown page, code blocks and inline code."""
    lines = page.read_text(encoding="utf-8").splitlines()
    name = page.relative_to(ROOT).as_posix()
    return _fenced_commands(name, lines) + _inline_commands(name, lines)


ALL = [w for page in PAGES for w in written_commands(page)]


def _words(text: str) -> list[str]:
    """The command's words up to the first shell operator or comment."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = []
    for word in lexer:
        if word in _SHELL_ENDS or word.startswith((">", "|", "&", ";", "<")):
            break
        # `[--json]`, `[--set k=v ...]`: an optional part, written as the usage lines write it
        word = word.removeprefix("[").removesuffix("]")
        if word:
            words.append(word)
    return words[1:]  # after "kohyawrap"


def _option(command: click.Command, flag: str) -> click.Parameter | None:
    for param in command.get_params(click.Context(command)):
        if flag in (*param.opts, *param.secondary_opts):
            return param
    return None


def _resolve(words: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """The command the words name, its path, and the words left for it; raises on a wrong one."""
    command: click.Command = cli
    path: list[str] = []
    ctx = click.Context(cli, info_name="kohyawrap")
    while isinstance(command, click.Group) and words:
        word = words[0]
        if word.startswith("-"):
            _check_option(command, path, word)
            words = words[1:]
            continue
        sub = command.get_command(ctx, word)
        default = getattr(
            command, "default", None
        )  # DefaultGroup: `export RUN` = `export lora RUN`
        if sub is None and default is not None:
            sub, word, words = command.get_command(ctx, default), default, [default, *words]
        if sub is None:
            known = ", ".join(command.list_commands(ctx))
            raise AssertionError(f"no command `{' '.join([*path, word])}` (there are: {known})")
        command, path, words = sub, [*path, word], words[1:]
        ctx = click.Context(command, info_name=word, parent=ctx)
    return command, path, words


def _check_option(command: click.Command, path: list[str], word: str) -> click.Parameter:
    flag = word.split("=", 1)[0]
    param = _option(command, flag)
    if param is None:
        raise AssertionError(f"`kohyawrap {' '.join(path)}` has no option {flag}")
    return param


def check(words: list[str]) -> None:
    """Raise AssertionError when the words name no command, an unknown option, or more
    arguments than the command takes."""
    command, path, rest = _resolve(words)
    positional, loose = 0, PLACEHOLDER in rest
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", word) and word != "-":
            param = _check_option(command, path, word)
            takes = 0 if getattr(param, "is_flag", False) or getattr(param, "count", False) else 1
            if "=" not in word:
                i += takes * max(1, param.nargs)
        elif word != PLACEHOLDER:
            positional += 1
        i += 1
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    if not loose and all(a.nargs != -1 for a in arguments):
        most = sum(a.nargs for a in arguments)
        assert positional <= most, (
            f"`kohyawrap {' '.join(path)}` takes {most} argument(s), {positional} written"
        )


def test_the_pages_write_commands() -> None:
    assert len(ALL) > 100
    readme = {w.text.split()[1] for w in ALL if w.page == "README.md"}
    assert {"dataset", "plan", "train", "attach", "export"} <= readme


@pytest.mark.parametrize("written", ALL, ids=str)
def test_written_command_exists(written: Written) -> None:
    try:
        check(_words(written.text))
    except AssertionError as err:
        raise AssertionError(f"{written}\n  {err}") from None


@pytest.mark.parametrize(
    ("words", "problem"),
    [
        (["trian", "--host", "x"], "no command `trian`"),
        (["runs", "lst"], "no command `runs lst`"),
        (["plan", "--gpus-count", "2"], "has no option --gpus-count"),
        (["export", "a", "b"], "takes 1 argument(s), 2 written"),
        (["export", "skypilot", "a", "--to", "x"], "has no option --to"),
        (["--verbos", "plan"], "has no option --verbos"),
    ],
)
def test_a_wrong_command_is_caught(words: list[str], problem: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(problem)):
        check(words)


def test_shell_around_a_command_is_left_out() -> None:
    assert _words("kohyawrap presets list | head -1") == ["presets", "list"]
    assert _words("kohyawrap plan --json > plan.json  # keep it") == ["plan", "--json"]
    assert _words("kohyawrap loss RUN [--png FILE] [--json]") == ["loss", "RUN", "--png", "FILE",
                                                                 "--json"]  # fmt: skip
    assert _words('kohyawrap dataset build "./my photos" -o out') == [
        "dataset", "build", "./my photos", "-o", "out"
    ]  # fmt: skip
