"""The queue as a library: what ``queue run``, ``queue add``, ``attach QUEUE`` and
``queue status`` do, each a short story over the planning (``queueplanning``), the records
(``queuerecord``) and one worker per host (``queuework``).

    check every job -> connect -> facts -> plan every job -> confirm -> record every job as a run
    -> per host (threads when there are several): set up once, prepare and hand each job to the
    host's runner, follow and pull each job as it ends, grids, the finish
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from kohyawrap.clock import Clock, SystemClock
from kohyawrap.errors import HostError, UsageError
from kohyawrap.hosts.base import Host
from kohyawrap.hosts.connect import ConnectOptions, open_host
from kohyawrap.launcher.legs import first_leg
from kohyawrap.launcher.manifest import HostRecord, Provenance, RunManifest
from kohyawrap.launcher.queuefile import QueueFile
from kohyawrap.launcher.queuehost import read_state
from kohyawrap.launcher.queueplan import slot_label
from kohyawrap.launcher.queueplanning import (
    HostPlan,
    QueueOptions,
    QueuePlan,
    plan_host,
    plan_queue,
    precheck,
    queue_id_of,
)
from kohyawrap.launcher.queuerecord import QueueHost, QueueJob, QueueRecord, QueueStore
from kohyawrap.launcher.queuestatus import QueueStatus, queue_status
from kohyawrap.launcher.queuework import Context, Coordinator, HostWorker, done
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.request import looks_local
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.launcher.runstore import RunStore
from kohyawrap.launcher.stages import FollowOptions


@dataclass(frozen=True)
class QueueResult:
    """A planned (dry run), declined or run queue."""

    plan: QueuePlan | None
    record: QueueRecord | None = None
    declined: bool = False


@dataclass
class QueueLauncher:
    """Where queues and their runs are recorded, how time passes, and who is told."""

    runs: RunStore
    reporter: Reporter
    clock: Clock = field(default_factory=SystemClock)
    options: FollowOptions = field(default_factory=FollowOptions)
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)

    @property
    def store(self) -> QueueStore:
        return QueueStore(self.runs.root)

    # -- queue run -------------------------------------------------------------------------------
    def run(
        self,
        queue: QueueFile,
        options: QueueOptions,
        *,
        confirm: Callable[[QueuePlan], bool] = lambda plan: True,
        finish_this_machine: Callable[[str, str], bool] = lambda target, action: False,
        hf_token: str | None = None,
        dry_run: bool = False,
        on_plan: Callable[[QueuePlan], None] = lambda plan: None,
    ) -> QueueResult:
        """check -> connect -> plan -> confirm -> record -> work every host. A job that fails
        does not stop the others (:func:`raise_for_queue` says which did not finish)."""
        _check_targets(options, finish_this_machine)
        now = self.now()
        precheck(queue, options, hf_token, now)
        queue_id = queue_id_of(queue.path, now, queue.jobs)
        with ExitStack() as stack:
            hosts = [stack.enter_context(self._opened(t, options.connect)) for t in options.targets]
            plan = self._plan(queue, options, hosts, queue_id, now)
            on_plan(plan)
            if dry_run:
                return QueueResult(plan)
            if not confirm(plan):
                return QueueResult(plan, declined=True)
            record = self._record(plan)
            self._work(record.queue_id, dict(enumerate(hosts)), hf_token)
        return QueueResult(plan, self.store.load(queue_id))

    def _plan(
        self, queue: QueueFile, options: QueueOptions, hosts: Sequence[Host], queue_id: str,
        now: datetime,
    ) -> QueuePlan:  # fmt: skip
        from kohyawrap.launcher.setup import preflight

        planned: list[HostPlan] = []
        for i, (host, target) in enumerate(zip(hosts, options.targets, strict=True)):
            self.reporter.stage("connect", target)
            planned.append(plan_host(host, target, queue, options, queue_id, i)[0])
        plan = plan_queue(queue, options, planned, now, queue_id)
        for i, (host, hp) in enumerate(zip(hosts, plan.hosts, strict=True)):
            first = next(
                (p for j, p in enumerate(plan.plans) if plan.estimate.placements[j].host == i), None
            )
            if first is not None:
                preflight(host, first, hp.facts, self.reporter, force=options.force or first.smoke)
        return plan

    def _record(self, plan: QueuePlan) -> QueueRecord:
        """Every job recorded as a run (its first leg says which queue), then the queue."""
        jobs = []
        for i, p in enumerate(plan.plans):
            host = plan.hosts[plan.estimate.placements[i].host]
            run = self.runs.create(p.run_id)
            on = HostRecord(
                host.target, host.label, plan.options.connect.recorded().to_json(),
                host.facts.to_json(),
            )  # fmt: skip
            leg = replace(first_leg(p, on, None), note=f"queue {plan.queue_id}: job {i + 1}")
            run.save(RunManifest(run_id=p.run_id, plan=p, host=on, legs=(leg,),
                                 provenance=_provenance(p)))  # fmt: skip
            for name, text in sorted(p.rendered.files.items()):
                run.write_text(f"config/{name}", text)
            placed = plan.estimate.placements[i]
            jobs.append(QueueJob(p.output_name, p.run_id, placed.host, planned=plan.where(i)))
        record = QueueRecord(
            queue_id=plan.queue_id,
            created_at=plan.created_at,
            source=str(plan.source),
            hosts=tuple(_queue_host(h, plan.options.connect) for h in plan.hosts),
            jobs=tuple(jobs),
            on_finish=plan.options.on_finish,
            idle_minutes=plan.options.idle_minutes,
            provider=plan.options.provider,
            estimate=plan.estimate.to_json(),
        )
        self.store.create(record)
        return record

    # -- the workers -------------------------------------------------------------------------------
    def _work(self, queue_id: str, hosts: dict[int, Host], hf_token: str | None) -> None:
        """One worker per reachable host; several run in threads (set up at the same time)."""
        ctx = Context(self.store, queue_id, self.reporter, self.clock, self.options,
                      Coordinator(len(hosts)), hf_token)  # fmt: skip
        with self._following(queue_id):
            workers = [HostWorker(ctx, i, host) for i, host in sorted(hosts.items())]
            if len(workers) == 1:
                workers[0].work()
            else:
                errors: list[BaseException] = []
                threads = [threading.Thread(target=_catching(w.work, errors), daemon=True,
                                            name=f"queue-host-{w.index}") for w in workers]  # fmt: skip
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if errors:
                    raise errors[0]
            left = ctx.coordinator.left_over
            if left:
                self.reporter.info(f"{len(left)} job(s) had no host left to go to")

    @contextmanager
    def _following(self, queue_id: str) -> Iterator[None]:
        from kohyawrap.fileio import LockHeld, exclusive_lock

        try:
            with exclusive_lock(self.store.folder(queue_id) / ".follow.lock", "queue"):
                yield
        except LockHeld:
            raise UsageError(
                f"queue {queue_id} is being followed by another kohyawrap",
                hint="let that one finish, or end it (Ctrl-C: the queue goes on on the host)",
            ) from None

    @contextmanager
    def _opened(self, target: str, connect: ConnectOptions) -> Iterator[Host]:
        host = open_host(target, connect)
        try:
            yield host
        finally:
            host.close()

    # -- attach ------------------------------------------------------------------------------------
    def attach(
        self, queue_id: str, connect: ConnectOptions, hf_token: str | None = None
    ) -> QueueRecord:
        """Carry a queue on from its records: hand over what was not handed over, follow the
        current job, pull every ended job, draw the grids, then finish. A host that does not
        answer has its unfinished jobs taken over by the others."""
        record = self.store.load(queue_id)
        with ExitStack() as stack:
            hosts: dict[int, Host] = {}
            for i, h in enumerate(record.hosts):
                if h.state == "lost" or (h.state == "done" and not self._undone_on(record, i)):
                    continue
                given = ConnectOptions.from_json(h.connect).overlaid(connect)
                self.reporter.stage("connect", h.target)
                try:
                    hosts[i] = stack.enter_context(self._opened(h.target, given))
                except HostError as err:
                    self.reporter.info(f"{h.target} does not answer ({err.message})")
                    self._mark_lost(queue_id, i, err.message)
            self._reassign_lost(queue_id, hosts)
            if hosts:
                self._work(queue_id, hosts, hf_token)
        return self.store.load(queue_id)

    def _undone_on(self, record: QueueRecord, index: int) -> bool:
        return any(not done(self.store.run(j).load()) for j in record.jobs if j.host == index)

    def _mark_lost(self, queue_id: str, index: int, why: str) -> None:
        with self.store.editing(queue_id) as box:
            box[0] = box[0].with_host(index, state="lost", note=why[:500])

    def _reassign_lost(self, queue_id: str, hosts: dict[int, Host]) -> None:
        """Unfinished jobs of hosts that are lost wait for the reachable ones' workers."""
        if not hosts:
            return
        record = self.store.load(queue_id)
        lost = {i for i, h in enumerate(record.hosts) if h.state == "lost"}
        from kohyawrap.launcher.queuemove import Taker, take_over

        first = min(hosts)
        taker = Taker(self.store, queue_id, self.reporter, self.clock, first, hosts[first])
        for job in record.jobs:
            if job.host in lost and not done(self.store.run(job).load()):
                take_over(taker, job.run_id)

    # -- queue add ---------------------------------------------------------------------------------
    def add(
        self,
        queue_id: str,
        queue: QueueFile,
        connect: ConnectOptions,
        *,
        confirm: Callable[[QueuePlan], bool] = lambda plan: True,
        hf_token: str | None = None,
        dry_run: bool = False,
        on_plan: Callable[[QueuePlan], None] = lambda plan: None,
        force: bool = False,
    ) -> QueueResult:
        """Append ``queue``'s jobs to a queue its host still runs: planned on that host, recorded,
        prepared and handed to its runner (``attach`` or a running ``queue run`` follows them)."""
        record = self.store.load(queue_id)
        _check_new_names(record, queue)
        index = next(
            (i for i, h in enumerate(record.hosts) if h.state not in ("lost", "done")), None
        )
        if index is None:
            raise UsageError(
                f"queue {queue_id} has no host still working",
                hint="start a new queue: `kohyawrap queue run FILE --host HOST`",
            )
        h = record.hosts[index]
        options = QueueOptions(targets=(h.target,), connect=connect, on_finish=record.on_finish,
                               idle_minutes=record.idle_minutes, provider=record.provider,
                               force=force)  # fmt: skip
        now = self.now()
        precheck(queue, options, hf_token, now)
        given = ConnectOptions.from_json(h.connect).overlaid(connect)
        with self._opened(h.target, given) as host:
            finished = read_state(host, h.queue_dir, h.python).finish
            if finished is not None:
                raise UsageError(
                    f"the queue on {h.target} has finished ({finished.message})",
                    hint="start a new queue: `kohyawrap queue run FILE --host HOST`",
                )
            hp, _ = plan_host(host, h.target, queue, options, queue_id, index)
            hp = replace(hp, price_per_hour=h.price_per_hour, queue_dir=h.queue_dir)
            plan = plan_queue(queue, replace(options, price_per_hour=h.price_per_hour), [hp],
                              now, queue_id)  # fmt: skip
            on_plan(plan)
            if dry_run:
                return QueueResult(plan)
            if not confirm(plan):
                return QueueResult(plan, declined=True)
            ctx = Context(self.store, queue_id, self.reporter, self.clock, self.options,
                          Coordinator(1), hf_token)  # fmt: skip
            worker = HostWorker(ctx, index, host)
            for job in self._append(plan, index, given):
                # Recorded in the queue once handed over (a follower never sees it half done).
                worker.prepare(job, self.store.run(job).load())
                with self.store.editing(queue_id) as box:
                    if all(j.run_id != job.run_id for j in box[0].jobs):
                        box[0] = box[0].with_job(job)  # its preparation failed: recorded so
        return QueueResult(plan, self.store.load(queue_id))

    def status(self, queue_id: str, connect: ConnectOptions, *, live: bool = True) -> QueueStatus:
        """Every job: its state, steps, loss and dollars (live from the hosts that answer)."""
        return queue_status(self.store, queue_id, connect, self.clock.now(), live=live)

    def _append(self, plan: QueuePlan, index: int, connect: ConnectOptions) -> list[QueueJob]:
        """The new jobs recorded as runs (not yet in the queue's record)."""
        host = plan.hosts[0]
        record = HostRecord(host.target, host.label, connect.recorded().to_json(),
                            host.facts.to_json())  # fmt: skip
        jobs = []
        for i, p in enumerate(plan.plans):
            run = self.runs.create(p.run_id)
            leg = replace(first_leg(p, record, None), note=f"queue {plan.queue_id}: added")
            run.save(RunManifest(run_id=p.run_id, plan=p, host=record, legs=(leg,),
                                 provenance=_provenance(p)))  # fmt: skip
            for name, text in sorted(p.rendered.files.items()):
                run.write_text(f"config/{name}", text)
            jobs.append(QueueJob(p.output_name, p.run_id, index, planned=plan.where(i)))
        return jobs


# ---------------------------------------------------------------------------------------------
# Helpers


def _catching(work: Callable[[], None], errors: list[BaseException]) -> Callable[[], None]:
    def run() -> None:
        try:
            work()
        except BaseException as err:  # handed to the main thread
            errors.append(err)

    return run


def _check_targets(options: QueueOptions, finish_this_machine: Callable[[str, str], bool]) -> None:
    """``--on-finish`` on a host that looks like this machine must be confirmed."""
    if len(set(options.targets)) != len(options.targets):
        raise UsageError("the same --host is given twice", hint="name each host once")
    action = options.on_finish
    for target in options.targets:
        if action in ("shutdown", "stop", "destroy") and looks_local(target):  # noqa: SIM102
            if not finish_this_machine(target, action):
                raise UsageError(
                    f"--on-finish {action} would act on {target!r}, which looks like this machine",
                    hint="answer yes when asked (on a terminal), or leave --on-finish out",
                )


def _check_new_names(record: QueueRecord, queue: QueueFile) -> None:
    import unicodedata

    known = {unicodedata.normalize("NFC", j.name).casefold(): j.name for j in record.jobs}
    for job in queue.jobs:
        key = unicodedata.normalize("NFC", job.name).casefold()
        if key in known:
            raise UsageError(
                f"queue {record.queue_id} already has a job named {known[key]!r}",
                where=job.where,
                hint="give the new job its own name",
            )


def _queue_host(h: HostPlan, connect: ConnectOptions) -> QueueHost:
    return QueueHost(
        target=h.target,
        connect=connect.recorded().to_json(),
        queue_dir=h.queue_dir,
        python=h.python,
        slots=tuple(s.visible for s in h.slots),
        slot_labels=tuple(slot_label(s) for s in h.slots),
        price_per_hour=h.price_per_hour,
    )


def _provenance(plan: RunPlan) -> tuple[Provenance, ...]:
    """The git state of the dataset, when it lives in a git repository."""
    from kohyawrap.gitinfo import git_state

    root = Path(plan.dataset_root)
    state = git_state(root)
    return (Provenance(str(root), state.commit, state.dirty),) if state is not None else ()
