"""Execute a RunPlan on a host, and the verbs that act on a recorded run later
(attach, stop, pull). Each is a short story over the stages in ``stages`` and ``follow``."""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from kohyawrap import __version__
from kohyawrap.errors import BudgetExceeded, HostError, KohyawrapError, TrainingFailed
from kohyawrap.hosts.base import Host, sh
from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher import stages
from kohyawrap.launcher.follow import (
    MODEL_EXTENSIONS,
    SAFE_NAME,
    Follower,
    RunStatus,
    pull_file,
    read_exit_code,
)
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.runstore import RunDir


class Clock:
    """Phase timings for the manifest."""

    def __init__(self) -> None:
        self.started = time.time()
        self.phases: dict[str, float] = {}
        self._t = time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._t, 3)
        self._t = now


def new_manifest(plan: RunPlan, host_info: dict[str, Any]) -> dict[str, Any]:
    """The manifest a run starts with: everything needed to reproduce it, no secrets."""
    return {
        "kohyawrap_version": __version__,
        "run_id": plan.run_id,
        "status": "planned",
        "plan": plan.to_json(),
        "host": host_info,
        "remote_run_dir": plan.layout.run_dir,
        "log_offset": 0,
        "checkpoints": {},
        "timings": {},
    }


def record_configs(run: RunDir, plan: RunPlan) -> None:
    """Keep the exact rendered files locally (what `reproduce` compares against)."""
    for name, text in sorted(plan.rendered.files.items()):
        run.write_text(f"config/{name}", text)


def execute(
    plan: RunPlan,
    host: Host,
    run: RunDir,
    reporter: Reporter,
    *,
    host_info: dict[str, Any],
    hf_token: str | None = None,
    poll_seconds: float = 2.0,
    clock: Clock | None = None,
    reconnect_tries: int = 5,
) -> dict[str, Any]:
    """SETUP -> MODEL -> UPLOAD -> TRAIN -> FOLLOW -> FETCH -> FINISH. Returns the manifest."""
    clock = clock or Clock()
    manifest = new_manifest(plan, host_info)
    run.save_manifest(manifest)
    record_configs(run, plan)

    def save(**changes: Any) -> None:
        manifest.update(changes, timings=dict(clock.phases))
        run.save_manifest(manifest)

    try:
        env = _set_up(plan, host, reporter, hf_token, clock, save)
        reporter.stage("train", f"{plan.rendered.script} on {host.label}")
        pid = stages.launch(host, plan.layout.run_dir)
    except KohyawrapError as err:
        save(status="failed", error=str(err))
        raise
    save(
        status="running",
        pid=pid,
        launched_at=time.time(),
        started_at=clock.started,
        environment={**manifest["environment"], "pip_freeze": pip_freeze(host, env.python)},
    )
    return follow_to_end(
        host,
        run,
        reporter,
        manifest=manifest,
        clock=clock,
        poll_seconds=poll_seconds,
        reconnect_tries=reconnect_tries,
    )


def _set_up(
    plan: RunPlan,
    host: Host,
    reporter: Reporter,
    hf_token: str | None,
    clock: Clock,
    save: Callable[..., None],
) -> stages.Environment:
    """SETUP, MODEL and UPLOAD, each recorded in the manifest as it completes."""
    env = stages.prepare_environment(host, plan, reporter)
    clock.lap("setup")
    save(
        status="setup",
        sd_scripts={
            "repo": plan.setup.repo,
            "ref": plan.setup.ref,
            "commit": env.commit,
            "path": env.sd_scripts,
        },
        environment={
            "python": env.python,
            "fingerprint": env.fingerprint,
            "torch": env.torch_version,
            "reused": env.cached,
        },
    )
    how = stages.ensure_model(host, plan, env, reporter, hf_token)
    clock.lap("model")
    save(model={**asdict(plan.model), "how": how})
    stats = stages.upload_dataset(host, plan, reporter)
    stages.upload_run_files(host, plan, env)
    clock.lap("upload")
    save(
        status="uploaded",
        upload={
            "files_sent": stats.files_sent,
            "bytes_sent": stats.bytes_sent,
            "files_total": stats.files_total,
            "bytes_total": stats.bytes_total,
        },
    )
    return env


def pip_freeze(host: Host, python: str) -> list[str]:
    """The host environment's packages, for the record."""
    result = host.run(f"{sh(python)} -m pip freeze 2>/dev/null || true", check=False)
    return [line for line in result.stdout.splitlines() if line.strip()]


def follow_to_end(
    host: Host,
    run: RunDir,
    reporter: Reporter,
    *,
    manifest: dict[str, Any],
    clock: Clock,
    poll_seconds: float = 2.0,
    reconnect_tries: int = 5,
) -> dict[str, Any]:
    """FOLLOW until exit, FETCH everything, FINISH; shared by ``train`` and ``attach``."""
    plan = manifest["plan"]
    run_dir = manifest["remote_run_dir"]
    status = RunStatus(
        log_offset=int(manifest.get("log_offset", 0)),
        pulled=dict(manifest.get("checkpoints", {})),
        pending=dict(manifest.get("pending", {})),
        rejected=dict(manifest.get("rejected", {})),
    )
    started = float(manifest.get("started_at", clock.started))

    def save() -> None:
        manifest.update(
            log_offset=status.log_offset,
            checkpoints=status.pulled,
            pending=status.pending,
            rejected=status.rejected,
            timings={**manifest.get("timings", {}), **clock.phases},
        )
        run.save_manifest(manifest)

    follower = Follower(
        host,
        run,
        run_dir,
        reporter,
        status=status,
        settings=dict(plan.get("settings", {})),
        price_per_hour=float(plan["estimate"]["price_per_hour"]),
        started_at=started,
        poll_seconds=poll_seconds,
        budget_check=_budget(plan, started),
        reconnect_tries=reconnect_tries,
    )
    reporter.stage("follow", run_dir)
    code = _follow(follower, manifest, save)
    clock.lap("train")
    fetch_outputs(host, run, run_dir, reporter, status, pull_state=bool(plan.get("pull_state")))
    clock.lap("pull")
    _record_cost(manifest, started, exit_code=code)
    if code == 143 and host.stat(posixpath.join(run_dir, "deadline")) is not None:
        manifest["status"] = "stopped"
        save()
        raise BudgetExceeded(
            f"the host stopped the run at its --max-hours deadline ({plan.get('max_hours')} h)",
            hint=f"what it saved was pulled into {run.path}",
        )
    if code != 0 or follower.failure is not None:
        return _failed(manifest, follower, save, code)
    manifest["status"] = "finished"
    save()
    _on_finish(host, str(plan.get("on_finish", "none")), reporter)
    return manifest


def _follow(follower: Follower, manifest: dict[str, Any], save: Callable[[], None]) -> int:
    """Follow to the exit code; a drop, Ctrl-C or a budget stop leave the manifest consistent."""
    run_id = follower.run.run_id
    try:
        return follower.run_until_exit(save)
    except HostError as err:
        save()
        raise HostError(
            f"lost the host while following run {run_id}: {err.message}",
            evidence=err.evidence,
            hint=f"the training goes on there; `kohyawrap attach {run_id}` continues from here",
        ) from err
    except KeyboardInterrupt:
        save()
        follower.reporter.info(
            f"stopped following; the training goes on: `kohyawrap attach {run_id}` to follow "
            f"it again, `kohyawrap stop {run_id}` to stop it"
        )
        raise
    except BudgetExceeded:
        stop_job(follower.host, follower.run_dir)
        follower.run_until_exit(save)
        fetch_outputs(
            follower.host,
            follower.run,
            follower.run_dir,
            follower.reporter,
            follower.status,
            pull_state=bool(manifest["plan"].get("pull_state")),
        )
        _record_cost(manifest, follower.started_at, exit_code=follower.status.exit_code)
        manifest["status"] = "stopped"
        save()
        raise


def _record_cost(manifest: dict[str, Any], started: float, *, exit_code: int | None) -> None:
    """Exit code, end time, and the estimated vs actual dollars (price x wall time)."""
    estimate = manifest["plan"]["estimate"]
    price = float(estimate["price_per_hour"])
    hours = (time.time() - started) / 3600
    manifest.update(
        exit_code=exit_code,
        finished_at=time.time(),
        cost={
            "estimated": estimate["dollars"],
            "actual": round(price * hours, 4),
            "price_per_hour": price,
        },
    )


def _failed(
    manifest: dict[str, Any], follower: Follower, save: Callable[[], None], code: int
) -> dict[str, Any]:
    from kohyawrap.logparse import diagnose

    tail = follower.tail_lines(30)
    failure = follower.failure or diagnose(follower.log_tail, manifest["plan"].get("settings"))
    manifest.update(
        status="stopped" if code in (143, -15) and failure is None else "failed",
        failure=asdict(failure) if failure else None,
    )
    save()
    if code in (143, -15) and failure is None:
        return manifest
    pulled = len(manifest.get("checkpoints", {}))
    raise TrainingFailed(
        f"training exited with code {code}"
        + (f" ({failure.kind}: {failure.message})" if failure else ""),
        evidence=tail,
        hint=(failure.hint if failure else "read the log above")
        + f"; {pulled} file(s) were pulled into {follower.run.path}",
    )


def _budget(plan: dict[str, Any], started: float) -> Callable[[float], None]:
    max_dollars = plan.get("max_dollars")
    max_hours = plan.get("max_hours")

    def check(dollars: float) -> None:
        hours = (time.time() - started) / 3600
        if max_dollars is not None and dollars > float(max_dollars):
            raise BudgetExceeded(
                f"spent ${dollars:.2f}, over the ${float(max_dollars):.2f} budget: stopping"
            )
        if max_hours is not None and hours > float(max_hours):
            raise BudgetExceeded(
                f"ran {hours:.2f} h, over the {float(max_hours):.2f} h limit: stopping"
            )

    return check


def stop_job(host: Host, run_dir: str, *, wait_seconds: float = 120.0) -> int | None:
    """Ask the run wrapper to stop (SIGTERM to its trainer group) and wait for its exit code."""
    pid_file = sh(posixpath.join(run_dir, "run.pid"))
    host.run(f'kill -TERM "$(cat {pid_file})" 2>/dev/null || true', check=False)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        code = read_exit_code(host, run_dir)
        if code is not None:
            return code
        time.sleep(0.5)
    return None


def _listing(host: Host, run_dir: str) -> list[str]:
    out = host.run(
        f"cd {sh(run_dir)} && find output logs -type f -print0 2>/dev/null || true"
    ).stdout
    return sorted(p for p in out.split("\0") if p)


def fetch_outputs(
    host: Host,
    run: RunDir,
    run_dir: str,
    reporter: Reporter,
    status: RunStatus,
    *,
    pull_state: bool,
) -> None:
    """Every final checkpoint, TensorBoard file and the log, verified; states on request."""
    reporter.stage("pull", str(run.path))
    for rel in _listing(host, run_dir):
        parts = rel.split("/")
        if not all(SAFE_NAME.match(p) for p in parts):
            reporter.info(f"skipped a file with an unsafe name: {rel!r}")
            continue
        remote = posixpath.join(run_dir, rel)
        if parts[0] == "output" and len(parts) == 2 and rel.endswith(MODEL_EXTENSIONS):
            pull_file(host, run, remote, run.checkpoints, reporter, status, rel)
        elif (
            parts[0] == "output" and len(parts) == 3 and pull_state and parts[1].endswith("-state")
        ):
            pull_file(host, run, remote, run.checkpoints / parts[1], reporter, status, rel)
        elif parts[0] == "logs" and parts[-1].startswith("events.out.tfevents"):
            pull_file(
                host,
                run,
                remote,
                run.path.joinpath("tensorboard", *parts[1:-1]),
                reporter,
                status,
                rel,
            )
    status.pending.clear()
    _verify_log(host, run, run_dir)


def _verify_log(host: Host, run: RunDir, run_dir: str) -> None:
    """The streamed local log must equal the host's; if not (a drop mid-chunk), fetch it whole."""
    remote = posixpath.join(run_dir, "run.log")
    digest = host.sha256([remote]).get(remote)
    if digest is None or (run.log.exists() and file_sha256(run.log) == digest):
        return
    fresh = run.path / "run.log.fetched"
    fresh.unlink(missing_ok=True)
    host.download(remote, fresh, expected_sha256=digest)
    fresh.replace(run.log)


def _on_finish(host: Host, action: str, reporter: Reporter) -> None:
    """Runs only after every checkpoint was verified locally (the caller guarantees it)."""
    if action in ("", "none"):
        return
    if action == "shutdown":
        reporter.info("shutting the host down (--on-finish shutdown)")
        command = (
            # RunPod keeps RUNPOD_POD_ID in /etc/rp_environment (sourced only by interactive shells).
            "[ -f /etc/rp_environment ] && . /etc/rp_environment; "
            'if command -v runpodctl >/dev/null && [ -n "${RUNPOD_POD_ID:-}" ]; '
            'then runpodctl stop pod "$RUNPOD_POD_ID"; '
            "else sudo -n shutdown -h now 2>/dev/null || shutdown -h now; fi"
        )
    else:
        reporter.info(f"running the --on-finish command on the host: {action}")
        command = action
    try:
        host.run(command, check=True, timeout=120)
    except HostError as err:
        # A shutdown drops our connection: that is success, not failure.
        if action != "shutdown":
            raise
        reporter.info(f"the host went away as asked ({err.message})")
