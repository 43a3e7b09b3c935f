"""The laptop's part of a queue, one worker per host: prepare each job and hand it to the host's
runner, follow the jobs as the runner starts them, pull each one back (verified) as it ends, draw
the grids once the host's GPUs are free, then carry out the queue's finish.

The host runs the queue by itself (``kohyawrap/hostside/queuerunner.py``); the worker only
watches and pulls, so a laptop that goes away loses nothing: ``attach`` carries on from the
records. A job that fails is recorded and the next one goes on. A host that drops out (its connection does not
come back within the reconnect budget) hands its unfinished jobs to the :class:`Coordinator`,
and the hosts still working take them over (``queuemove``): resumed from their newest training
state on the laptop, or started again when they have none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from kohyawrap.clock import Clock
from kohyawrap.errors import HostError, KohyawrapError, UsageError
from kohyawrap.hosts.base import Host
from kohyawrap.hosts.connect import ConnectOptions, open_host
from kohyawrap.launcher import queuehost, watchdog
from kohyawrap.launcher.fetch import is_checkpoint
from kohyawrap.launcher.job import alive as job_alive
from kohyawrap.launcher.job import exit_status as job_exit
from kohyawrap.launcher.manifest import RunManifest, RunStatus
from kohyawrap.launcher.queuerecord import QueueHost, QueueJob, QueueRecord, QueueStore
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.launcher.stages import FollowOptions, RunSession, Stage, run_stages

T = TypeVar("T")
_BEFORE_HANDING = (RunStatus.PLANNED, RunStatus.SETUP)
_FOLLOW_RETRIES = 3


class HostLost(Exception):
    """The host stopped answering (past the reconnect budget): its jobs go elsewhere."""

    def __init__(self, error: KohyawrapError) -> None:
        super().__init__(error.message)
        self.error = error


def done(m: RunManifest) -> bool:
    """The laptop has nothing more to follow for this job (it ended, or never could start)."""
    return not m.status.active and m.status not in _BEFORE_HANDING


class Coordinator:
    """Jobs whose host dropped out, handed to the hosts still working.

    A worker asks for more once its own jobs are done; it gets one, or None when no worker is
    still busy (so no job can come any more) and none is waiting.
    """

    def __init__(self, workers: int) -> None:
        self._cond = threading.Condition()
        self._waiting: list[str] = []  # run ids
        self._busy = workers

    def give(self, run_ids: list[str]) -> None:
        with self._cond:
            self._waiting.extend(run_ids)
            self._cond.notify_all()

    def leave(self) -> None:
        """A worker ends (its host dropped out)."""
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def take(self, timeout: float | None = None) -> str | None:
        """A job to take over, or None when none can come any more; with ``timeout``, "" when
        none came within it while other workers are still busy (the caller looks again)."""
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: bool(self._waiting) or self._busy <= 0, timeout)
            if not self._waiting and self._busy <= 0:
                return None
            self._busy += 1
            return self._waiting.pop(0) if self._waiting else ""

    @property
    def left_over(self) -> list[str]:
        with self._cond:
            return list(self._waiting)


@dataclass
class Context:
    """What every worker of one queue shares."""

    store: QueueStore
    queue_id: str
    reporter: Reporter
    clock: Clock
    options: FollowOptions
    coordinator: Coordinator
    hf_token: str | None = None

    def record(self) -> QueueRecord:
        return self.store.load(self.queue_id)

    def edit_host(self, index: int, **changes: object) -> None:
        with self.store.editing(self.queue_id) as box:
            box[0] = box[0].with_host(index, **changes)


class HostWorker:
    """One host of the queue, worked from this laptop."""

    def __init__(self, ctx: Context, index: int, host: Host) -> None:
        self.ctx = ctx
        self.index = index
        self.host = host
        self.skipped: set[str] = set()  # jobs another process follows: left to it
        self.retries: dict[str, int] = {}  # run id -> times following it failed

    @property
    def reporter(self) -> Reporter:
        return self.ctx.reporter

    def work(self) -> None:
        """Everything this host has to do, then its finish; a host that drops out passes its
        unfinished jobs on."""
        try:
            self._install()
            with queuehost.lease(self.host, self._folder, max(5.0, self.ctx.options.poll_seconds)):
                self._loop()
            self._finish()
            self.ctx.edit_host(self.index, state="done")
        except HostLost as lost:
            self._lost(lost.error)
            self.ctx.coordinator.leave()

    # -- the host's own jobs ---------------------------------------------------------------------
    @property
    def _me(self) -> QueueHost:
        return self.ctx.record().hosts[self.index]

    @property
    def _folder(self) -> str:
        return self._me.queue_dir

    def _jobs(self) -> list[QueueJob]:
        return [j for j in self.ctx.record().jobs if j.host == self.index]

    def _install(self) -> None:
        me = self._me
        config = queuehost.config_of(
            self.ctx.queue_id, me.slots, self.ctx.record().on_finish,
            self.ctx.record().idle_minutes, self.ctx.record().provider,
            self.ctx.options.poll_seconds,
        )  # fmt: skip
        self._guard(queuehost.install, self.host, me.queue_dir, config)
        if me.started_at is None:
            self.ctx.edit_host(self.index, started_at=self.ctx.clock.now())
        self.ctx.edit_host(self.index, state="running")

    def _loop(self) -> None:
        from kohyawrap.launcher.queuemove import Taker, take_over

        taker = Taker(self.ctx.store, self.ctx.queue_id, self.reporter, self.ctx.clock,
                      self.index, self.host)  # fmt: skip
        while True:
            self._prepare_new()
            self._follow_all()
            self._grids()
            if self._more():
                continue  # `queue add` handed over more jobs meanwhile
            if self._steal():
                continue  # a job another host had not started yet: run here now
            # While the other hosts are busy, look for a job to take from them now and then.
            moved = self.ctx.coordinator.take(max(5.0, 10 * self.ctx.options.poll_seconds))
            if moved is None:
                return
            if not moved:
                continue
            try:
                self._guard(take_over, taker, moved)
            except HostLost:
                raise
            except KohyawrapError as err:  # its state does not fit, its run is followed ...
                run = RunDir(self.ctx.store.runs_root / moved)
                self._failed(run, f"moving it to {self._me.target}: {err.message}")
                self.reporter.info(f"{run.run_id} could not be moved: {err.message}")

    def _more(self) -> bool:
        """Jobs of this host still to follow (added while the others were followed)."""
        return any(
            j.run_id not in self.skipped and not done(self.ctx.store.run(j).load())
            for j in self._jobs()
            if j.key
        )

    def _steal(self) -> bool:
        """This host ran out of jobs: take over the first job another host of the pool was given
        but has not started (it waits behind that host's running jobs), if there is one."""
        from kohyawrap.launcher.queuemove import Taker, take_waiting

        record = self.ctx.record()
        taker = Taker(self.ctx.store, self.ctx.queue_id, self.reporter, self.ctx.clock,
                      self.index, self.host)  # fmt: skip
        for job in record.jobs:
            owner = record.hosts[job.host] if 0 <= job.host < len(record.hosts) else None
            if job.host == self.index or not job.key or owner is None or owner.state != "running":
                continue
            if self.ctx.store.run(job).load().status is not RunStatus.UPLOADED:
                continue

            def withdraw(m: RunManifest, owner: QueueHost = owner) -> bool:
                # A connection of this worker's own: the owner's worker uses its own meanwhile.
                given = ConnectOptions.from_json(owner.connect)
                with closing(open_host(owner.target, given)) as there:
                    return queuehost.withdraw_job(there, m.remote_run_dir)

            try:
                if self._guard(take_waiting, taker, job.run_id, withdraw):
                    self.reporter.info(f"{job.name} moves to {self._me.target}, which is free")
                    return True
            except HostLost:
                raise
            except UsageError:  # followed right now (its host's worker waits for it to start)
                continue
            except KohyawrapError as err:  # its host does not answer, the move failed ...
                self.reporter.info(f"{job.name} not moved to {self._me.target}: {err.message}")
        return False

    def _mine(self, job: QueueJob) -> bool:
        """The job is still this host's, as handed over (another host may have taken it); a job
        `queue add` is handing over is not in the record yet."""
        now = next((j for j in self.ctx.record().jobs if j.run_id == job.run_id), None)
        return now is None or (now.host == self.index and now.key == job.key)

    # -- prepare and hand over -------------------------------------------------------------------
    def _prepare_new(self) -> None:
        for job in self._jobs():
            if job.key or job.run_id in self.skipped:
                continue
            m = self.ctx.store.run(job).load()
            if m.status in _BEFORE_HANDING or m.status is RunStatus.UPLOADED:
                self.prepare(job, m)

    def session(self, run: RunDir, m: RunManifest) -> RunSession:
        return RunSession(
            run.for_leg(m.leg_number), m, self.host, self.reporter, self.ctx.clock,
            self.ctx.options, hf_token=self.ctx.hf_token,
        )  # fmt: skip

    def prepare(self, job: QueueJob, m: RunManifest) -> None:
        run = self.ctx.store.run(job)
        self.reporter.stage("queue", f"preparing {job.name} on {self._me.target}")
        try:
            with run.follow_lock():
                if not self._mine(job):
                    return
                m = run.load()
                s = self.session(run, m)
                if m.status in _BEFORE_HANDING:
                    self._guard(run_stages, s, (Stage.PREPARE,))
                self._guard(self._install_watchdog, s)
        except HostLost:
            raise
        except UsageError as err:
            self._skip(job, err)
            return
        except KohyawrapError as err:
            self._failed(run, f"prepare: {err.message}")
            self.reporter.info(f"{job.name} could not be prepared: {err.message}")
            return
        self._hand_over(job, run.load())

    def _hand_over(self, job: QueueJob, m: RunManifest) -> None:
        """The job file on the host first, then the record: a job the record says is handed
        over is one the host runs, laptop or not."""
        me = self._me
        with self.ctx.store.editing(self.ctx.queue_id) as box:
            used = [int(j.key) for j in box[0].jobs if j.host == self.index and j.key.isdigit()]
            key = f"{max(used, default=0) + 1:04d}"
            self._guard(queuehost.add_job, self.host, me.queue_dir, key, job.name, m.remote_run_dir)
            box[0] = box[0].with_job(replace(job, key=key))
        self._guard(queuehost.ensure_runner, self.host, me.queue_dir, me.python)
        self.reporter.info(f"{job.name} is in the host's queue ({me.queue_dir})")

    def _install_watchdog(self, s: RunSession) -> None:
        """The job's own money guard (its limits; its finish is the queue's, so none here)."""
        watchdog.install(
            self.host, s.manifest.plan, spent_before_launch=0.0,
            poll_seconds=self.ctx.options.poll_seconds, hf_token=self.ctx.hf_token,
        )  # fmt: skip

    def _failed(self, run: RunDir, error: str) -> None:
        m = run.load()
        run.save(m.with_changes(status=RunStatus.FAILED, error=error))

    def _skip(self, job: QueueJob, err: KohyawrapError) -> None:
        self.skipped.add(job.run_id)
        self.reporter.info(f"{job.name}: {err.message}")

    # -- follow and pull -------------------------------------------------------------------------
    def _follow_all(self) -> None:
        """Follow the host's handed-over jobs, the one that started first each time."""
        while True:
            jobs = [j for j in self._jobs() if j.key and j.run_id not in self.skipped]
            undone = [j for j in jobs if not done(self.ctx.store.run(j).load())]
            if not undone:
                return
            me = self._me
            state = self._guard(queuehost.read_state, self.host, me.queue_dir, me.python)
            started = [j for j in undone if j.key in state.jobs and state.jobs[j.key].started_at]
            pick = min(started, key=lambda j: state.jobs[j.key].started_at or 0.0, default=None)
            self._follow(pick or undone[0])

    def _follow(self, job: QueueJob) -> None:
        run = self.ctx.store.run(job)
        try:
            with run.follow_lock():
                if not self._mine(job):
                    return
                s = self.session(run, run.load())
                if s.manifest.status is RunStatus.UPLOADED:
                    self._wait_started(s, job)
                self.reporter.stage("queue", f"following {job.name} on {self._me.target}")
                self._guard(run_stages, s, (Stage.FOLLOW, Stage.PULL))
        except HostLost:
            raise
        except UsageError as err:
            self._skip(job, err)
        except KohyawrapError as err:
            self._after_error(job, run, err)

    def _after_error(self, job: QueueJob, run: RunDir, err: KohyawrapError) -> None:
        """Following failed while the host answers: a job still there (a connection that came
        back late) is followed again, a few times; one that is gone has failed."""
        m = run.load()
        tries = self.retries.get(job.run_id, 0) + 1
        self.retries[job.run_id] = tries
        there = isinstance(err, HostError) and m.status.active and tries <= _FOLLOW_RETRIES
        if there:
            ended = self._guard(job_exit, self.host, m.remote_run_dir)
            there = ended is not None or self._guard(job_alive, self.host, m.remote_run_dir)
        if there:
            self.reporter.info(f"{job.name}: {err.message}; following it again")
            return
        self._failed(run, f"follow: {err.message}")
        self.reporter.info(f"{job.name}: {err.message}")

    def _wait_started(self, s: RunSession, job: QueueJob) -> None:
        """Wait for the runner to start the job (a slot frees up); record when it began."""
        me = self._me
        self.reporter.stage("queue", f"{job.name} waits for a free slot on {me.target}")
        looks = 0
        while True:
            started = self._guard(queuehost.job_started, self.host, s.manifest.remote_run_dir)
            if started is not None:
                pid, ago = started
                at = self.ctx.clock.now() - ago
                s.update(status=RunStatus.RUNNING, pid=pid, launched_at=at, started_at=at)
                return
            looks += 1
            if looks % 10 == 0:  # a runner that exited (drained) before this job was added
                self._guard(queuehost.ensure_runner, self.host, me.queue_dir, me.python)
            self.ctx.clock.sleep(self.ctx.options.poll_seconds)

    # -- after the jobs: grids, the finish --------------------------------------------------------
    def _grids(self) -> None:
        """Grids use the GPU: drawn once the host's jobs have all ended."""
        for job in self._jobs():
            if job.run_id in self.skipped:
                continue
            run = self.ctx.store.run(job)
            m = run.load()
            drawn = m.grid is not None and m.grid.ended
            if m.status is not RunStatus.FINISHED or not m.plan.grid.enabled or drawn:
                continue
            try:
                with run.follow_lock():
                    s = self.session(run, m)
                    self._guard(run_stages, s, (Stage.GRID,))
            except HostLost:
                raise
            except KohyawrapError as err:
                self.reporter.info(f"{job.name}: no grid ({err.message})")

    def _finish(self) -> None:
        """The queue's --on-finish on this host, once every job's checkpoints are here."""
        record = self.ctx.record()
        if record.on_finish in ("", "none"):
            return
        me = self._me
        waiting = self._not_finishable()
        if waiting:
            self.reporter.info(
                f"--on-finish {record.on_finish!r} not carried out here: {waiting}; the host's "
                f"queue runner carries it out after {record.idle_minutes:g} idle minutes"
            )
            return
        for job in self._jobs():
            m = self.ctx.store.run(job).load()
            checkpoints = {rel: f for rel, f in m.pulled.items() if is_checkpoint(rel)}
            self._guard(watchdog.ensure_receipts, self.host, m.remote_run_dir, checkpoints)
        decision = self._guard(queuehost.decide_finish, self.host, me.queue_dir, me.python)
        self.reporter.info(decision.message)
        self.ctx.edit_host(self.index, finish=decision)
        result = queuehost.act_finish(self.host, me.queue_dir, me.python, decision, self.reporter)
        self.ctx.edit_host(
            self.index, finish=replace(decision, result=result), ended_at=self.ctx.clock.now()
        )
        if result.startswith("failed"):
            raise HostError(
                f"--on-finish {decision.action} failed on {me.target}: {result}",
                hint="the host may still be running (and billing): stop it yourself",
            )

    def _not_finishable(self) -> str:
        """Why the laptop must not finish this host now ("" = it may)."""
        for job in self._jobs():
            m = self.ctx.store.run(job).load()
            if job.run_id in self.skipped or not done(m):
                return f"{job.name} is {m.status.value}"
            if m.missing():
                return f"{len(m.missing())} checkpoint(s) of {job.name} are not on the laptop"
        return ""

    # -- a host that drops out ---------------------------------------------------------------------
    def _guard(self, action: Callable[..., T], *args: Any) -> T:
        """``action(*args)``; a HostError while the host does not answer any more is the host
        dropping out (HostLost); one while it answers is the job's own failure (re-raised)."""
        try:
            return action(*args)
        except HostError as err:
            if self._answers():
                raise
            raise HostLost(err) from err

    def _answers(self) -> bool:
        try:
            self.host.run("true", timeout=20)
            return True
        except HostError:
            try:
                self.host.reconnect()
                self.host.run("true", timeout=20)
                return True
            except HostError:
                return False

    def _lost(self, err: KohyawrapError) -> None:
        me = self._me
        self.reporter.stage("queue", f"{me.target} dropped out: {err.message}")
        self.ctx.edit_host(
            self.index, state="lost", ended_at=self.ctx.clock.now(), note=err.message[:500]
        )
        undone = [j.run_id for j in self._jobs() if not done(self.ctx.store.run(j).load())]
        if undone:
            self.reporter.info(f"{len(undone)} job(s) of {me.target} go to the other hosts")
        self.ctx.coordinator.give(undone)
