"""``kohyawrap export``: hand a run to another engine (SkyPilot) as that engine's own task file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from kohyawrap.cli.options import GroupedCommand, grouped, skypilot_options

if TYPE_CHECKING:
    from kohyawrap.launcher.skypilot import SkyOptions


@click.group()
def export() -> None:
    """Write a run as another tool's task file.

    \b
    Example:
      kohyawrap export skypilot 20261128-101500-my_lora-1a2b3c -o task.yaml
    """


@export.command("skypilot", cls=GroupedCommand)
@click.argument("run")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The task YAML to write (its configs go to <name>-files/ beside it).")  # fmt: skip
@skypilot_options
@grouped("SkyPilot", "--bucket", default=None,
         help="Write the outputs to this bucket (s3://..., gs://...) instead of the node's disk.")  # fmt: skip
@grouped("SkyPilot", "--work-dir", default="/kohyawrap", show_default=True,
         help="Absolute work folder on the nodes.")  # fmt: skip
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Folder holding the run records.")  # fmt: skip
def skypilot(
    run: str, output: Path, sky: SkyOptions, bucket: str | None, work_dir: str, runs_dir: Path
) -> None:
    """Write RUN (a recorded run, or a plan from `train --dry-run --json`) as a SkyPilot task.

    SkyPilot provisions the machine (any cloud, spot instances with recovery, several nodes) and
    runs what `kohyawrap train` runs over SSH: set-up is the rendered sdscripts/venv/model
    scripts, run is the run wrapper; the dataset, configs and an uploaded base model are file
    mounts. The run is planned again with an absolute work folder (--work-dir) and one training
    process per GPU of every node.

    \b
    Examples:
      kohyawrap export skypilot 20261128-101500-my_lora-1a2b3c -o task.yaml
      sky launch -c lora task.yaml
      kohyawrap train --host x --gpu rtx4090 --model sdxl --dataset ./training_data \\
          --base-model stabilityai/stable-diffusion-xl-base-1.0 --name my_lora --dry-run --json > plan.json
      kohyawrap export skypilot plan.json -o task.yaml --nodes 2 --gpus-per-node 8 --spot \\
          --bucket s3://my-loras --down --idle-minutes 10
    """
    from dataclasses import replace
    from datetime import datetime, timezone

    from kohyawrap.hosts.base import quote
    from kohyawrap.launcher.skypilot import export_task, plan_of

    options = replace(sky, bucket=bucket or "", work_dir=work_dir)
    task = export_task(plan_of(run, runs_dir), options, output, datetime.now(timezone.utc))
    click.echo(
        f"wrote {output} (run {task.plan.run_id}, {len(task.file_mounts)} file mounts)", err=True
    )
    secret = " --secret HF_TOKEN" if task.plan.model.kind == "hf" else ""
    click.echo(f"launch it: sky launch -c CLUSTER{secret} {quote(str(output))}", err=True)
