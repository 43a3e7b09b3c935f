"""Presentation of ``kohyawrap plan``: the step count, the time and cost breakdown, the "
"comparison."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kohyawrap.console import wide
from kohyawrap.forecast import duration_text as duration

if TYPE_CHECKING:
    from kohyawrap.dataset.lint import LintReport
    from kohyawrap.forecast import FinishChoice, Forecast


def show_forecast(plan: Forecast) -> None:
    """Steps, buckets, time per stage, VRAM and dollars."""
    from rich.markup import escape
    from rich.table import Table

    con = wide()
    s, est = plan.steps, plan.estimate
    spec = plan.rendered.spec
    con.print(
        f"[bold]{escape(spec.output_name)}[/]: {escape(spec.model)} on {escape(plan.gpu_title)} "
        f"({est.gpu}), {plan.rendered.script}, {plan.setup} setup"
    )
    reg = f" (+{s.reg_images_with_repeats} reg)" if s.reg_images_with_repeats else ""
    accumulation = (
        f" / {s.gradient_accumulation_steps} accumulation"
        if s.gradient_accumulation_steps > 1
        else ""
    )
    con.print(
        f"steps: {s.images} images x repeats = {s.images_with_repeats}{reg} -> "
        f"{s.batches_per_epoch} batches of {s.batch_size} per epoch (bucket rounding included) "
        f"x {s.epochs} epochs{accumulation} = [bold]{s.total_steps} steps[/] ({escape(s.basis)})"
    )
    buckets = ", ".join(f"{w}x{h}: {n}" for (w, h), n in s.buckets.items())
    con.print(f"buckets (images x repeats): {buckets}")
    table = Table(title="time", title_justify="left")
    for column in ("stage", "time", "how"):
        table.add_column(column, overflow="fold")
    for stage in plan.stages:
        table.add_row(stage.name, duration(stage.seconds), escape(stage.basis))
    table.add_row("[bold]total[/]", f"[bold]{duration(plan.total_seconds)}[/]", "")
    con.print(table)
    fit = "[green]fits[/]" if est.fits else "[bold red]does NOT fit[/]"
    parts = " + ".join(f"{p.name} {p.seconds:.1f}" for p in plan.vram)
    con.print(f"VRAM: ~{est.vram_needed_gb:.1f} GB of {est.vram_available_gb:g} GB {fit} ({parts})")
    setup_cost = est.price_per_hour * est.setup_seconds / 3600
    train_cost = est.price_per_hour * est.train_seconds / 3600
    con.print(
        f"cost: [bold]${est.dollars:.2f}[/] at ${est.price_per_hour:.2f}/h "
        f"({escape(plan.price_basis)}): set-up and transfers {duration(est.setup_seconds)} "
        f"${setup_cost:.2f}, training {duration(est.train_seconds)} ${train_cost:.2f}"
    )
    for note in est.notes:
        con.print(f"[yellow]note:[/] {escape(note)}")
    con.print(
        "Speeds and VRAM are estimates from published figures (kohyawrap presets show ... "
        "lists each source)."
    )


def show_finish_choices(choices: Sequence[FinishChoice]) -> None:
    """What the host costs per day after the run, for each --on-finish choice."""
    from rich.markup import escape

    con = wide()
    con.print("after the run (--on-finish), per day:")
    for c in choices:
        where = "" if c.provider == "any" else f" on {c.provider}"
        cost = "?" if c.dollars_per_day is None else f"${c.dollars_per_day:.2f}"
        con.print(f"  {c.action}{where}: {cost}  {escape(c.note)}")


def show_lint(report: LintReport, shown: int = 6) -> None:
    """The dataset linter's errors and warnings for this run, briefly."""
    from rich.markup import escape

    con = wide()
    problems = (*report.errors, *report.warnings)
    if not problems:
        con.print("dataset: [green]no errors or warnings[/] from the linter")
        return
    con.print(f"dataset: {len(report.errors)} error(s), {len(report.warnings)} warning(s):")
    for f in problems[:shown]:
        style = "bold red" if f.severity == "error" else "yellow"
        where = f" {escape(f.subject)}:" if f.subject else ""
        con.print(f"  [{style}]{f.severity}[/]{where} {escape(f.message)}")
    if len(problems) > shown:
        con.print(f"  ... and {len(problems) - shown} more: kohyawrap dataset lint <folder>")


def show_compare(plans: Sequence[Forecast], *, current: str) -> None:
    """The same run on every GPU preset, side by side."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="same run on every GPU preset (typical prices)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    for column in ("gpu", "GB", "batch", "steps", "s/step", "train", "total", "$/h", "$", "fits?"):
        table.add_column(
            column, justify="left" if column in ("gpu", "fits?") else "right", no_wrap=True
        )
    for p in plans:
        est = p.estimate
        name = f"[bold]{est.gpu}[/]" if est.gpu == current else est.gpu
        fits = "yes" if est.fits else f"[red]no ({est.vram_needed_gb:.0f} GB)[/]"
        table.add_row(
            name,
            f"{est.vram_available_gb:g}",
            str(p.steps.batch_size),
            str(est.steps),
            f"{p.seconds_per_step:.2f}",
            duration(est.train_seconds),
            duration(p.total_seconds),
            f"{est.price_per_hour:.2f}",
            f"{est.dollars:.2f}",
            fits,
        )
    wide().print(table)
