"""The stages of a run and the one executor that runs a selection of them.

``train`` runs them all; ``attach``, ``stop`` and ``pull`` are selections over a loaded run:

    SETUP -> MODEL -> UPLOAD -> TRAIN (detached) -> FOLLOW -> PULL -> GRID -> FINISH

PREPARE runs SETUP, MODEL and UPLOAD at the same time (they are independent until TRAIN);
``train`` uses it, and a selection may still name the three one after another.

Each stage reads what it needs from the run's record and writes what it did back, so a later
process can carry on from any point. SETUP, MODEL and UPLOAD are idempotent and are retried after
a dropped connection; FOLLOW reconnects by itself; GRID draws the evaluation grid of a finished
run (its failure is recorded, never raised); FINISH runs only for a run whose every announced
checkpoint is verified on the laptop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from kohyawrap.clock import Clock, Timings
from kohyawrap.errors import HostError
from kohyawrap.hosts.base import Host
from kohyawrap.launcher import finish, job, setup, watchdog
from kohyawrap.launcher.budget import Budget
from kohyawrap.launcher.fetch import Puller, is_checkpoint
from kohyawrap.launcher.follow import Follower
from kohyawrap.launcher.manifest import (
    Cost,
    EnvironmentRecord,
    RunManifest,
    RunStatus,
    SdScriptsRecord,
    StopReason,
)
from kohyawrap.launcher.overlap import overlap
from kohyawrap.launcher.reconnect import Reconnector
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.launcher.samples import SampleWatcher
from kohyawrap.launcher.watch import hooks_for


class Stage(str, Enum):
    PREPARE = "prepare"  # SETUP, MODEL and UPLOAD at once (launcher/prepare.py)
    SETUP = "setup"
    MODEL = "model"
    UPLOAD = "upload"
    TRAIN = "train"
    FOLLOW = "follow"
    PULL = "pull"
    GRID = "grid"  # the evaluation grid, drawn on the host once every checkpoint is here
    FINISH = "finish"


FULL = (Stage.PREPARE, Stage.TRAIN, Stage.FOLLOW, Stage.PULL, Stage.GRID, Stage.FINISH)
# The same run with set-up one step after another (what PREPARE overlaps).
SEQUENTIAL = (
    Stage.SETUP, Stage.MODEL, Stage.UPLOAD, Stage.TRAIN, Stage.FOLLOW, Stage.PULL, Stage.GRID,
    Stage.FINISH,
)  # fmt: skip
ATTACH = (Stage.FOLLOW, Stage.PULL, Stage.GRID, Stage.FINISH)
GRID_THEN_FINISH = (Stage.GRID, Stage.FINISH)
AFTER_STOP = (Stage.FOLLOW, Stage.PULL)
PULL_ONLY = (Stage.PULL,)


@dataclass(frozen=True)
class FollowOptions:
    """How a client follows a job: poll interval and how many failed reconnects in a row."""

    poll_seconds: float = 2.0
    reconnect_tries: int = 5


class RunSession:
    """One run being advanced on one connected host: its record, and how to report and wait."""

    def __init__(
        self,
        run: RunDir,
        manifest: RunManifest,
        host: Host,
        reporter: Reporter,
        clock: Clock,
        options: FollowOptions,
        *,
        timings: Timings | None = None,
        hf_token: str | None = None,
    ) -> None:
        self.run = run
        self.manifest = manifest
        self.host = host
        self.reporter = reporter
        self.clock = clock
        self.options = options
        self.timings = timings or Timings(clock, manifest.timings)
        self.hf_token = hf_token
        self.reconnector = Reconnector(host, reporter, clock, options.reconnect_tries)
        self.follower: Follower | None = None
        self._saving = threading.Lock()  # PREPARE's three steps record from their own threads

    def update(self, **changes: object) -> RunManifest:
        """Record ``changes`` (and the phase timings so far) in the manifest, on disk at once."""
        with self._saving:
            self.manifest = self.manifest.with_changes(**changes, timings=dict(self.timings.phases))
            self.run.save(self.manifest)
            return self.manifest


def run_stages(session: RunSession, stages: Sequence[Stage]) -> RunManifest:
    """Run ``stages`` in order over the session's run; returns the final record."""
    for stage in stages:
        STAGES[stage](session)
    return session.manifest


# ---------------------------------------------------------------------------------------------
# SETUP, MODEL, UPLOAD


def _setup(s: RunSession) -> None:
    plan = s.manifest.plan
    env = s.reconnector.call(
        lambda: setup.prepare_environment(s.host, plan, s.reporter), "setting up again"
    )
    s.timings.lap("setup")
    _record_setup(s, env)


def _record_setup(s: RunSession, env: setup.Environment) -> None:
    plan = s.manifest.plan
    launch = setup.run_files(plan, env.sd_scripts).get("launch.sh")
    if launch is not None and launch != plan.rendered.files.get("launch.sh"):
        s.run.write_text("config/launch.sh", launch)  # a branch: now at its commit's checkout
    s.update(
        status=RunStatus.SETUP,
        sd_scripts=SdScriptsRecord(
            plan.setup.repo,
            plan.setup.ref,
            env.commit,
            env.sd_scripts,
            s.manifest.sd_scripts.git_dirty if s.manifest.sd_scripts else None,
        ),
        environment=EnvironmentRecord(
            env.python, env.fingerprint, env.torch_version, env.cached, env.installer
        ),
    )


def _environment(s: RunSession) -> tuple[str, str]:
    """The sd-scripts path and Python the SETUP stage recorded."""
    if s.manifest.sd_scripts is None or s.manifest.environment is None:
        raise RuntimeError("the SETUP stage has not run for this run")  # a bug, not user input
    return s.manifest.sd_scripts.path, s.manifest.environment.python


def _model(s: RunSession) -> None:
    plan = s.manifest.plan
    fetched = s.reconnector.call(
        lambda: setup.ensure_files(s.host, plan, s.reporter, s.hf_token),
        "fetching the model files again",
    )
    s.timings.lap("model")
    s.update(model_how=fetched.base, files_how=fetched.how)


def _upload(s: RunSession) -> None:
    sds, python = _environment(s)
    plan = s.manifest.plan
    record = s.reconnector.call(
        lambda: setup.upload_dataset(s.host, plan, s.reporter), "uploading the rest"
    )
    s.reconnector.call(
        lambda: setup.upload_run_files(s.host, plan, sds, python), "uploading the configs"
    )
    s.timings.lap("upload")
    s.update(status=RunStatus.UPLOADED, upload=record)


# ---------------------------------------------------------------------------------------------
# TRAIN (launch the detached job), FOLLOW


def _train(s: RunSession) -> None:
    plan = s.manifest.plan
    s.reporter.stage("train", f"{plan.rendered.script} on {s.host.label}")
    _install_watchdog(s)
    pid = s.reconnector.call(
        lambda: job.launch(s.host, plan.layout.run_dir, s.clock), "checking the launch"
    )
    s.timings.restart()
    s.update(status=RunStatus.RUNNING, pid=pid, launched_at=s.clock.now())
    _, python = _environment(s)
    names = s.reconnector.call(lambda: setup.packages(s.host, python), "reading the packages")
    if s.manifest.environment is not None:
        s.update(environment=replace(s.manifest.environment, packages=names))


def _install_watchdog(s: RunSession) -> None:
    """The host's own money guard, told what the set-up cost so far (run.sh starts it)."""
    m = s.manifest
    spent = budget_of(m, s.clock).spent(s.clock.now())
    s.reconnector.call(
        lambda: watchdog.install(
            s.host,
            m.plan,
            spent_before_launch=spent,
            poll_seconds=s.options.poll_seconds,
            hf_token=s.hf_token,
        ),
        "installing the watchdog",
    )


def budget_of(m: RunManifest, clock: Clock) -> Budget:
    """The limits of a recorded run (a run launched before money was recorded counts from now)."""
    now = clock.now()
    launched = m.launched_at if m.launched_at is not None else now
    money = m.plan.money
    return Budget(
        price_per_hour=m.plan.estimate.price_per_hour,
        started_at=m.started_at if m.started_at is not None else launched,
        launched_at=launched,
        max_dollars=money.max_dollars,
        max_hours=money.max_hours,
        earlier_dollars=m.earlier_dollars,
    )


def puller_of(s: RunSession) -> Puller:
    m = s.manifest
    return Puller(
        s.host, s.run, m.remote_run_dir, s.reporter, dict(m.pulled), dict(m.follow.rejected)
    )


def _follow(s: RunSession) -> None:
    m = s.manifest
    if m.exit_code is not None or not m.status.active:
        return
    puller = puller_of(s)
    follower = Follower(
        host=s.host,
        run=s.run,
        run_dir=m.remote_run_dir,
        reporter=s.reporter,
        clock=s.clock,
        settings=dict(m.plan.rendered.settings),
        budget=budget_of(m, s.clock),
        puller=puller,
        reconnector=s.reconnector,
        state=m.follow,
        poll_seconds=s.options.poll_seconds,
        step_offset=m.step_offset,
        hooks=hooks_for(m, s.host, s.run, puller, s.clock),
        # The sample folder is listed every few polls (10 s at the default 2 s poll).
        samples=SampleWatcher(
            s.host,
            m.remote_run_dir,
            puller,
            s.reporter,
            s.clock,
            max(1.0, 5 * s.options.poll_seconds),
        ),
    )
    s.follower = follower
    s.reporter.stage("follow", m.remote_run_dir)

    def save() -> None:
        s.update(follow=follower.state(), pulled=dict(puller.pulled))

    ended = follower.run_until_exit(save)
    s.timings.lap("train")
    _record_end(s, ended, follower)


def _record_end(s: RunSession, ended: job.JobExit, follower: Follower) -> None:
    """Exit code, when it ended, what it cost, and why it stopped: written once."""
    from kohyawrap.logparse import diagnose

    m = s.manifest
    launched = m.launched_at if m.launched_at is not None else s.clock.now()
    finished = launched + ended.seconds if ended.seconds is not None else s.clock.now()
    report = s.reconnector.call(
        lambda: watchdog.read_report(s.host, m.remote_run_dir), "reading the watchdog's record"
    )
    reason = follower.stop_reason
    if reason is None and report.stop is not None:
        reason = report.stop.reason  # the host acted first (it always should)
        s.reporter.info(f"the host stopped the training: {report.stop.message}")
    elif reason is None and ended.deadline:
        reason = StopReason.DEADLINE
    elif reason is None and ended.stop_requested:
        reason = StopReason.MANUAL
    failure = follower.failure
    if failure is None and ended.code != 0 and reason is None:
        failure = diagnose(follower.log_tail, m.plan.rendered.settings)
    budget = budget_of(m, s.clock)
    s.update(
        exit_code=ended.code,
        finished_at=finished,
        stop_reason=reason,
        failure=failure,
        error=follower.stop_message or (report.stop.message if report.stop else "") or m.error,
        host_stop=report.stop,
        hub=report.hub or m.hub,
        finish=report.finish or m.finish,
        cost=Cost(
            estimated=m.plan.estimate.dollars,
            actual=round(budget.spent(finished), 4),
            price_per_hour=budget.price_per_hour,
        ),
    )


# ---------------------------------------------------------------------------------------------
# PULL, FINISH


def _pull(s: RunSession) -> None:
    m = s.manifest
    puller = puller_of(s)
    s.reconnector.call(
        lambda: puller.pull_outputs(pull_state=m.plan.pull_state), "pulling the rest"
    )
    s.timings.lap("pull")
    follow = replace(m.follow, pending={}, rejected=dict(puller.rejected))
    s.update(pulled=dict(puller.pulled), follow=follow)
    if m.exit_code is not None:
        s.update(status=verdict(s.manifest))


def _grid(s: RunSession) -> None:
    if not s.manifest.plan.grid.enabled:
        return
    from kohyawrap.launcher.grid import grid_stage

    grid_stage(s, budget_of(s.manifest, s.clock))
    s.timings.lap("grid")
    s.update()


def verdict(m: RunManifest) -> RunStatus:
    """What an ended job amounts to, from its exit, why it stopped, and what is on the laptop."""
    if m.stop_reason in (StopReason.BUDGET, StopReason.DEADLINE, StopReason.MANUAL):
        return RunStatus.STOPPED
    if m.exit_code != 0 or m.failure is not None or m.stop_reason is StopReason.NAN:
        return RunStatus.FAILED
    if m.missing():
        return RunStatus.INCOMPLETE
    return RunStatus.FINISHED


def finishable(m: RunManifest) -> str | None:
    """Why ``--on-finish`` must wait for now (None: the laptop carries it out now)."""
    # A run that a limit ended is done too: spending should stop with it.
    limit = m.status is RunStatus.STOPPED and m.stop_reason in (
        StopReason.BUDGET,
        StopReason.DEADLINE,
    )
    if m.status is not RunStatus.FINISHED and not limit:
        return f"the run is {m.status.value}"
    if m.missing():
        return f"{len(m.missing())} checkpoint(s) are not on the laptop"
    return None


def _finish(s: RunSession) -> None:
    m = s.manifest
    action = m.plan.money.on_finish
    if action in ("", "none") or (m.finish is not None and m.finish.result != "pending"):
        return
    waiting = finishable(m)
    if waiting is not None:
        s.reporter.info(
            f"--on-finish {action!r} not carried out here: {waiting}; the host's watchdog carries "
            f"it out after {m.plan.money.idle_minutes:g} idle minutes, if every checkpoint is safe"
        )
        return
    _, python = _environment(s)
    checkpoints = {rel: f for rel, f in m.pulled.items() if is_checkpoint(rel)}
    s.reconnector.call(
        lambda: watchdog.ensure_receipts(s.host, m.remote_run_dir, checkpoints),
        "leaving the receipts",
    )
    record = s.reconnector.call(
        lambda: finish.decide(s.host, m.plan, python), "asking the host again"
    )
    s.reporter.info(record.message)
    s.update(finish=record)
    result = finish.act(s.host, m.plan, python, record, s.reporter)
    s.update(finish=replace(record, result=result))
    if result.startswith("failed"):
        raise HostError(
            f"--on-finish {record.action} failed on the host: {result}",
            hint="the host may still be running (and billing): stop it yourself",
        )


# ---------------------------------------------------------------------------------------------
# PREPARE: SETUP, MODEL and UPLOAD at the same time


def _prepare(s: RunSession) -> None:
    """Install, fetch the base model and upload the dataset at once (each as its stage does,
    each recorded as soon as it is done); then the run files, which name the environment."""
    plan = s.manifest.plan

    def install(r: Reporter) -> None:
        env = s.reconnector.call(
            lambda: setup.prepare_environment(s.host, plan, r), "setting up again"
        )
        _record_setup(s, env)

    def model(r: Reporter) -> None:
        fetched = s.reconnector.call(
            lambda: setup.ensure_files(s.host, plan, r, s.hf_token),
            "fetching the model files again",
        )
        s.update(model_how=fetched.base, files_how=fetched.how)

    def upload(r: Reporter) -> None:
        record = s.reconnector.call(
            lambda: setup.upload_dataset(s.host, plan, r), "uploading the rest"
        )
        s.update(upload=record)

    s.reporter.stage("prepare", "installing, fetching the base model and uploading at once")
    s.update(status=RunStatus.SETUP)
    took = overlap({"setup": install, "model": model, "upload": upload}, s.reporter, s.clock)
    sds, python = _environment(s)
    s.reconnector.call(
        lambda: setup.upload_run_files(s.host, plan, sds, python), "uploading the configs"
    )
    for name, seconds in took.items():
        s.timings.charge(name, seconds)
    s.timings.lap("prepare")  # the wall time: the three above overlap
    s.update(status=RunStatus.UPLOADED)


STAGES: dict[Stage, Callable[[RunSession], None]] = {
    Stage.PREPARE: _prepare,
    Stage.SETUP: _setup,
    Stage.MODEL: _model,
    Stage.UPLOAD: _upload,
    Stage.TRAIN: _train,
    Stage.FOLLOW: _follow,
    Stage.PULL: _pull,
    Stage.GRID: _grid,
    Stage.FINISH: _finish,
}
