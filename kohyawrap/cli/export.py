"""``kohyawrap export``: a run's LoRA into a WebUI / ComfyUI folder (``export RUN --to DIR``), or
the run as another engine's task file (``export skypilot RUN -o task.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from kohyawrap.cli.options import (
    DefaultGroup,
    GroupedCommand,
    find_run,
    grouped,
    runs_dir_flag,
    skypilot_options,
)

if TYPE_CHECKING:
    from kohyawrap.launcher.skypilot import SkyOptions


@click.group(cls=DefaultGroup, default="lora")
def export() -> None:
    """Copy a run's LoRA into a WebUI / ComfyUI folder, or write the run as a SkyPilot task.

    Without a subcommand it is `export lora` (a run that happens to be named "skypilot" is
    `export lora skypilot --to DIR`).

    \b
    Examples:
      kohyawrap export my_lora --to ~/stable-diffusion-webui/models/Lora
      kohyawrap export skypilot 20261128-101500-my_lora-1a2b3c -o task.yaml
    """


@export.command("lora")
@click.argument("run_ref", metavar="RUN")
@click.option("--to", "dest", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Your WebUI's models/Lora or ComfyUI's models/loras folder.")  # fmt: skip
@click.option("--epoch", type=click.IntRange(min=1), default=None,
              help="The checkpoint of this epoch (default: the report's choice).")  # fmt: skip
@click.option("--name", default=None, help="File name to use (default: <name>-epochNN).")
@runs_dir_flag
@click.option("--json", "as_json", is_flag=True, help="The result as JSON.")
def lora(
    run_ref: str, dest: Path, epoch: int | None, name: str | None, runs_dir: Path, as_json: bool
) -> None:
    """Copy a run's LoRA into a WebUI / ComfyUI LoRA folder, verified, never overwriting.

    Without --epoch it is the checkpoint the report says to try first. The copy is checked
    against the sha256 recorded when it was pulled and gets a clear name
    (<name>-epoch06.safetensors); an existing different file of that name is never replaced.

    \b
    Examples:
      kohyawrap export my_lora --to ~/stable-diffusion-webui/models/Lora
      kohyawrap export lora my_lora --to ~/ComfyUI/models/loras --epoch 6
    """
    from kohyawrap.cli import echo_json
    from kohyawrap.launcher.export import export as copy_lora

    done = copy_lora(find_run(runs_dir, run_ref), dest.expanduser(), epoch=epoch, name=name)
    if as_json:
        echo_json(
            {
                "target": str(done.target),
                "source": str(done.source),
                "checkpoint": done.checkpoint.label,
                "epoch": done.checkpoint.epoch,
                "sha256": done.sha256,
                "already_there": done.already_there,
                "reason": done.reason,
            }
        )
        return
    from kohyawrap.console.evaluate import show_export

    show_export(done)


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
          --bucket s3://my-loras --down --autostop 10
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
    secret = " --secret HF_TOKEN" if any(f.kind == "hf" for f in task.plan.model_files) else ""
    click.echo(f"launch it: sky launch -c CLUSTER{secret} {quote(str(output))}", err=True)
