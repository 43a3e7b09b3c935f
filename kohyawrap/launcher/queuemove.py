"""A queue job taken over by another host of the pool: its host dropped out, or it was still
waiting there when another host ran out of jobs.

The job becomes a new leg of its run (as ``kohyawrap resume`` makes one, with the same pieces:
``continuing``, ``legs``, ``states``): resumed from its newest training state on the laptop, or
started again from the beginning when it has none (a job that never started, or one whose states
never reached the laptop). The leg is prepared and handed to the new host's runner like any job.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from kohyawrap.clock import Clock
from kohyawrap.errors import KohyawrapError
from kohyawrap.hosts.base import Host
from kohyawrap.launcher import continuing as c
from kohyawrap.launcher.legs import begin_leg
from kohyawrap.launcher.manifest import HostRecord, Leg, RunManifest, RunStatus
from kohyawrap.launcher.queueplan import weakest
from kohyawrap.launcher.queuerecord import QueueJob, QueueStore
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.launcher.states import StateRef, epochs_done, newest, resume_settings


def newest_on_laptop(m: RunManifest, run: RunDir) -> StateRef | None:
    """The training state furthest into the run among those pulled to the laptop."""
    offsets = {leg.number: leg.step_offset for leg in m.legs}
    return newest(c.laptop_states(m, run), offsets, c.steps_per_epoch(m.plan))


@dataclass(frozen=True)
class Taker:
    """The host that takes a job over: the queue's records, and the host (``index``) itself."""

    store: QueueStore
    queue_id: str
    reporter: Reporter
    clock: Clock
    index: int
    host: Host


def take_over(taker: Taker, run_id: str) -> None:
    """Make job ``run_id`` (its host dropped out) a new leg on the taker's host, ready to be
    prepared there."""
    record = taker.store.load(taker.queue_id)
    job = next(j for j in record.jobs if j.run_id == run_id)
    lost = record.hosts[job.host].target
    run = taker.store.run(job)
    with run.follow_lock():
        _move(taker, job, run, run.load(), f"{lost} dropped out")


def take_waiting(taker: Taker, run_id: str, withdraw: Callable[[RunManifest], bool]) -> bool:
    """Move job ``run_id``, handed to another host that has not started it, to the taker's host
    (free while that one is busy). ``withdraw`` takes it back from that host's runner; False
    (nothing moved) when the job started there meanwhile, or is being followed."""
    record = taker.store.load(taker.queue_id)
    job = next(j for j in record.jobs if j.run_id == run_id)
    run = taker.store.run(job)
    with run.follow_lock():
        m = run.load()
        now = taker.store.load(taker.queue_id).job(job.name)
        if (now.host, now.key) != (job.host, job.key) or m.status is not RunStatus.UPLOADED:
            return False
        if not withdraw(m):
            return False
        was = record.hosts[job.host].target
        me = record.hosts[taker.index].target
        m = m.with_changes(status=RunStatus.STOPPED, error=f"moved to {me} before it started")
        run.save(m)
        try:
            _move(taker, job, run, m, f"{me} was free while {was} was busy")
        except BaseException as err:
            # It runs nowhere now: say so in its record rather than leave it waiting for nothing.
            why = err.message if isinstance(err, KohyawrapError) else type(err).__name__
            run.save(run.load().with_changes(
                status=RunStatus.FAILED, error=f"taken from {was} to move to {me}, which failed: {why}"
            ))  # fmt: skip
            raise
    return True


def _move(taker: Taker, job: QueueJob, run: RunDir, m: RunManifest, why: str) -> None:
    """The move itself, under the run's follow lock."""
    me = taker.store.load(taker.queue_id).hosts[taker.index]
    ref = newest_on_laptop(m, run)
    per_epoch = c.steps_per_epoch(m.plan)
    offset = next((leg.step_offset for leg in m.legs if leg.number == (ref.leg if ref else 0)), 0)
    done = epochs_done(ref, per_epoch, offset) if ref is not None else 0
    if ref is not None and done >= c.total_epochs(m.plan, per_epoch):
        ref = None  # the run had ended there; what it lacks is its last files: start again
        done = 0
    m = _next_leg(taker, run, m, ref, done, per_epoch, why)
    if ref is not None:
        how = c.place_state(taker.host, m.plan, ref, run, taker.reporter, key=me.target)
        taker.reporter.info(f"{job.name} continues on {me.target} from {ref.label} ({how})")
    else:
        taker.reporter.info(f"{job.name} starts again on {me.target} (no training state here)")
    what = f"resumed from {ref.label}" if ref is not None else "started again"
    note = f"{why}: {what} on {me.target} (leg {m.leg_number})"
    with taker.store.editing(taker.queue_id) as box:
        moved = replace(box[0].job(job.name), host=taker.index, key="", moves=(*job.moves, note))
        box[0] = box[0].with_job(moved)


def _next_leg(
    taker: Taker,
    run: RunDir,
    m: RunManifest,
    ref: StateRef | None,
    done: int,
    per_epoch: int,
    why: str,
) -> RunManifest:
    """Plan, record and begin the leg on the worker's host (status PLANNED: to be prepared)."""
    from kohyawrap.hosts.facts import read_facts

    me = taker.store.load(taker.queue_id).hosts[taker.index]
    # <work>/queues/<queue-id>-h<N>: the leg works where the queue does on this host.
    work = posixpath.dirname(posixpath.dirname(me.queue_dir))
    facts = read_facts(taker.host, work)
    facts = replace(facts, gpus=weakest(facts.gpus, ()))
    managed: tuple[tuple[str, Any], ...] = ()
    if ref is not None:
        managed = resume_settings(done + 1, ref.folder)
    plan = c.next_plan(
        m,
        leg=m.leg_number + 1,
        target=me.target,
        home=taker.host.home(),
        now=datetime.fromtimestamp(taker.clock.now(), tz=timezone.utc),
        facts=facts,
        work_dir=work,
        managed=managed,
        price=me.price_per_hour / max(1, len(me.slots)),
    )
    if ref is not None:
        c.check_state_fits(m, ref, plan)
    leg = Leg(
        number=m.leg_number + 1,
        kind="resume" if ref is not None else "restart",
        target=me.target,
        connect=dict(me.connect),
        remote_run_dir=plan.layout.run_dir,
        started_at=None,
        step_offset=done * per_epoch if ref is not None else 0,
        resumed_from=ref.label if ref is not None else "",
        changed=c.changed_settings(m.original_plan, plan),
        note=f"queue {taker.queue_id}: {why}",
        price_per_hour=plan.money.price_per_hour,
    )
    host = HostRecord(me.target, taker.host.label, dict(me.connect), facts.to_json())
    m = begin_leg(m, leg, plan, host, taker.clock.now())
    m = m.with_changes(status=RunStatus.PLANNED, started_at=None)
    run.save(m)
    c.write_leg_configs(run.for_leg(leg.number), plan)
    return m
