"""``kohyawrap queue``: several LoRAs in one rented session (docs/queue.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kohyawrap.cli.options import (
    GroupedCommand,
    confirm_start,
    connect_options,
    finish_this_machine,
    follow_options,
    grouped,
    read_token,
    runs_dir_option,
)
from kohyawrap.cli.types import MINUTES, PRICE

if TYPE_CHECKING:
    from kohyawrap.launcher.queueplanning import QueuePlan
    from kohyawrap.launcher.queuerun import QueueLauncher

_FILE = click.Path(dir_okay=False, path_type=Path)

F = TypeVar("F", bound=Callable[..., Any])


def _handover_options(planned: str) -> Callable[[F], F]:
    """The options of the commands that hand jobs to hosts (`queue run`, `queue add`)."""
    hub_file_help = "File holding a Hugging Face token (else $HF_TOKEN)."
    force_help = "Go ahead even when a plan says it will not fit in VRAM."
    options = (
        follow_options,
        runs_dir_option,
        grouped("Following", "--hf-token-file", type=_FILE, default=None, help=hub_file_help),
        click.option("--force", is_flag=True, help=force_help),
        click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation."),
        click.option("--dry-run", is_flag=True, help=f"Print {planned} and stop."),
        click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON."),
    )

    def apply(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def _launcher(runs_dir: Path, follow: Any = None, *, plain: bool | None = None) -> QueueLauncher:
    from kohyawrap.console.train import ConsoleReporter
    from kohyawrap.launcher.queuerun import QueueLauncher
    from kohyawrap.launcher.runstore import RunStore
    from kohyawrap.launcher.stages import FollowOptions

    return QueueLauncher(
        RunStore(runs_dir), ConsoleReporter(plain=plain), options=follow or FollowOptions()
    )


def _confirm(yes: bool, question: str) -> Any:
    def confirm(plan: QueuePlan) -> bool:
        return confirm_start(yes, "the queue", question)

    return confirm


def _on_plan(as_json: bool, dry_run: bool) -> Any:
    def show(plan: QueuePlan) -> None:
        if as_json and dry_run:
            from kohyawrap.cli import echo_json

            echo_json(plan.to_json())
        else:
            from kohyawrap.console.queue import show_queue_plan

            show_queue_plan(plan)

    return show


def _outcome(launcher: QueueLauncher, queue_id: str) -> None:
    from kohyawrap.console.queue import show_queue_outcome

    show_queue_outcome(launcher.store, queue_id)


@click.group()
def queue() -> None:
    """Several LoRAs in one rented session: one set-up, each base model downloaded once, the
    jobs run back to back (one per GPU), each pulled back and verified as it ends; the host
    runs the queue by itself and carries out --on-finish when it drains, laptop or not.

    \b
    Examples:
      kohyawrap queue run jobs.toml --host root@1.2.3.4 -p 22022 --on-finish shutdown
      kohyawrap queue status jobs
      kohyawrap queue add jobs 更多.toml
      kohyawrap attach jobs           # follow a queue again: pull every job, then finish
    """


@queue.command("run", cls=GroupedCommand)
@click.argument("queue_file", metavar="QUEUE_FILE", type=_FILE)
@grouped("Connection", "--host", "targets", multiple=True, required=True,
         help="The host (repeat for a pool: the jobs are spread over them), as for train.")  # fmt: skip
@connect_options
@grouped("GPUs of the host", "--gpus", default=None, metavar="all|N|device=I,J",
         help="Which GPUs of each host the queue uses, one job per GPU at a time (default: every "
         "free GPU; a host with one GPU or none runs one job at a time).")  # fmt: skip
@grouped("Money", "--price", type=PRICE, default=None,
         help="$ per hour of each host, all its GPUs (default: the preset's typical price per GPU).")  # fmt: skip
@grouped("Money", "--on-finish", default="none", show_default=True,
         help="When the queue has drained and every job's checkpoints are safe: none, stop, "
         "destroy, shutdown, or a shell command (docs/money.md).")  # fmt: skip
@grouped("Money", "--idle-minutes", type=MINUTES, default=30.0, show_default=True,
         help="The host carries out --on-finish by itself this long after its last job ended "
         "when no laptop is following.")  # fmt: skip
@grouped("Money", "--provider", type=click.Choice(["auto", "runpod", "vast", "none"]),
         default="auto", show_default=True, help="Who rents the host (auto: read from the host).")  # fmt: skip
@_handover_options("the queue's plan")
def queue_run(
    queue_file: Path,
    targets: tuple[str, ...],
    connect: Any,
    gpus: str | None,
    price: float | None,
    on_finish: str,
    idle_minutes: float,
    provider: str,
    follow: Any,
    runs_dir: Path,
    hf_token_file: Path | None,
    force: bool,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Train every job of QUEUE_FILE on one host (or a pool of them) in one session.

    The plan shows each job, where it is expected to run, and the queue's time and dollars
    against separate sessions. Once the jobs are handed over, the host runs the queue by itself:
    Ctrl-C (or a laptop that goes away) stops only the following; `kohyawrap attach QUEUE`
    carries on. Every job is a normal run (`runs list`, `pull`, `report`).

    \b
    Examples:
      kohyawrap queue run jobs.toml --host root@1.2.3.4 -p 22022 --dry-run
      kohyawrap queue run jobs.toml --host gpu-box --on-finish shutdown --yes
      kohyawrap queue run jobs.toml --host root@8gpu.example --gpus all --price 3.2
      kohyawrap queue run jobs.toml --host box-a --host box-b --on-finish destroy
    """
    from kohyawrap.launcher.gpus import GpuRequest, parse_gpus
    from kohyawrap.launcher.queuefile import read_queue_file
    from kohyawrap.launcher.queueplanning import QueueOptions

    count, every, devices = parse_gpus(gpus) if gpus is not None else (None, False, ())
    options = QueueOptions(
        targets=targets,
        connect=connect,
        price_per_hour=price,
        on_finish=on_finish.strip() or "none",
        idle_minutes=idle_minutes,
        provider=provider,
        gpus=GpuRequest(count, every, devices),
        force=force,
    )
    queue_data = read_queue_file(queue_file)
    launcher = _launcher(runs_dir, follow, plain=True if len(targets) > 1 else None)
    try:
        result = launcher.run(
            queue_data,
            options,
            confirm=_confirm(yes, "Start this queue?"),
            finish_this_machine=finish_this_machine,
            hf_token=read_token(hf_token_file),
            dry_run=dry_run,
            on_plan=_on_plan(as_json, dry_run),
        )
    except KeyboardInterrupt:
        click.echo("stopped following; the queue goes on on the host: `kohyawrap attach QUEUE` "
                   "carries on", err=True)  # fmt: skip
        raise
    finally:
        launcher.reporter.close()  # type: ignore[attr-defined]
    if result.declined:
        click.echo("not started", err=True)
        sys.exit(1)
    if result.record is not None:
        from kohyawrap.launcher.queuestatus import raise_for_queue

        _outcome(launcher, result.record.queue_id)
        raise_for_queue(result.record, launcher.store)


@queue.command("add", cls=GroupedCommand)
@click.argument("queue_ref", metavar="QUEUE")
@click.argument("queue_file", metavar="QUEUE_FILE", type=_FILE)
@connect_options
@_handover_options("the new jobs' plan")
def queue_add(
    queue_ref: str,
    queue_file: Path,
    connect: Any,
    follow: Any,
    runs_dir: Path,
    hf_token_file: Path | None,
    force: bool,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Append the jobs of QUEUE_FILE to a queue its host still runs.

    The new jobs are planned on that host, prepared (its set-up and models are reused) and
    handed to its runner; a `queue run` or `attach` that follows the queue follows them too.
    Its [queue] table is not read: the queue keeps its set-up.

    \b
    Example:
      kohyawrap queue add 20261128-101500-jobs more.toml --yes
    """
    from kohyawrap.launcher.queuefile import read_queue_file
    from kohyawrap.launcher.queuerecord import QueueStore

    queue_id = QueueStore(runs_dir).get(queue_ref)
    launcher = _launcher(runs_dir, follow)
    try:
        result = launcher.add(
            queue_id,
            read_queue_file(queue_file),
            connect,
            confirm=_confirm(yes, "Add these jobs?"),
            hf_token=read_token(hf_token_file),
            dry_run=dry_run,
            on_plan=_on_plan(as_json, dry_run),
            force=force,
        )
    finally:
        launcher.reporter.close()  # type: ignore[attr-defined]
    if result.declined:
        click.echo("not added", err=True)
        sys.exit(1)
    if result.record is not None:
        click.echo(f"added to queue {queue_id}: `kohyawrap attach {queue_id}` follows it", err=True)


@queue.command("status", cls=GroupedCommand)
@click.argument("queue_ref", metavar="QUEUE")
@connect_options
@runs_dir_option
@click.option("--offline", is_flag=True, help="Only the local records: do not ask the hosts.")
@click.option("--json", "as_json", is_flag=True, help="One row per job, as JSON.")
def queue_status(
    queue_ref: str, connect: Any, runs_dir: Path, offline: bool, as_json: bool
) -> None:
    """Every job of a queue: its state, where it runs, steps, loss and dollars.

    The hosts that answer (within 10 s) give the running jobs' steps and dollars live.

    \b
    Examples:
      kohyawrap queue status jobs
      kohyawrap queue status 20261128-101500-jobs --json --offline
    """
    from kohyawrap.launcher.queuerecord import QueueStore

    queue_id = QueueStore(runs_dir).get(queue_ref)
    launcher = _launcher(runs_dir)
    status = launcher.status(queue_id, connect, live=not offline)
    if as_json:
        from kohyawrap.cli import echo_json
        from kohyawrap.console.queue import status_rows

        echo_json({"queue_id": queue_id, "jobs": status_rows(status),
                   "host_dollars": list(status.host_dollars)})  # fmt: skip
        return
    from kohyawrap.console.queue import show_queue_status

    show_queue_status(status)


@queue.command("list")
@runs_dir_option
def queue_list(runs_dir: Path) -> None:
    """The queues recorded under the runs folder, oldest first.

    \b
    Example:
      kohyawrap queue list
    """
    from kohyawrap.launcher.queuerecord import QueueStore

    store = QueueStore(runs_dir)
    ids = store.ids()
    if not ids:
        click.echo(f"no queues in {store.root}")
    for queue_id in ids:
        record = store.load(queue_id)
        click.echo(f"{queue_id}  {len(record.jobs)} job(s)  {record.source}")
