"""Show dataset builds and lint reports (findings tables, a bucket histogram, the step count),
and what ``dataset caption`` wrote or found (captions, tag frequencies)."""

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
    from kohyawrap.dataset.caption import CaptionResult, CaptionReview
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


# ---------------------------------------------------------------------------------------------
# dataset caption

_CAPTION_ROWS = 50  # photos listed before "... and N more"
_REVIEW_TAGS = 40
_ACTION_STYLE = {"write": "green", "replace": "yellow", "keep": "dim", "skip": "red"}


def print_caption(result: CaptionResult) -> None:
    """Each photo with what was done and the caption, then the counts."""
    con = stdout()
    verb = "would caption" if result.dry_run else "captioned"
    table = Table(
        title=f"{verb.capitalize()} {escape(str(result.folder))} with {escape(result.captioner)}",
        title_justify="left",
    )
    table.add_column("photo", overflow="fold")
    table.add_column("", no_wrap=True)
    table.add_column("caption", overflow="fold")
    for outcome in result.outcomes[:_CAPTION_ROWS]:
        task = outcome.task
        action = task.action if not outcome.error else "failed"
        style = _ACTION_STYLE.get(action, "bold red")
        text = outcome.error or outcome.caption or f"[dim]{escape(task.reason)}[/]"
        if outcome.error or outcome.caption:
            text = escape(text)
        table.add_row(escape(task.image.name), f"[{style}]{action}[/]", text)
    if len(result.outcomes) > _CAPTION_ROWS:
        table.add_row(
            "", "", f"[dim]... and {len(result.outcomes) - _CAPTION_ROWS} more (--json)[/]"
        )
    con.print(table)
    todo = result.count("write") + result.count("replace")
    head = f"{todo} to caption" if result.dry_run else f"{result.written} caption(s) written"
    con.print(
        f"{head}, {result.count('keep')} kept (yours; --overwrite replaces them), "
        f"{result.count('skip')} skipped, {len(result.failed)} failed"
    )
    unsupported = [name for name, what in result.others if what == "unsupported image"]
    if unsupported:
        con.print(
            f"[yellow]not captioned (format not supported, convert them first):[/] "
            f"{escape(', '.join(unsupported[:10]))}"
            + (f" and {len(unsupported) - 10} more" if len(unsupported) > 10 else "")
        )
    if not result.dry_run and result.written:
        con.print(
            "[dim]review them: kohyawrap dataset caption --review "
            f"{escape(str(result.folder))}"
            + (f' --trigger "{escape(result.trigger)}"' if result.trigger else "")
            + "[/]"
        )


def print_review(review: CaptionReview) -> None:
    """The tag-frequency table, the captions without the trigger, photos without captions."""
    con = stdout()
    counted = max(1, review.captioned)
    table = Table(
        title=f"Tags in {review.captioned} caption(s) of {escape(str(review.folder))}",
        title_justify="left",
    )
    table.add_column("tag", overflow="fold")
    table.add_column("captions", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    for tag, count in review.tag_counts[:_REVIEW_TAGS]:
        bar = "█" * max(1, round(20 * count / counted))
        table.add_row(escape(tag), str(count), f"{100 * count / counted:.0f}%", f"[cyan]{bar}[/]")
    if len(review.tag_counts) > _REVIEW_TAGS:
        rest = len(review.tag_counts) - _REVIEW_TAGS
        table.add_row(f"[dim]... and {rest} more (--json)[/]", "", "", "")
    if review.tag_counts:
        con.print(table)
    if review.trigger and review.without_trigger:
        missing = Table(
            title=f"Captions without the trigger '{escape(review.trigger)}'",
            title_justify="left",
        )
        missing.add_column("photo", overflow="fold")
        missing.add_column("caption", overflow="fold")
        for name, caption in review.without_trigger:
            missing.add_row(escape(name), escape(caption))
        con.print(missing)
        con.print("[dim]dataset build puts the trigger in front of these; or edit them[/]")
    for label, names in (("no caption file", review.missing), ("empty caption", review.empty)):
        if names:
            shown = ", ".join(names[:10]) + (
                f" and {len(names) - 10} more" if len(names) > 10 else ""
            )
            con.print(f"[yellow]{label}:[/] {escape(shown)}")
    trigger = f"; {len(review.without_trigger)} without the trigger" if review.trigger else ""
    con.print(f"{review.captioned} of {review.images} photos captioned{trigger}")


class CaptionStages:
    """Shows the steps of a caption job on a host (``launcher.caption.CaptionReporter``)."""

    def stage(self, name: str, detail: str = "") -> None:
        stderr().print(f"[bold]{escape(name)}[/] {escape(detail)}")

    def transfer(self, label: str, done: int, total: int) -> None:
        pass  # small resized copies: over in seconds

    def progress(self, done: int, total: int) -> None:
        pass  # the progress bar shows it


def note(message: str) -> None:
    """A line on stderr (a step the user waits for)."""
    stderr().print(f"[dim]{escape(message)}[/]")
