"""A queue's state and outcome: ``queue status`` (every job: state, where, steps, loss, dollars;
live from the hosts that answer) and the error a queue ends with when a job did not finish."""

from __future__ import annotations

from dataclasses import dataclass, replace

from kohyawrap.errors import IncompleteRun, KohyawrapError, TrainingFailed, UsageError
from kohyawrap.hosts.connect import ConnectOptions, open_host
from kohyawrap.launcher.manifest import RunStatus
from kohyawrap.launcher.queuehost import HostQueueState, read_state
from kohyawrap.launcher.queuerecord import QueueHost, QueueJob, QueueRecord, QueueStore
from kohyawrap.launcher.runstore import RunDir


@dataclass(frozen=True)
class JobStatus:
    """One job of a queue as ``queue status`` shows it."""

    name: str
    run_id: str
    state: str  # the run's status, or waiting / queued on the host
    where: str
    step: int | None
    total: int | None
    loss: float | None
    dollars: float | None
    note: str = ""


@dataclass(frozen=True)
class QueueStatus:
    record: QueueRecord
    jobs: tuple[JobStatus, ...]
    host_dollars: tuple[float, ...]
    live: tuple[bool, ...]  # each host answered (its runner's state is in the rows)


def queue_status(
    store: QueueStore, queue_id: str, connect: ConnectOptions, now: float, *, live: bool = True
) -> QueueStatus:
    """Every job of the queue; with ``live``, the runner's state from each host that answers
    within 10 s (the others from the records)."""
    record = store.load(queue_id)
    states: dict[int, HostQueueState] = {}
    for i, h in enumerate(record.hosts):
        if not live or h.state in ("lost", "done") or not h.queue_dir:
            continue
        given = replace(ConnectOptions.from_json(h.connect).overlaid(connect), connect_timeout=10.0)
        try:
            host = open_host(h.target, given)
        except KohyawrapError:
            continue
        try:
            states[i] = read_state(host, h.queue_dir, h.python)
        except KohyawrapError:
            continue
        finally:
            host.close()
    rows = tuple(_job_status(store.run(j), j, record, states) for j in record.jobs)
    spent = tuple(
        h.price_per_hour * max(0.0, _ended(h, states.get(i), now) - h.started_at) / 3600
        if h.started_at is not None
        else 0.0
        for i, h in enumerate(record.hosts)
    )
    return QueueStatus(record, rows, spent, tuple(i in states for i in range(len(record.hosts))))


def _ended(host: QueueHost, live: HostQueueState | None, now: float) -> float:
    """When the host stopped costing: its recorded end, the finish its runner carried out by
    itself (no laptop there), or now."""
    if host.ended_at is not None:
        return host.ended_at
    finish = live.finish if live is not None else None
    if finish is not None and finish.at and finish.result.startswith("ok"):
        return finish.at
    return now


def _job_status(
    run: RunDir, job: QueueJob, record: QueueRecord, states: dict[int, HostQueueState]
) -> JobStatus:
    try:
        m = run.load()
    except UsageError as err:
        return JobStatus(job.name, job.run_id, "broken", "", None, None, None, None, err.message)
    host = record.hosts[job.host] if 0 <= job.host < len(record.hosts) else None
    live = states.get(job.host)
    on_host = live.jobs.get(job.key) if live is not None and job.key else None
    where = host.target if host else "?"
    state = m.status.value
    step, total, dollars = (
        m.follow.last_step,
        m.follow.total_steps,
        m.cost.actual if m.cost else None,
    )
    if on_host is not None:
        if on_host.slot is not None and host is not None and on_host.slot < len(host.slot_labels):
            where = f"{host.target} {host.slot_labels[on_host.slot]}"
        if m.status.active:
            state = "queued" if on_host.state == "waiting" else on_host.state
            step = on_host.step + m.step_offset if on_host.step is not None else step
            total = on_host.total + m.step_offset if on_host.total is not None else total
            dollars = on_host.spent if on_host.spent is not None else dollars
    elif m.status is RunStatus.UPLOADED and job.key:
        state = "queued"
    note = "; ".join(job.moves) or (m.error or "")
    return JobStatus(job.name, job.run_id, state, where, step, total, m.follow.last_loss, dollars,
                     note)  # fmt: skip


def raise_for_queue(record: QueueRecord, store: QueueStore) -> None:
    """A queue in which a job did not finish ends with the error that says which and why
    (exit code 4); every job that finished is in its run folder."""
    failed: list[str] = []
    missing: list[str] = []
    for job in record.jobs:
        m = store.run(job).load()
        if m.status is RunStatus.FINISHED:
            continue
        why = m.failure.kind + ": " + m.failure.message if m.failure else (m.error or "")
        line = f"{job.name}: {m.status.value}" + (f" ({why})" if why else "") + f" [{job.run_id}]"
        (missing if m.status is RunStatus.INCOMPLETE or m.status.active else failed).append(line)
    ok = len(record.jobs) - len(failed) - len(missing)
    if failed:
        raise TrainingFailed(
            f"{len(failed)} of {len(record.jobs)} job(s) did not finish; {ok} finished",
            evidence=failed + missing,
            hint=f"each job is a run: `kohyawrap runs show RUN` says why; `kohyawrap queue status "
            f"{record.queue_id}` shows them all",
        )
    if missing:
        raise IncompleteRun(
            f"{len(missing)} of {len(record.jobs)} job(s) are not complete on the laptop",
            evidence=missing,
            hint=f"`kohyawrap attach {record.queue_id}` carries the queue on",
        )
