"""Presentation of ``kohyawrap config``: what was written, and check findings."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kohyawrap.console import wide

if TYPE_CHECKING:
    from kohyawrap.models import Finding, RenderedRun
    from kohyawrap.validate import CheckReport

STYLE = {"error": "bold red", "warning": "yellow", "note": "cyan"}


def show_findings(findings: Sequence[Finding]) -> None:
    """One block per finding: severity, key, message, and the fix."""
    from rich.markup import escape

    con = wide()
    for f in findings:
        key = f" {escape(f.subject)}" if f.subject else ""
        con.print(f"[{STYLE[f.severity]}]{f.severity}[/]{key}: {escape(f.message)}")
        if f.hint:
            con.print(f"    fix: {escape(f.hint)}")


def show_rendered(
    folder: Path,
    rendered: RenderedRun,
    written: Mapping[str, str],
    notes: Sequence[Finding],
    *,
    dataset_found: bool,
    downloads: Sequence[Mapping[str, str]] = (),
) -> None:
    """The files written, warnings about the options, and how to launch."""
    from rich.markup import escape
    from rich.table import Table

    con = wide()
    table = Table(
        title=f"{escape(str(folder))}  (inputs_hash {rendered.inputs_hash})", title_justify="left"
    )
    for column in ("file", "status", "bytes"):
        table.add_column(column)
    for name, text in rendered.files.items():
        table.add_row(name, written.get(name, ""), str(len(text.encode())))
    con.print(table)
    if not dataset_found:
        con.print(
            f"[yellow]note:[/] dataset folder {escape(rendered.spec.train_data_dir)} not "
            "found; the config refers to it anyway"
        )
    show_findings(notes)
    for d in downloads:
        gated = (
            " (gated: accept its licence on huggingface.co first)" if d["gated"] == "yes" else ""
        )
        con.print(
            f"[cyan]needs[/] {escape(str(folder / d['path']))} ({escape(d['option'])}): "
            f"{escape(d['url'])}{gated}"
        )
    con.print(
        f"script: {rendered.script}   accelerate: {escape(' '.join(rendered.accelerate_args))}"
    )
    con.print(
        f"run it:  SD_SCRIPTS=/path/to/sd-scripts {escape(shlex.quote(str(folder / 'launch.sh')))}"
    )


def show_check(report: CheckReport) -> None:
    """A config check: the script assumed, each finding, and a summary line."""
    from rich.markup import escape

    con = wide()
    con.print(
        f"{escape(report.where or 'config')}: checked for {report.script} "
        f"({escape(report.script_reason)})"
    )
    show_findings(report.findings)
    counts = {s: sum(1 for f in report.findings if f.severity == s) for s in STYLE}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items())
    con.print(("[bold red]" if counts["error"] else "[green]") + summary + "[/]")
