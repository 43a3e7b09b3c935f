"""Is the LoRA any good? ``grid``, ``loss``, ``report`` and ``export`` on a recorded run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kohyawrap.cli.options import (
    GRID_HELP,
    SAMPLE_PROMPTS_HELP,
    GroupedCommand,
    connect_options,
    find_run,
    follow_options,
    grouped,
    read_sample_prompts,
    read_token,
    runs_dir_flag,
)

_RUNS_DIR = runs_dir_flag
_JSON = click.option("--json", "as_json", is_flag=True, help="The result as JSON.")


def _echo_json(data: Any) -> None:
    from kohyawrap.cli import echo_json

    echo_json(data)


@click.command(cls=GroupedCommand)
@click.argument("run_ref", metavar="RUN")
@grouped("Grid", "--host", "target", default=None,
         help="Draw on this host instead of the one that trained the run (set up there, base "
         "model and checkpoints uploaded).")  # fmt: skip
@grouped("Grid", "--grid", "spec", default=None, metavar="SPEC", help=GRID_HELP)
@grouped("Grid", "--sample-prompts", type=click.Path(dir_okay=False, path_type=Path),
         default=None, help=SAMPLE_PROMPTS_HELP)  # fmt: skip
@grouped("Grid", "--work-dir", default="~/kohyawrap", show_default=True,
         help="Where kohyawrap works on a new --host.")  # fmt: skip
@grouped("Money", "--price", type=click.FloatRange(min=0), default=None,
         help="$ per hour of the host (default: the run's price).")  # fmt: skip
@grouped("Money", "--max-dollars", type=click.FloatRange(min=0, min_open=True), default=None,
         help="Stop the grid when it has cost this much.")  # fmt: skip
@connect_options
@follow_options
@grouped("Following", "--hf-token-file", type=click.Path(dir_okay=False, path_type=Path),
         default=None, help="File holding a Hugging Face token (else $HF_TOKEN).")  # fmt: skip
@_RUNS_DIR
@_JSON
def grid(
    run_ref: str,
    target: str | None,
    spec: str | None,
    sample_prompts: Path | None,
    work_dir: str,
    price: float | None,
    max_dollars: float | None,
    connect: Any,
    follow: Any,
    hf_token_file: Path | None,
    runs_dir: Path,
    as_json: bool,
) -> None:
    """Draw the evaluation grid of a finished run: its checkpoints x LoRA strengths x seeds x
    prompts, with sd-scripts' own gen_img.py / sdxl_gen_img.py; then write its report.

    On the host that trained it by default (its environment and model are reused). With --host,
    on another machine: sd-scripts is set up there, and the base model and the chosen
    checkpoints are uploaded. Images are pulled back verified into runs/<id>/grid/.

    \b
    Examples:
      kohyawrap grid my_lora
      kohyawrap grid my_lora --host root@5.6.7.8 -p 22022 --grid epochs=6,8,10,seeds=5
      kohyawrap grid my_lora --host local --sample-prompts prompts.txt --grid strengths=0,0.6,1
    """
    from dataclasses import replace

    from kohyawrap.console.evaluate import show_grid
    from kohyawrap.console.train import ConsoleReporter
    from kohyawrap.evaluate.options import parse_grid
    from kohyawrap.launcher.grid import GridRequest
    from kohyawrap.launcher.runstore import RunStore
    from kohyawrap.launcher.verbs import Launcher

    prompts = read_sample_prompts(sample_prompts)
    options = parse_grid(spec) if spec is not None else None
    if prompts:
        options = replace(options or _recorded_options(runs_dir, run_ref), prompts=prompts)
    request = GridRequest(options, target, work_dir, price, max_dollars)
    run = find_run(runs_dir, run_ref)
    reporter = ConsoleReporter()
    try:
        manifest = Launcher(RunStore(runs_dir), reporter, options=follow).grid(
            run, connect, replace(request, hf_token=read_token(hf_token_file))
        )
    finally:
        reporter.close()
    report = run.path / "report" / "index.html"
    if as_json:
        _echo_json(manifest.grid.to_json() if manifest.grid else None)
    else:
        show_grid(manifest.grid, report if report.is_file() else None)


def _recorded_options(runs_dir: Path, run_ref: str) -> Any:
    from kohyawrap.evaluate.options import GridOptions

    plan_grid = find_run(runs_dir, run_ref).load().plan.grid
    return plan_grid if plan_grid.enabled else GridOptions()


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the plot (default: runs/<id>/loss.png).")  # fmt: skip
@_RUNS_DIR
@_JSON
def loss(run_ref: str, png: Path | None, runs_dir: Path, as_json: bool) -> None:
    """The loss of a run: a chart in the terminal, a PNG plot, and what the curve says.

    Reads the run's pulled TensorBoard files: loss per step, its running average, the average of
    each epoch and the validation loss when the run has one. The verdict: still falling (maybe
    under-trained), flat from the start (learning rate too low, or captions not read), falling then
    rising (over-fitting from epoch N), NaN.

    \b
    Examples:
      kohyawrap loss my_lora
      kohyawrap loss 20261128-101500-my_lora --png loss.png --json
    """
    from kohyawrap.evaluate.drawing import draw_loss_plot
    from kohyawrap.launcher.runreport import verdict_of

    run = find_run(runs_dir, run_ref)
    curve, verdict = verdict_of(run, run.load())
    target = png or run.path / "loss.png"
    plotted = draw_loss_plot(curve, target)
    if as_json:
        _echo_json(
            {
                "kind": verdict.kind,
                "title": verdict.title,
                "detail": verdict.detail,
                "remedies": list(verdict.remedies),
                "best_epoch": verdict.best_epoch,
                "from_epoch": verdict.from_epoch,
                "png": str(target) if plotted else None,
                "steps": len(curve.current),
                "epochs": [list(p) for p in curve.epochs],
                "validation": [list(p) for p in curve.validation],
            }
        )
        return
    from kohyawrap.console.evaluate import show_loss

    show_loss(curve, verdict, target if plotted else None)


@click.command()
@click.argument("run_ref", metavar="RUN")
@_RUNS_DIR
@_JSON
def report(run_ref: str, runs_dir: Path, as_json: bool) -> None:
    """Write runs/<id>/report/index.html: one page that answers "which file do I use?".

    The verdict and the checkpoint to try first, the loss plot, the samples of each epoch, the
    grid as contact sheets, the effect check, cost and time per stage, the run's facts and how to
    reproduce it. It opens from disk with no server and no network (copy the folder anywhere).

    \b
    Examples:
      kohyawrap report my_lora
      kohyawrap report 20261128-101500-my_lora --json
    """
    from kohyawrap.launcher.runreport import write_report

    result = write_report(find_run(runs_dir, run_ref))
    if as_json:
        _echo_json(result.to_json())
        return
    from kohyawrap.console.evaluate import show_report

    show_report(result)
