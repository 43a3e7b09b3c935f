"""The stages of a run and the one executor that runs a selection of them.

``train`` runs them all; ``attach``, ``stop`` and ``pull`` are selections over a loaded run:

    SETUP -> MODEL -> UPLOAD -> TRAIN (detached) -> FOLLOW -> PULL -> GRID -> FINISH

Each stage reads what it needs from the run's record and writes what it did back, so a later
process can carry on from any point. SETUP, MODEL and UPLOAD are idempotent and are retried after
a dropped connection; FOLLOW reconnects by itself; GRID draws the evaluation grid of a finished
run (its failure is recorded, never raised); FINISH runs only for a run whose every announced
checkpoint is verified on the laptop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from kohyawrap.clock import Clock, Timings
from kohyawrap.hosts.base import Host
from kohyawrap.launcher import job, setup
from kohyawrap.launcher.budget import Budget
from kohyawrap.launcher.fetch import Puller
from kohyawrap.launcher.finish import on_finish
from kohyawrap.launcher.follow import Follower
from kohyawrap.launcher.manifest import (
    Cost,
    EnvironmentRecord,
    RunManifest,
    RunStatus,
    SdScriptsRecord,
    StopReason,
)
from kohyawrap.launcher.reconnect import Reconnector
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.launcher.samples import SampleWatcher


class Stage(str, Enum):
    SETUP = "setup"
    MODEL = "model"
    UPLOAD = "upload"
    TRAIN = "train"
    FOLLOW = "follow"
    PULL = "pull"
    GRID = "grid"  # the evaluation grid, drawn on the host once every checkpoint is here
    FINISH = "finish"


FULL = (
    Stage.SETUP,
    Stage.MODEL,
    Stage.UPLOAD,
    Stage.TRAIN,
    Stage.FOLLOW,
    Stage.PULL,
    Stage.GRID,
    Stage.FINISH,
)
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

    def update(self, **changes: object) -> RunManifest:
        """Record ``changes`` (and the phase timings so far) in the manifest, on disk at once."""
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
    sds, python = _environment(s)
    plan = s.manifest.plan
    env = setup.Environment(sds, "", python, "", "", True, "")
    how = s.reconnector.call(
        lambda: setup.ensure_model(s.host, plan, env, s.reporter, s.hf_token),
        "fetching the base model again",
    )
    s.timings.lap("model")
    s.update(model_how=how)


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
    pid = s.reconnector.call(
        lambda: job.launch(s.host, plan.layout.run_dir, s.clock), "checking the launch"
    )
    s.timings.restart()
    s.update(status=RunStatus.RUNNING, pid=pid, launched_at=s.clock.now())
    _, python = _environment(s)
    names = s.reconnector.call(lambda: setup.packages(s.host, python), "reading the packages")
    if s.manifest.environment is not None:
        s.update(environment=replace(s.manifest.environment, packages=names))


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
    reason = follower.stop_reason
    if reason is None and ended.deadline:
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
        error=follower.stop_message or m.error,
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


def _finish(s: RunSession) -> None:
    m = s.manifest
    action = m.plan.money.on_finish
    if action in ("", "none"):
        return
    if m.status is not RunStatus.FINISHED or m.missing():
        s.reporter.info(
            f"--on-finish {action!r} not carried out: the run is {m.status.value}"
            + (f", {len(m.missing())} checkpoint(s) not on the laptop" if m.missing() else "")
        )
        return
    on_finish(s.host, action, s.reporter)


STAGES: dict[Stage, Callable[[RunSession], None]] = {
    Stage.SETUP: _setup,
    Stage.MODEL: _model,
    Stage.UPLOAD: _upload,
    Stage.TRAIN: _train,
    Stage.FOLLOW: _follow,
    Stage.PULL: _pull,
    Stage.GRID: _grid,
    Stage.FINISH: _finish,
}
