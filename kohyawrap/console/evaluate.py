"""What ``loss``, ``report``, ``export`` and ``grid`` show: the loss as a terminal chart, the
verdict, the checkpoint to try first, where files went."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kohyawrap.evaluate.loss import LossCurve, LossVerdict
    from kohyawrap.evaluate.record import GridRecord
    from kohyawrap.launcher.export import Exported
    from kohyawrap.launcher.runreport import ReportResult

# marker, colour and name of each series of the terminal chart
_SERIES = (
    ("·", "bright_black", "loss/current"),
    ("•", "blue", "loss/average"),
    ("●", "dark_orange", "epoch average"),
    ("◆", "green", "validation"),
)


def show_loss(curve: LossCurve, verdict: LossVerdict, png: Path | None) -> None:
    """The loss against steps as a chart of characters, then the verdict and the PNG's path."""
    from rich.markup import escape

    from kohyawrap.console import stdout
    from kohyawrap.evaluate.chart import text_chart, thin

    con = stdout()
    per_epoch = curve.steps_per_epoch or 1.0
    width = max(30, min(100, con.width - 12))
    points = {
        "loss/current": thin(curve.current, width),
        "loss/average": thin(curve.average, width),
        "epoch average": [(e * per_epoch, v) for e, v in curve.epochs],
        "validation": [(e * per_epoch, v) for e, v in curve.validation],
    }
    chart = text_chart(
        [(name, marker, points[name]) for marker, _, name in _SERIES if points[name]], width=width
    )
    if chart is not None:
        colours = {marker: colour for marker, colour, _ in _SERIES}
        for line in chart.lines:
            text = escape(line)
            for marker, colour in colours.items():
                text = text.replace(marker, f"[{colour}]{marker}[/]")
            con.print(text)
        legend = "   ".join(f"[{colours[m]}]{m}[/] {escape(n)}" for m, n in chart.markers)
        con.print(f"{' ' * 4}{legend}   (x: step)")
    _verdict(verdict)
    if png is not None:
        con.print(f"plot: {escape(str(png))}")


def _verdict(verdict: LossVerdict) -> None:
    from rich.markup import escape

    from kohyawrap.console import stdout

    con = stdout()
    colour = "green" if verdict.good else "red" if verdict.kind in ("nan", "no_data") else "yellow"
    con.print(f"[bold {colour}]{escape(verdict.title)}[/]")
    con.print(f"  {escape(verdict.detail)}")
    for remedy in verdict.remedies:
        con.print(f"  - {escape(remedy)}")


def show_report(result: ReportResult) -> None:
    """The report's top: the file to try first, why, the headline; and the page's path."""
    from rich.markup import escape

    from kohyawrap.console import stdout

    con = stdout()
    if result.suggestion is not None:
        con.print(
            f"[bold]try first:[/] {escape(result.suggestion.local)} "
            f"({escape(result.suggestion.label)}): {escape(result.reason)}"
        )
    con.print(escape(result.headline))
    if result.effect is not None and result.effect.finding:
        for remedy in result.effect.remedies:
            con.print(f"  - {escape(remedy)}")
    con.print(f"report: {escape(str(result.path))}")


def show_export(exported: Exported) -> None:
    from rich.markup import escape

    from kohyawrap.console import stdout

    verb = "already there" if exported.already_there else "copied (sha256 verified)"
    stdout().print(
        f"{escape(exported.checkpoint.label)}: {escape(str(exported.target))} {verb}\n"
        f"  why this one: {escape(exported.reason)}"
    )


def show_grid(record: GridRecord | None, report: Path | None) -> None:
    from rich.markup import escape

    from kohyawrap.console import stdout
    from kohyawrap.launcher.budget import dollars

    con = stdout()
    if record is None:
        con.print("no grid was drawn")
        return
    spent = f", {dollars(record.dollars)}" if record.dollars is not None else ""
    why = f" ({record.reason})" if record.reason else ""
    con.print(
        escape(f"grid {record.status}: {record.pulled} of {record.images} images{spent}{why}")
    )
    if report is not None:
        con.print(f"report: {escape(str(report))}")
