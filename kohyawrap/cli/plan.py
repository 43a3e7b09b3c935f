"""``kohyawrap plan``: steps, time, VRAM fit and dollars of a run, before renting anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kohyawrap.cli.config import run_options


@click.command()
@run_options
@click.option(
    "--price", type=float, help="Price per hour in $ (default: the GPU preset's typical price)."
)
@click.option(
    "--bandwidth",
    type=float,
    help="MB/s between this machine and the host (uploads, downloads). [default: 10]",
)
@click.option(
    "--setup",
    type=click.Choice(["cold", "warm"]),
    default="cold",
    show_default=True,
    help="cold: bare host (install + model download); warm: both already there.",
)
@click.option("--compare", is_flag=True, help="Also show the same run on every GPU preset.")
@click.option(
    "--force", is_flag=True, help="Plan it even when the estimate says it will not fit in VRAM."
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(
    price: float | None,
    bandwidth: float | None,
    setup: str,
    compare: bool,
    force: bool,
    as_json: bool,
    **params: Any,
) -> None:
    """Steps (as sd-scripts counts them), time, VRAM and cost of a run.

    \b
    Examples:
      kohyawrap plan --gpu rtx4090 --model sd15 --dataset ./training_data --price 0.70
      kohyawrap plan --gpu rtx3090 --model sdxl --dataset ./training_data --compare --json
    """
    from kohyawrap.cli.config import build_spec, scan_dataset
    from kohyawrap.plan import Setup, build_plan, lint_plan
    from kohyawrap.plan import compare as compare_all
    from kohyawrap.presets import load_catalog

    kind: Setup = "warm" if setup == "warm" else "cold"
    catalog = load_catalog()
    model = catalog.model(params["model"])
    spec = build_spec(params, Path("."), model.script)
    tdir = scan_dataset(params, required=True)
    if tdir is None:  # required=True always scans (or raises); this narrows the type
        raise RuntimeError("dataset was not scanned")
    result = build_plan(
        spec, tdir, price_per_hour=price, bandwidth_mbps=bandwidth, setup=kind, catalog=catalog
    )
    if not result.estimate.fits and not force:
        refuse(result)
    report = lint_plan(result, tdir, model.family)
    table = (
        compare_all(spec, tdir, bandwidth_mbps=bandwidth, setup=kind, catalog=catalog)
        if compare
        else ()
    )
    if as_json:
        from kohyawrap.cli import echo_json

        data = result.to_json()
        data["lint"] = {
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "findings": [vars(f) for f in (*report.errors, *report.warnings)],
        }
        if compare:
            data["compare"] = [
                p.to_json()["estimate"]
                | {"seconds_per_step": p.seconds_per_step, "train_batch_size": p.steps.batch_size}
                for p in table
            ]
        echo_json(data)
        return
    from kohyawrap.console.plan import show_compare, show_lint, show_plan

    show_plan(result)
    show_lint(report)
    if compare:
        show_compare(table, current=result.estimate.gpu)


def refuse(result: Any) -> None:
    """Stop with the VRAM numbers when the run would not fit (``--force`` skips this)."""
    from kohyawrap.errors import UsageError

    est = result.estimate
    raise UsageError(
        f"this run needs ~{est.vram_needed_gb:.1f} GB of VRAM; "
        f"{est.gpu} has {est.vram_available_gb:g} GB",
        evidence=[f"{part.name}: {part.seconds:.1f} GB ({part.basis})" for part in result.vram],
        hint="--set gradient_checkpointing=true, --set train_batch_size=1, a larger card "
        "(--compare), or --force to plan it anyway",
    )
