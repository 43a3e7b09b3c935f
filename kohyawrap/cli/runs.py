"""Commands on recorded runs: ``runs list|show``, ``attach``, ``stop``, ``pull``, ``reproduce``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kohyawrap.cli.options import (
    GroupedCommand,
    connect_options,
    find_run,
    follow_options,
    runs_dir_flag,
)

if TYPE_CHECKING:
    from kohyawrap.launcher.runstore import RunDir
    from kohyawrap.launcher.verbs import Launcher

_RUNS_DIR = runs_dir_flag
_JSON = click.option("--json", "as_json", is_flag=True, help="The run's record as JSON.")


def _launcher(runs_dir: Path, follow: Any = None) -> Launcher:
    from kohyawrap.console.train import ConsoleReporter
    from kohyawrap.launcher.runstore import RunStore
    from kohyawrap.launcher.stages import FollowOptions
    from kohyawrap.launcher.verbs import Launcher

    return Launcher(RunStore(runs_dir), ConsoleReporter(), options=follow or FollowOptions())


def _present(manifest: Any, run: RunDir, as_json: bool) -> None:
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(manifest.to_json())
    else:
        from kohyawrap.console.train import show_outcome

        show_outcome(manifest, run.path)


@click.group()
def runs() -> None:
    """List and show the runs recorded under ./runs.

    \b
    Examples:
      kohyawrap runs list
      kohyawrap runs show 20261128-101500-my_lora
    """


@runs.command("list")
@_RUNS_DIR
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def runs_list(runs_dir: Path, as_json: bool) -> None:
    """One line per run: date, id, status (and why), host, steps, files, cost.

    A run whose record cannot be read is listed as broken; the others are listed as usual.

    \b
    Example:
      kohyawrap runs list --json
    """
    from kohyawrap.console.runs import run_row, show_run_rows
    from kohyawrap.launcher.runstore import RunStore

    rows = [run_row(entry) for entry in RunStore(runs_dir).entries()]
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(rows)
        return
    if not rows:
        click.echo(f"no runs in {runs_dir}")
        return
    show_run_rows(rows)


@runs.command("show")
@click.argument("run_ref", metavar="RUN")
@_RUNS_DIR
@_JSON
def runs_show(run_ref: str, runs_dir: Path, as_json: bool) -> None:
    """A run at a glance: status and why, host, GPU, steps, last loss, cost, files, timings.

    RUN is a run id, a unique part of one, the LoRA's name (the newest run of that name), or the
    run's folder. `--json` prints the whole record (plan, environment, packages, ...).

    \b
    Examples:
      kohyawrap runs show my_lora
      kohyawrap runs show 20261128-101500-my_lora --json
    """
    run = find_run(runs_dir, run_ref)
    manifest = run.load()
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(manifest.to_json())
        return
    from kohyawrap.console.runs import show_run

    show_run(manifest, run.path)


@click.command(cls=GroupedCommand)
@click.argument("run_ref", metavar="RUN")
@connect_options
@follow_options
@_RUNS_DIR
@_JSON
def attach(run_ref: str, connect: Any, follow: Any, runs_dir: Path, as_json: bool) -> None:
    """Reconnect to a running job and follow it to the end, continuing from the log already seen.

    Checkpoints already pulled are not pulled again; the rest arrive verified as usual. The
    connection options recorded with the run are used unless given again. RUN may also name a
    queue (`kohyawrap queue run`): its current job is followed, every ended job pulled, then the
    queue finishes.

    \b
    Examples:
      kohyawrap attach 20261128-101500-my_lora
      kohyawrap attach 20261128-101500-jobs
    """
    from kohyawrap.launcher.queuerecord import QueueStore

    queue_id = QueueStore(runs_dir).find(run_ref, loose=False)
    if queue_id is not None and (queue_id == run_ref or not _names_a_run(runs_dir, run_ref)):
        _attach_queue(queue_id, connect, follow, runs_dir)
        return
    run = find_run(runs_dir, run_ref)
    launcher = _launcher(runs_dir, follow)
    try:
        manifest = launcher.attach(run, connect)
    finally:
        launcher.reporter.close()  # type: ignore[attr-defined]
    if not manifest.status.active and manifest.exit_code is None and not as_json:
        click.echo(f"run {run.run_id} is {manifest.status.value}: nothing to follow "
                   "(`kohyawrap pull` fetches its files)", err=True)  # fmt: skip
    _present(manifest, run, as_json)


def _names_a_run(runs_dir: Path, ref: str) -> bool:
    from kohyawrap.errors import UsageError
    from kohyawrap.launcher.runstore import RunStore

    try:
        RunStore(runs_dir).find(ref)
    except UsageError:
        return False
    return True


def _attach_queue(queue_id: str, connect: Any, follow: Any, runs_dir: Path) -> None:
    """A queue: hand over, follow and pull every job, grids, then the queue's finish."""
    from kohyawrap.cli.options import read_token
    from kohyawrap.console.queue import show_queue_outcome
    from kohyawrap.console.train import ConsoleReporter
    from kohyawrap.launcher.queuerun import QueueLauncher
    from kohyawrap.launcher.queuestatus import raise_for_queue
    from kohyawrap.launcher.runstore import RunStore
    from kohyawrap.launcher.stages import FollowOptions

    launcher = QueueLauncher(
        RunStore(runs_dir), ConsoleReporter(), options=follow or FollowOptions()
    )
    try:
        record = launcher.attach(queue_id, connect, read_token(None))
    finally:
        launcher.reporter.close()  # type: ignore[attr-defined]
    show_queue_outcome(launcher.store, queue_id)
    raise_for_queue(record, launcher.store)


@click.command(cls=GroupedCommand)
@click.argument("run_ref", metavar="RUN")
@connect_options
@_RUNS_DIR
@_JSON
def stop(run_ref: str, connect: Any, runs_dir: Path, as_json: bool) -> None:
    """Stop a running job cleanly (SIGTERM to the trainer) and pull what it saved.

    A run that has already ended is left as it was recorded.

    \b
    Example:
      kohyawrap stop 20261128-101500-my_lora
    """
    run = find_run(runs_dir, run_ref)
    before = run.load()
    if not before.status.active:
        click.echo(
            f"run {run.run_id} has already ended ({before.status.value}); nothing was changed",
            err=True,
        )
        _present(before, run, as_json)
        return
    launcher = _launcher(runs_dir)
    try:
        manifest = launcher.stop(run, connect)
    finally:
        launcher.reporter.close()  # type: ignore[attr-defined]
    _present(manifest, run, as_json)


@click.command(cls=GroupedCommand)
@click.argument("run_ref", metavar="RUN")
@connect_options
@_RUNS_DIR
@_JSON
def pull(run_ref: str, connect: Any, runs_dir: Path, as_json: bool) -> None:
    """Fetch a run's checkpoints, TensorBoard files and log (sha256-verified, never overwriting).

    Works while the job runs (what is complete so far) and after it ended; files already on the
    laptop are not fetched again.

    \b
    Example:
      kohyawrap pull 20261128-101500-my_lora
    """
    run = find_run(runs_dir, run_ref)
    launcher = _launcher(runs_dir)
    try:
        manifest = launcher.pull(run, connect)
    finally:
        launcher.reporter.close()  # type: ignore[attr-defined]
    _present(manifest, run, as_json)


@click.command(cls=GroupedCommand)
@click.argument("run_ref", metavar="RUN")
@_RUNS_DIR
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write the re-rendered files here.",
)
@click.option(
    "--run",
    "rerun_target",
    default=None,
    metavar="HOST",
    help="Re-run it on HOST ('local' or [user@]host) with the same configs, sd-scripts commit and price.",
)
@connect_options
@follow_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask before re-running.")
@click.option("--json", "as_json", is_flag=True, help="What was re-rendered, as JSON.")
def reproduce(
    run_ref: str,
    runs_dir: Path,
    output: Path | None,
    rerun_target: str | None,
    connect: Any,
    follow: Any,
    yes: bool,
    as_json: bool,
) -> None:
    """Re-render a recorded run's configs and prove they are byte-identical; optionally re-run it.

    \b
    Examples:
      kohyawrap reproduce runs/20261128-101500-my_lora -o ./again
      kohyawrap reproduce my_lora --run root@1.2.3.4 -p 22022 --yes
    """
    from kohyawrap.launcher.reproduce import request_from_manifest, rerender

    run = find_run(runs_dir, run_ref)
    manifest = run.load()
    rendered = rerender(run, manifest, output)
    if as_json:
        from kohyawrap.cli import echo_json
        from kohyawrap.launcher.runplan import sha256_text

        echo_json(
            {
                "run_id": run.run_id,
                "identical": True,
                "files": {n: sha256_text(t) for n, t in sorted(rendered.files.items())},
                "written_to": str(output) if output else None,
            }
        )
    click.echo(
        f"{len(rendered.files)} files re-rendered byte-identical to {run.path / 'config'}", err=True
    )
    if rerun_target is None:
        return
    from kohyawrap.cli.options import launch, read_token

    launch(
        request_from_manifest(manifest),
        rerun_target,
        connect,
        follow=follow,
        runs_dir=runs_dir,
        token=read_token(None),
        yes=yes,
    )
