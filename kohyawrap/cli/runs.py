"""Commands on recorded runs: ``runs list|show``, ``attach``, ``stop``, ``pull``, ``reproduce``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from kohyawrap.cli.hosts import host_options

_RUNS_DIR = click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Folder holding the run records.",
)
_POLL = click.option(
    "--poll", type=float, default=2.0, show_default=True, help="Seconds between log polls."
)


def _find(runs_dir: Path, ref: str) -> Any:
    from kohyawrap.runstore import RunStore

    return RunStore(runs_dir).find(ref)


def _reconnect(manifest: dict[str, Any], **given: Any) -> Any:
    """Open the run's host again: the recorded connection options, unless given anew."""
    from kohyawrap.cli.train import conn_options, open_target

    recorded = manifest["host"]
    fresh = conn_options(**given)
    conn = {key: fresh[key] or recorded.get(key) for key in fresh}
    conn["trust_new_host"] = bool(given["trust_new_host"])  # never inherited: an explicit opt-in
    return open_target(recorded["target"], conn)


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
    """One line per run: id, status, host, steps, cost.

    \b
    Example:
      kohyawrap runs list --json
    """
    from kohyawrap.runstore import RunStore

    rows = []
    for run in RunStore(runs_dir).all():
        m = run.load_manifest()
        rows.append(
            {
                "run_id": run.run_id,
                "status": m.get("status"),
                "target": m.get("host", {}).get("target"),
                "steps": m.get("plan", {}).get("estimate", {}).get("steps"),
                "cost": m.get("cost", {}).get("actual"),
                "checkpoints": len(m.get("checkpoints", {})),
            }
        )
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(rows)
        return
    if not rows:
        click.echo(f"no runs in {runs_dir}")
    for r in rows:
        cost = f"${r['cost']:.2f}" if isinstance(r["cost"], (int, float)) else "-"
        click.echo(
            f"{r['run_id']}  {r['status']:<9} {r['target']}  steps={r['steps']}  "
            f"files={r['checkpoints']}  {cost}"
        )


@runs.command("show")
@click.argument("run_ref", metavar="RUN")
@_RUNS_DIR
def runs_show(run_ref: str, runs_dir: Path) -> None:
    """The run's manifest (plan, host, environment, timings, cost, checkpoints) as JSON.

    \b
    Example:
      kohyawrap runs show my_lora
    """
    from kohyawrap.cli import echo_json

    echo_json(_find(runs_dir, run_ref).load_manifest())


@contextmanager
def _on_host(manifest: dict[str, Any], conn: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    """The run's host (reconnected) and a console reporter, both closed at the end."""
    from kohyawrap.console.train import ConsoleReporter

    reporter = ConsoleReporter()
    host = _reconnect(manifest, **conn)
    try:
        yield host, reporter
    finally:
        reporter.close()
        host.close()


@click.command()
@click.argument("run_ref", metavar="RUN")
@host_options
@_RUNS_DIR
@_POLL
@click.option(
    "--reconnect",
    type=click.IntRange(0, 50),
    default=5,
    show_default=True,
    help="Reconnect this many times when the connection drops again.",
)
def attach(run_ref: str, runs_dir: Path, poll: float, reconnect: int, **conn: Any) -> None:
    """Reconnect to a run and follow it to the end, continuing from the log already seen.

    Checkpoints already pulled are not pulled again; the rest arrive verified as usual.

    \b
    Example:
      kohyawrap attach 20261128-101500-my_lora
    """
    from kohyawrap.launcher.run import Clock, follow_to_end

    run = _find(runs_dir, run_ref)
    manifest = run.load_manifest()
    if manifest.get("status") not in ("running", "uploaded"):
        click.echo(
            f"run {run.run_id} is {manifest.get('status')}: nothing to follow "
            "(`kohyawrap pull` fetches its files)",
            err=True,
        )
        return
    with _on_host(manifest, conn) as (host, reporter):
        follow_to_end(
            host,
            run,
            reporter,
            manifest=manifest,
            clock=Clock(),
            poll_seconds=poll,
            reconnect_tries=reconnect,
        )
    count = len(manifest.get("checkpoints", {}))
    click.echo(f"{run.run_id}: {manifest['status']}, {count} files in {run.path}", err=True)


@click.command()
@click.argument("run_ref", metavar="RUN")
@host_options
@_RUNS_DIR
def stop(run_ref: str, runs_dir: Path, **conn: Any) -> None:
    """Stop a running job cleanly (SIGTERM to the trainer) and pull what it saved.

    \b
    Example:
      kohyawrap stop 20261128-101500-my_lora
    """
    from kohyawrap.launcher.run import Clock, follow_to_end, stop_job

    run = _find(runs_dir, run_ref)
    manifest = run.load_manifest()
    with _on_host(manifest, conn) as (host, reporter):
        code = stop_job(host, manifest["remote_run_dir"])
        reporter.info(f"the job exited with code {code}")
        manifest["plan"]["on_finish"] = "none"  # a stop is not a finish: leave the host alone
        follow_to_end(host, run, reporter, manifest=manifest, clock=Clock(), poll_seconds=0.5)


@click.command()
@click.argument("run_ref", metavar="RUN")
@host_options
@_RUNS_DIR
def pull(run_ref: str, runs_dir: Path, **conn: Any) -> None:
    """Fetch a run's checkpoints, TensorBoard files and log (sha256-verified, never overwriting).

    \b
    Example:
      kohyawrap pull 20261128-101500-my_lora
    """
    from kohyawrap.launcher.follow import RunStatus
    from kohyawrap.launcher.run import fetch_outputs

    run = _find(runs_dir, run_ref)
    manifest = run.load_manifest()
    status = RunStatus(
        log_offset=int(manifest.get("log_offset", 0)),
        pulled=dict(manifest.get("checkpoints", {})),
        rejected=dict(manifest.get("rejected", {})),
    )
    pull_state = bool(manifest["plan"].get("pull_state"))
    with _on_host(manifest, conn) as (host, reporter):
        fetch_outputs(
            host, run, manifest["remote_run_dir"], reporter, status, pull_state=pull_state
        )
    manifest["checkpoints"] = status.pulled
    run.save_manifest(manifest)


@click.command()
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
    help="Re-run it on HOST ('local' or [user@]host) with the same configs and sd-scripts commit.",
)
@host_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask before re-running.")
def reproduce(
    run_ref: str,
    runs_dir: Path,
    output: Path | None,
    rerun_target: str | None,
    port: int | None,
    identity: Path | None,
    trust_new_host: bool,
    known_hosts: Path | None,
    ssh_config: Path | None,
    yes: bool,
) -> None:
    """Re-render a recorded run's configs and prove they are byte-identical; optionally re-run it.

    \b
    Examples:
      kohyawrap reproduce runs/20261128-101500-my_lora -o ./again
      kohyawrap reproduce my_lora --run root@1.2.3.4 -p 22022
    """
    from kohyawrap.launcher.reproduce import request_from_manifest, rerender

    run = _find(runs_dir, run_ref)
    manifest = run.load_manifest()
    rendered = rerender(run, manifest, output)
    click.echo(
        f"{len(rendered.files)} files re-rendered byte-identical to {run.path / 'config'}", err=True
    )
    if rerun_target is None:
        return
    from datetime import datetime, timezone

    from kohyawrap.cli.train import conn_options, read_token, run_with_host

    request = request_from_manifest(manifest)
    run_with_host(
        request,
        rerun_target,
        datetime.now(timezone.utc),
        conn_options(port, identity, trust_new_host, known_hosts, ssh_config),
        runs_dir=runs_dir,
        token=read_token(None),
        yes=yes,
        dry_run=False,
        as_json=False,
        poll=2.0,
    )
