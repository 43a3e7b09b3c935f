"""Presentation: the only package that uses rich. Core code returns data; this shows it."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from kohyawrap.errors import KohyawrapError


def stdout() -> Console:
    """A rich console on stdout (tables, reports); a closed pipe raises OutputClosed."""
    return _stdout_class()(highlight=False, soft_wrap=False)


@functools.cache
def _stdout_class() -> type[Console]:
    from rich.console import Console

    from kohyawrap.errors import OutputClosed

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            # rich's own handler exits with 1; a reader that stopped early (`| head`) is no
            # failure, so main() decides (exit 0, nothing printed).
            self.quiet = True
            raise OutputClosed

    return StdoutConsole


def wide(min_width: int = 110) -> Console:
    """stdout, at least ``min_width`` columns wide when it is not a terminal (pipes, logs, CI):
    tables there are read whole, never cut at 80 columns."""
    con = stdout()
    if not con.is_terminal:
        con.width = max(con.width, min_width)
    return con


def stderr() -> Console:
    """A rich console on stderr (progress, warnings, errors). Lines are never broken by rich (a
    path cut at 80 columns cannot be copied back); the terminal wraps them."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(err: KohyawrapError) -> None:
    """Show a user-facing error: message, evidence lines and hint, without a traceback."""
    from rich.markup import escape

    con = stderr()
    head = f"{err.where}: {err.message}" if err.where else err.message
    con.print(f"[bold red]error:[/] {escape(head)}")
    for line in err.evidence:
        con.print(f"  {escape(line)}")
    if err.hint:
        con.print(f"[yellow]hint:[/] {escape(err.hint)}")
