"""``kohyawrap plan``: steps, time, VRAM fit and dollars of a run, before renting anything."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from kohyawrap.cli.runspec import run_options
from kohyawrap.cli.types import BANDWIDTH, PRICE


@click.command()
@run_options
@click.option(
    "--price", type=PRICE, help="Price per hour in $ (default: the GPU preset's typical price)."
)
@click.option(
    "--bandwidth",
    type=BANDWIDTH,
    help="MB/s between this machine and the host (uploads, downloads). [default: 10]",
)
@click.option(
    "--setup",
    type=click.Choice(["cold", "warm"]),
    default="cold",
    show_default=True,
    help="cold: bare host (install + model download); warm: both already there.",
)
@click.option(
    "--max-dollars",
    type=click.FloatRange(min=0, min_open=True),
    help="Refuse a plan predicted to cost more, naming the cheapest preset GPU that fits.",
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
    max_dollars: float | None,
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
      kohyawrap plan --gpu rtx4090 --model flux-dev --dataset ./training_data --compare
      kohyawrap plan --gpu a100-80gb --model sdxl --dataset ./training_data --max-dollars 2
    """
    from kohyawrap.cli.runspec import build_spec, scan_dataset, with_dataset_subjects
    from kohyawrap.forecast import (
        Setup,
        build_forecast,
        compare_forecasts,
        finish_choices,
        lint_forecast,
        require_budget,
        require_fit,
    )
    from kohyawrap.presets import load_catalog
    from kohyawrap.render import findings

    kind: Setup = "warm" if setup == "warm" else "cold"
    catalog = load_catalog()
    model = catalog.model(params["model"])
    spec = build_spec(params, Path("."), model)
    tdir = scan_dataset(params, required=True)
    if tdir is None:  # required=True always scans (or raises); this narrows the type
        raise RuntimeError("dataset was not scanned")
    spec = with_dataset_subjects(spec, tdir)
    result = build_forecast(
        spec, tdir, price_per_hour=price, bandwidth_mbps=bandwidth, setup=kind, catalog=catalog
    )
    if not force:
        require_fit(result)
    notes = findings(result.rendered, catalog=catalog)
    needs_all = compare or (max_dollars is not None and result.estimate.dollars > max_dollars)
    table = (
        compare_forecasts(spec, tdir, bandwidth_mbps=bandwidth, setup=kind, catalog=catalog)
        if needs_all
        else ()
    )
    require_budget(result, max_dollars, table)
    report = lint_forecast(result, tdir, model)
    choices = finish_choices(
        result.estimate.price_per_hour,
        catalog.rules.number("typical_disk_gb"),
        catalog.rules,
    )
    if as_json:
        from kohyawrap.cli import echo_json

        data = result.to_json()
        data["config_findings"] = [f.to_json() for f in notes]
        data["lint"] = {
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "findings": [f.to_json() for f in (*report.errors, *report.warnings)],
        }
        data["finish_choices"] = [asdict(c) for c in choices]
        if compare:
            data["compare"] = [
                p.to_json()["estimate"]
                | {"seconds_per_step": p.seconds_per_step, "train_batch_size": p.steps.batch_size}
                for p in table
            ]
        echo_json(data)
        return
    from kohyawrap.console.config import show_findings
    from kohyawrap.console.forecast import (
        show_compare,
        show_finish_choices,
        show_forecast,
        show_lint,
    )

    show_forecast(result)
    show_finish_choices(choices)
    show_findings(notes)
    show_lint(report)
    if compare:
        show_compare(table, current=result.estimate.gpu)
