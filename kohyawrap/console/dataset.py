"""Show dataset builds and lint reports: findings tables, a bucket histogram, the step count."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from kohyawrap.console import stderr, stdout

if TYPE_CHECKING:
    from rich.console import Console

    from kohyawrap.dataset.build import BuildResult
    from kohyawrap.dataset.lint import LintReport
    from kohyawrap.models import Finding

_STYLE = {"error": "bold red", "warning": "yellow", "note": "dim"}
_PER_CODE = 5  # findings shown per code before "... and N more"
_BAR = 40


@contextmanager
def progress(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr (only on a terminal); yields the callback or None."""
    con = stderr()
    if not enabled or not con.is_terminal:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=con, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def print_build(result: BuildResult) -> None:
    """The concepts written (with the repeats rule), what was converted, notes, then the lint."""
    con = stdout()
    table = Table(title=f"Dataset {escape(str(result.output))}", title_justify="left")
    for col in ("folder", "images", "repeats", "per epoch", "why this many repeats"):
        table.add_column(
            col, justify="right" if col in ("images", "repeats", "per epoch") else "left"
        )
    for c in result.layout.concepts:
        rule = c.repeats.rule
        table.add_row(
            escape(c.folder),
            str(c.repeats.images),
            str(c.repeats.repeats),
            str(c.repeats.per_epoch),
            escape(rule),
        )
    con.print(table)
    ok = [o for o in result.outcomes if o.ok]
    copied = sum(o.op.action == "copy" for o in ok)
    side = f"longest side at most {result.max_side} px" if result.max_side else "no resizing"
    con.print(
        f"{copied} copied unchanged, {len(ok) - copied} converted ({side}), "
        f"{len(result.layout.skipped) + len(result.failed)} skipped"
    )
    _print_findings(con, result.notes, "Build notes")
    print_lint(result.lint, con)
    con.print(f"[dim]build report: {escape(str(result.report_path))}[/]")


def print_lint(report: LintReport, con: Console | None = None) -> None:
    """Findings (grouped by code), the bucket histogram and the steps summary."""
    con = con or stdout()
    _print_findings(con, report.findings, "Lint")
    _print_buckets(con, report)
    _print_summary(con, report)


def _print_findings(con: Console, findings: Sequence[Finding], title: str) -> None:
    if not findings:
        return
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("", no_wrap=True)
    table.add_column("code", no_wrap=True)
    table.add_column("where", overflow="fold")
    table.add_column("what", overflow="fold")
    order = {"error": 0, "warning": 1, "note": 2}
    shown: dict[str, int] = {}
    ordered = sorted(findings, key=lambda f: order[f.severity])
    for f in ordered:
        shown[f.code] = shown.get(f.code, 0) + 1
        if shown[f.code] <= _PER_CODE:
            style = _STYLE[f.severity]
            table.add_row(
                f"[{style}]{f.severity}[/]", f.code, escape(f.subject or ""), escape(f.message)
            )
    for code, count in shown.items():
        if count > _PER_CODE:
            table.add_row("", code, "", f"[dim]... and {count - _PER_CODE} more[/]")
    con.print(table)


def _print_buckets(con: Console, report: LintReport) -> None:
    buckets = report.batch.buckets
    if not buckets:
        return
    table = Table(title="Buckets (images × repeats)", title_justify="left")
    table.add_column("bucket", justify="right")
    table.add_column("count", justify="right")
    table.add_column("batches", justify="right")
    table.add_column("")
    most = max(buckets.values())
    for (w, h), n in buckets.items():
        bar = "█" * max(1, round(_BAR * n / most))
        table.add_row(f"{w}x{h}", str(n), str(-(-n // report.batch_size)), f"[cyan]{bar}[/]")
    con.print(table)


def _print_summary(con: Console, report: LintReport) -> None:
    b = report.batch
    line = (
        f"{report.train_images} images, {b.images_with_repeats} with repeats"
        + (
            f", {report.reg_images} reg images ({b.reg_images_with_repeats} with repeats)"
            if report.reg_images
            else ""
        )
        + f"; batch size {report.batch_size}: {b.batches_per_epoch} batches per epoch"
    )
    con.print(line)
    if report.total_steps is not None:
        basis = {
            "epochs": f"{report.epochs} epochs",
            "max_train_steps": f"max_train_steps; about {report.epochs} epochs",
            "default": f"sd-scripts' default max_train_steps; about {report.epochs} epochs",
        }[report.steps_basis]
        con.print(f"total steps: [bold]{report.total_steps}[/] ({basis})")
        if report.steps_from:
            con.print(f"[dim]counted with {escape(report.steps_from)}[/]")
    errors, warnings = len(report.errors), len(report.warnings)
    verdict = "[bold red]not ready[/]" if errors else "[green]ready[/]"
    con.print(f"{verdict}: {errors} error(s), {warnings} warning(s)")
