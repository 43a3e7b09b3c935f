"""The local record of a queue: ``runs/queues/<queue-id>/queue.json``.

Each job of a queue is a normal run (``runs/<run-id>/`` with its manifest: ``runs list``, ``pull``,
``report`` work on it); the queue record says which runs make the queue, where each one went, and
what happened to each host (its price, when work began there, its finish). It is written
atomically under a lock, so ``queue add`` can append while ``queue run`` or ``attach`` follows.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kohyawrap.errors import UsageError
from kohyawrap.fileio import LockHeld, atomic_write, dump_json, exclusive_lock
from kohyawrap.launcher.manifest import FinishRecord
from kohyawrap.launcher.runstore import RunDir

QUEUES = "queues"
RECORD = "queue.json"
SCHEMA = 1
_MAX_RECORD_BYTES = 16 << 20
_LOCK_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class QueueHost:
    """One host of the queue and what happened there."""

    target: str
    connect: dict[str, Any] = field(default_factory=dict)  # ConnectOptions.to_json()
    queue_dir: str = ""  # the queue's folder on the host (jobs/, state.json, the runner)
    python: str = ""  # the Python that runs the queue runner there
    slots: tuple[str, ...] = ("",)  # each slot's CUDA_VISIBLE_DEVICES ("" = not pinned)
    slot_labels: tuple[str, ...] = ("whole machine",)
    price_per_hour: float = 0.0  # the whole host (all its GPUs)
    started_at: float | None = None  # laptop clock: work began there (its dollars count)
    ended_at: float | None = None  # its finish, or when it dropped out
    state: str = "planned"  # planned | running | lost | done
    finish: FinishRecord | None = None
    note: str = ""


@dataclass(frozen=True)
class QueueJob:
    """One job: its run, and where it went."""

    name: str
    run_id: str
    host: int = 0  # index into the queue's hosts
    key: str = ""  # its job file on the host ("0001"); "" = not handed to the host yet
    planned: str = ""  # where the plan expected it ("gpu-box GPU 1")
    moves: tuple[str, ...] = ()  # what happened when its host dropped out


@dataclass(frozen=True)
class QueueRecord:
    """Everything recorded about one queue; no secrets."""

    queue_id: str
    created_at: str
    source: str  # the queue file
    hosts: tuple[QueueHost, ...]
    jobs: tuple[QueueJob, ...]
    on_finish: str = "none"
    idle_minutes: float = 30.0
    provider: str = "auto"
    estimate: dict[str, Any] = field(default_factory=dict)  # QueueEstimate.to_json()
    schema: int = SCHEMA

    def job(self, name: str) -> QueueJob:
        return next(j for j in self.jobs if j.name == name)

    def with_job(self, job: QueueJob) -> QueueRecord:
        """The record with ``job`` (by run id) replaced, or appended when new."""
        jobs = [job if j.run_id == job.run_id else j for j in self.jobs]
        if all(j.run_id != job.run_id for j in self.jobs):
            jobs.append(job)
        return replace(self, jobs=tuple(jobs))

    def with_host(self, index: int, **changes: Any) -> QueueRecord:
        hosts = list(self.hosts)
        hosts[index] = replace(hosts[index], **changes)
        return replace(self, hosts=tuple(hosts))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["hosts"] = [
            {**asdict(h), "finish": asdict(h.finish) if h.finish else None} for h in self.hosts
        ]
        return data

    @classmethod
    def from_json(cls, data: Any) -> QueueRecord:
        """The record from JSON; UsageError (never a traceback) on anything else."""
        try:
            hosts = tuple(_host(h) for h in data["hosts"])
            jobs = tuple(
                QueueJob(**{**j, "moves": tuple(j.get("moves") or ())}) for j in data["jobs"]
            )
            known = {k: data[k] for k in ("on_finish", "idle_minutes", "provider", "estimate")
                     if k in data}  # fmt: skip
            return cls(
                queue_id=str(data["queue_id"]),
                created_at=str(data["created_at"]),
                source=str(data["source"]),
                hosts=hosts,
                jobs=jobs,
                schema=int(data.get("schema", SCHEMA)),
                **known,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UsageError(f"not a kohyawrap queue record ({type(err).__name__}: {err})") from err


def _host(data: dict[str, Any]) -> QueueHost:
    fields = dict(data)
    for key in ("slots", "slot_labels"):
        fields[key] = tuple(fields.get(key) or ())
    finish = fields.get("finish")
    fields["finish"] = (
        FinishRecord(**{**finish, "missing": tuple(finish.get("missing") or ())})
        if finish
        else None
    )
    return QueueHost(**fields)


class QueueStore:
    """The queues recorded under a runs folder (``<runs>/queues/``)."""

    def __init__(self, runs_root: Path) -> None:
        self.runs_root = runs_root
        self.root = runs_root / QUEUES
        self._thread_lock = threading.Lock()  # a pool's host threads record from their own threads

    def folder(self, queue_id: str) -> Path:
        return self.root / queue_id

    def run(self, job: QueueJob) -> RunDir:
        """The run folder of a job."""
        return RunDir(self.runs_root / job.run_id)

    def create(self, record: QueueRecord) -> None:
        folder = self.folder(record.queue_id)
        try:
            folder.mkdir(parents=True, exist_ok=False)
        except FileExistsError as err:
            raise UsageError(f"queue folder {folder} already exists") from err
        self._write(record)

    def load(self, queue_id: str) -> QueueRecord:
        path = self.folder(queue_id) / RECORD
        try:
            if path.stat().st_size > _MAX_RECORD_BYTES:
                raise UsageError("the queue record is too large to be one", where=str(path))
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise UsageError(
                f"cannot read the queue record: {err.strerror}", where=str(path)
            ) from err
        except ValueError as err:
            raise UsageError(f"the queue record is not valid JSON: {err}", where=str(path)) from err
        try:
            return QueueRecord.from_json(data)
        except UsageError as err:
            raise UsageError(err.message, where=str(path)) from err

    def _write(self, record: QueueRecord) -> None:
        atomic_write(self.folder(record.queue_id) / RECORD, dump_json(record.to_json()))

    @contextmanager
    def editing(self, queue_id: str) -> Iterator[list[QueueRecord]]:
        """Read, change and write the record as one step (other threads and processes wait):
        ``with store.editing(qid) as box: box[0] = box[0].with_job(...)``."""
        with self._thread_lock, _waiting_lock(self.folder(queue_id) / ".record.lock"):
            box = [self.load(queue_id)]
            yield box
            self._write(box[0])

    def ids(self) -> list[str]:
        """Every queue id, oldest first (ids start with the time)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / RECORD).is_file())

    def find(self, ref: str, *, loose: bool = True) -> str | None:
        """The queue ``ref`` names (id, id prefix, its queue file's name, or with ``loose`` any
        part of its id), the newest of several; None when it names none."""
        if not ref:
            return None
        ids = self.ids()
        matches = (
            [q for q in ids if q == ref]
            or [q for q in ids if q.startswith(ref)]
            or [q for q in ids if Path(self._source(q)).stem == ref]
            or ([q for q in ids if ref in q] if loose else [])
        )
        return max(matches) if matches else None

    def _source(self, queue_id: str) -> str:
        try:
            return self.load(queue_id).source
        except UsageError:
            return ""

    def get(self, ref: str) -> str:
        """Like :meth:`find`; UsageError listing the queues when it names none."""
        found = self.find(ref)
        if found is None:
            known = ", ".join(self.ids()[-5:]) or "none yet"
            raise UsageError(
                f"no queue matches '{ref}' in {self.root}",
                hint=f"recent queues: {known}; `kohyawrap queue list` shows all",
            )
        return found


@contextmanager
def _waiting_lock(path: Path) -> Iterator[None]:
    """The record's lock, waiting for another process that holds it for a moment."""
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        try:
            with exclusive_lock(path, "queue record"):
                yield
                return
        except LockHeld:
            if time.monotonic() > deadline:
                raise UsageError(
                    f"the queue record is locked by another process ({path})"
                ) from None
            time.sleep(0.05)
