"""``kohyawrap resume`` and ``kohyawrap extend``: a new leg of a recorded run, on its own host or
on a new one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kohyawrap.cli.options import (
    GroupedCommand,
    connect_options,
    find_run,
    follow_options,
    grouped,
    questions,
    read_token,
    runs_dir_option,
)

if TYPE_CHECKING:
    from kohyawrap.launcher.continuing import ContinueRequest


def _continue(
    run_ref: str,
    request: ContinueRequest,
    connect: Any,
    follow: Any,
    runs_dir: Path,
    hf_token_file: Path | None,
    yes: bool,
    as_json: bool,
) -> None:
    from kohyawrap.console.train import ConsoleReporter, show_leg_plan, show_outcome
    from kohyawrap.launcher.runstore import RunStore
    from kohyawrap.launcher.verbs import Launcher

    run = find_run(runs_dir, run_ref)
    reporter = ConsoleReporter()
    launcher = Launcher(RunStore(runs_dir), reporter, options=follow)
    try:
        manifest = launcher.resume(
            run,
            request,
            connect,
            questions=questions(yes),
            hf_token=read_token(hf_token_file),
            on_plan=show_leg_plan,
        )
    finally:
        reporter.close()
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(manifest.to_json())
    else:
        show_outcome(manifest, run.path)


def _where(func: Any) -> Any:
    """The options both commands share: the host of the new leg, its price, following."""
    for decorator in reversed(
        [
            click.argument("run_ref", metavar="RUN"),
            grouped("Connection", "--host", "target", default=None,
                    help="Where the new leg runs: [user@]host or 'local' (default: the run's host)."),
            connect_options,
            grouped("Host set-up", "--work-dir", default=None,
                    help="Where kohyawrap works on the host (default: the run's, or ~/kohyawrap on a new host)."),
            grouped("Money", "--price", type=click.FloatRange(min=0), default=None,
                    help="$ per hour of the new host (default: the run's on the same host, else the preset's)."),
            follow_options,
            runs_dir_option,
            grouped("Following", "--hf-token-file", type=click.Path(dir_okay=False, path_type=Path),
                    default=None, help="File holding a Hugging Face token (else $HF_TOKEN)."),
            grouped("Following", "--pull-state", is_flag=True,
                    help="Also pull training states as they are saved (needed to resume elsewhere "
                    "if this host dies)."),
            click.option("--force", is_flag=True, help="Go ahead on a host without an NVIDIA GPU."),
            click.option("--yes", "-y", is_flag=True,
                         help="Do not ask for confirmation (needed without a terminal)."),
            click.option("--json", "as_json", is_flag=True, help="The run's record as JSON at the end."),
        ]
    ):  # fmt: skip
        func = decorator(func)
    return func


@click.command(cls=GroupedCommand)
@_where
def resume(
    run_ref: str,
    target: str | None,
    connect: Any,
    work_dir: str | None,
    price: float | None,
    follow: Any,
    runs_dir: Path,
    hf_token_file: Path | None,
    pull_state: bool,
    force: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Continue a stopped, failed or lost run from its newest training state, here or elsewhere.

    The state comes from the laptop (runs trained with --pull-state) or from the run's host when
    it still answers. On a new host (--host) kohyawrap sets it up as usual, uploads the dataset
    and the state, and trains the remaining epochs; steps and epochs carry on from where the
    state was saved, however many times a run is resumed. Each resume is a new leg of the run,
    recorded with its host, steps and dollars (`kohyawrap runs show RUN`).

    \b
    Examples:
      kohyawrap resume my_lora
      kohyawrap resume 20261128-101500-my_lora --host root@5.6.7.8 -p 22022 --price 0.39 --yes
    """
    from kohyawrap.launcher.continuing import ContinueRequest

    request = ContinueRequest("resume", target, work_dir, price, None, pull_state, force)
    _continue(run_ref, request, connect, follow, runs_dir, hf_token_file, yes, as_json)


@click.command(cls=GroupedCommand)
@_where
@grouped("What to train", "--epochs", type=click.IntRange(min=1), required=True,
         help="How many epochs to train beyond the end of the run.")  # fmt: skip
def extend(
    run_ref: str,
    target: str | None,
    connect: Any,
    work_dir: str | None,
    price: float | None,
    follow: Any,
    runs_dir: Path,
    hf_token_file: Path | None,
    pull_state: bool,
    force: bool,
    yes: bool,
    as_json: bool,
    epochs: int,
) -> None:
    """Train a finished run for more epochs, from its final training state.

    The cheapest way to a good LoRA: train to ~60 % of the planned epochs, test the checkpoint,
    and extend only if it is under-fitted. The new checkpoints arrive in the run's
    checkpoints/leg<N>/ folder; epochs are numbered on from the end of the run.

    \b
    Examples:
      kohyawrap extend my_lora --epochs 4
      kohyawrap extend my_lora --epochs 2 --host root@5.6.7.8 -p 22022 --yes
    """
    from kohyawrap.launcher.continuing import ContinueRequest

    request = ContinueRequest("extend", target, work_dir, price, epochs, pull_state, force)
    _continue(run_ref, request, connect, follow, runs_dir, hf_token_file, yes, as_json)
