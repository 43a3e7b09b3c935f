"""kohyawrap's queue runner: runs a queue's jobs on the GPU host, with or without a laptop.

The laptop prepares every job of the queue (sd-scripts and its environment once, each model once,
each job's dataset, configs, run.sh and watchdog in its own run folder), writes one file per job
into ``jobs/`` of the queue folder, and starts this program detached. From then on the host needs
no laptop. Every ``poll_seconds`` it:

- starts the next waiting job (in the order of the job files) on each free slot: a slot is one GPU
  (``CUDA_VISIBLE_DEVICES``), or the whole machine when the queue uses no GPU selection. A job is
  its run folder's ``run.sh``, started as ``kohyawrap``'s own launch starts it (``.launched`` made
  first, so a job is never started twice, whoever starts it);
- sees a job end by its ``exit_code`` file (run.sh writes it whatever happens): a failed job
  frees its slot like any other, and the next one starts. A waiting job a laptop took back for
  another host of a pool (``.launched`` made, ``exit_code`` "withdrawn") counts as ended;
- records every job's state in ``state.json`` (read by ``kohyawrap queue status``);
- once every job has ended (the queue drained): with ``--on-finish`` none it exits; otherwise,
  when no laptop has been heard of for ``idle_minutes`` (no receipt in any job, no ``lease``
  touched, no job added), it decides the finish under the watchdog's safety rule over EVERY job
  of the queue, records it in ``watchdog/finish.json`` and carries it out.

The safety rule is the watchdog's (``watchdog.py``, uploaded beside this file): ``destroy`` or
the user's own command only when every checkpoint of every job has a laptop's receipt (or is on
the Hugging Face Hub with the same sha256); ``stop`` and ``shutdown`` at any time.

    python queuerunner.py run QUEUE_DIR                       # the runner (the laptop starts it)
    python queuerunner.py finish QUEUE_DIR --decide [--by W]  # the laptop's FINISH: decide, print
    python queuerunner.py finish QUEUE_DIR --act              # ... then carry out the decision
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__:  # imported as kohyawrap.hostside.queuerunner (the laptop's tests)
    from kohyawrap.hostside import watchdog as wd
else:  # run as a file on the host, beside the watchdog.py uploaded with it
    import watchdog as wd  # type: ignore[no-redef]


@dataclass(frozen=True)
class QueueConfig:
    """``config.json``, written by the laptop when it starts the queue."""

    queue_id: str = ""
    slots: tuple[str, ...] = ("",)  # each slot's CUDA_VISIBLE_DEVICES ("" = leave it alone)
    on_finish: str = "none"
    idle_minutes: float = 30.0
    provider: str = "auto"
    poll_seconds: float = 5.0

    @classmethod
    def load(cls, path: Path) -> QueueConfig:
        data = json.loads(path.read_text(encoding="utf-8"))
        slots = tuple(str(s) for s in data.get("slots") or ("",)) or ("",)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "slots"}
        return cls(slots=slots, **known)

    def finish_config(self) -> Any:
        """The watchdog's Config, for carrying out the finish (a command runs with it)."""
        return wd.Config(on_finish=self.on_finish, provider=self.provider, run_id=self.queue_id)


@dataclass(frozen=True)
class Job:
    """One job file: which run folder to start, in which order."""

    key: str  # the file's stem: "0001" (the order)
    name: str
    run_dir: Path

    @property
    def ended(self) -> bool:
        return (self.run_dir / "exit_code").exists()

    @property
    def launched(self) -> bool:
        return (self.run_dir / ".launched").exists()


def read_jobs(folder: Path) -> list[Job]:
    """The job files in order; one that does not parse is skipped (the host is not trusted)."""
    jobs = []
    for path in sorted(folder.glob("jobs/*.json")):
        data = wd.read_json(path)
        if data is None or not isinstance(data.get("run_dir"), str):
            continue
        jobs.append(Job(path.stem, str(data.get("name") or path.stem), Path(data["run_dir"])))
    return jobs


# ---------------------------------------------------------------------------------------------
# Starting a job on a slot


def slot_environment(gpu: str) -> dict[str, str]:
    """The environment a job starts with: pinned to its slot's GPU when the slot has one."""
    env = dict(os.environ)
    if gpu:
        # PCI bus order makes CUDA's numbering agree with nvidia-smi's indices.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def start(job: Job, gpu: str) -> subprocess.Popen[bytes] | None:
    """Start ``job``'s run.sh in a session of its own; None when someone else already did."""
    try:
        (job.run_dir / ".launched").mkdir()  # atomic: the first launcher wins
    except FileExistsError:
        return None
    except OSError as err:
        wd.log(f"cannot start {job.name}: {err}")
        return None
    return subprocess.Popen(
        ["bash", "run.sh"],
        cwd=job.run_dir,
        env=slot_environment(gpu),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# ---------------------------------------------------------------------------------------------
# The runner


@dataclass
class Runner:
    """The queue's state between looks: which job holds which slot."""

    folder: Path
    cfg: QueueConfig
    clock: wd.Clock
    holding: dict[str, int] = field(default_factory=dict)  # job key -> slot index
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A restarted runner: the slots of the jobs still running come from its last record.
        old = (wd.read_json(self.folder / "state.json") or {}).get("jobs") or {}
        for key, state in old.items():
            if isinstance(state, dict):
                self.states[str(key)] = dict(state)
                if state.get("state") == "running" and isinstance(state.get("slot"), int):
                    self.holding[str(key)] = int(state["slot"])

    def look(self) -> bool:
        """One look; True when the runner has nothing left to do."""
        self.children = [c for c in self.children if c.poll() is None]  # reap ended wrappers
        jobs = read_jobs(self.folder)
        now = self.clock.now()
        for job in jobs:
            if job.ended:
                self._ended(job)
        free = [i for i in range(len(self.cfg.slots)) if i not in self.holding.values()]
        for job in jobs:
            if not free:
                break
            if job.ended or job.key in self.holding:
                continue
            if job.launched:
                # Started before this runner knew of it (a restart): it holds some slot.
                self.holding[job.key] = free.pop(0)
                self._record(job, "running", now)
                continue
            slot = free.pop(0)
            child = start(job, self.cfg.slots[slot])
            if child is not None:
                self.children.append(child)
                wd.log(f"started {job.name} on slot {slot} ({self.cfg.slots[slot] or 'any GPU'})")
            self.holding[job.key] = slot
            self._record(job, "running", now, slot=slot)
        for job in jobs:
            if not job.ended and job.key not in self.holding:
                self._record(job, "waiting", now)
        drained = bool(jobs) and all(j.ended for j in jobs)
        self._write(now, drained)
        return drained and self._after_drained(jobs, now)

    def _ended(self, job: Job) -> None:
        slot = self.holding.pop(job.key, None)
        state = self.states.get(job.key, {})
        if state.get("state") == "ended":
            return
        code = (job.run_dir / "exit_code").read_text(errors="replace").strip()
        self.states[job.key] = {
            **state,
            "name": job.name,
            "run_dir": str(job.run_dir),
            "state": "ended",
            "exit_code": int(code) if code.lstrip("-").isdigit() else None,
            "ended_at": wd.read_number(job.run_dir / "ended_at"),
            "slot": slot if slot is not None else state.get("slot"),
        }
        if code == "withdrawn":  # taken back by a laptop before it started: run by another host
            self.states[job.key]["withdrawn"] = True
        wd.log(f"{job.name} ended (exit code {code})")

    def _record(self, job: Job, what: str, now: float, *, slot: int | None = None) -> None:
        state = self.states.setdefault(job.key, {})
        state.update(name=job.name, run_dir=str(job.run_dir), state=what)
        if slot is not None:
            state.update(slot=slot, gpu=self.cfg.slots[slot], started_at=now)

    def _write(self, now: float, drained: bool) -> None:
        wd.write_json(
            self.folder / "state.json",
            {"at": now, "pid": os.getpid(), "drained": drained, "jobs": self.states},
        )

    def _after_drained(self, jobs: list[Job], now: float) -> bool:
        """The queue has drained: finish when no laptop is around (the idle rule)."""
        paths = wd.Paths(self.folder)
        if paths.finish.exists() or self.cfg.on_finish in ("", "none"):
            return True
        if now - quiet_since(self.folder, jobs) < self.cfg.idle_minutes * 60:
            return False
        why = (
            f"no laptop finished the queue within {self.cfg.idle_minutes:g} min of its last job "
            "(--idle-minutes)"
        )
        decide(self.folder, self.cfg, "queue runner", why, self.clock)
        wd.act(paths, self.cfg.finish_config())
        return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def quiet_since(folder: Path, jobs: list[Job]) -> float:
    """The last time a laptop (or a job) did anything: a job ended, a receipt was left, the
    laptop's lease was touched, or a job was added."""
    moments = [_mtime(folder / "lease"), *(_mtime(folder / "jobs" / f"{j.key}.json") for j in jobs)]
    for job in jobs:
        moments.append(wd.read_number(job.run_dir / "ended_at") or 0.0)
        moments.append(wd.last_acknowledged(wd.Paths(job.run_dir)))
    return max(moments, default=0.0)


# ---------------------------------------------------------------------------------------------
# The finish of the whole queue


def safety_of(jobs: list[Job], clock: wd.Clock) -> Any:
    """The safety rule over every job: each one's checkpoints, after its own Hub push (if any)."""
    by_receipt: list[str] = []
    on_hub: list[str] = []
    missing: list[str] = []
    for job in jobs:
        paths = wd.Paths(job.run_dir)
        with contextlib.suppress(OSError, ValueError, TypeError):
            wd.ensure_pushed(paths, wd.Config.load(paths.config), clock)
        safety = wd.check_safety(paths)
        by_receipt += [f"{job.name}: {n}" for n in safety.by_receipt]
        on_hub += [f"{job.name}: {n}" for n in safety.on_hub]
        missing += [f"{job.name}: {n}" for n in safety.missing]
    return wd.Safety(tuple(by_receipt), tuple(on_hub), tuple(missing))


def decide(folder: Path, cfg: QueueConfig, by: str, why: str, clock: wd.Clock) -> dict[str, Any]:
    """Decide the queue's finish once (the first caller wins); recorded in watchdog/finish.json
    with the same fields as a run's, so the laptop reads both alike."""

    def assess() -> tuple[wd.Safety, dict[str, Any]]:
        jobs = read_jobs(folder)
        return safety_of(jobs, clock), {"jobs": len(jobs)}

    paths = wd.Paths(folder)
    return wd.decide_once(
        paths, cfg.on_finish, cfg.provider, by, why, clock, assess, what="queue finish"
    )


# ---------------------------------------------------------------------------------------------
# Entry points


@contextlib.contextmanager
def only_runner(folder: Path) -> Iterator[bool]:
    """True for the one runner of ``folder`` (an OS lock: a killed runner leaves none behind)."""
    import fcntl

    fd = os.open(folder / "runner.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def run(folder: Path, clock: wd.Clock | None = None) -> int:
    """Run the queue in ``folder`` until there is nothing left to do."""
    clock = clock or wd.SystemClock()
    cfg = QueueConfig.load(folder / "config.json")
    while True:
        with only_runner(folder) as mine:
            if not mine:
                wd.log("another runner holds this queue: nothing to do")
                return 0
            (folder / "runner.pid").write_text(f"{os.getpid()}\n")
            wd.log(f"running queue {cfg.queue_id} ({len(cfg.slots)} slot(s))")
            runner = Runner(folder, cfg, clock)
            while not runner.look():
                clock.sleep(cfg.poll_seconds)
        # The lock is released first, then the jobs are read once more: a job added meanwhile
        # is run by this runner, or by the one the laptop started (whichever holds the lock).
        if wd.Paths(folder).finish.exists() or all(j.ended for j in read_jobs(folder)):
            break
    wd.log("queue done")
    return 0


def finish(folder: Path, argv: list[str]) -> dict[str, Any]:
    """The laptop's queue FINISH: ``--decide`` (every job verified) or ``--act``."""
    cfg = QueueConfig.load(folder / "config.json")
    if "--act" in argv:
        acted: dict[str, Any] = wd.act(wd.Paths(folder), cfg.finish_config())
        return acted
    by = argv[argv.index("--by") + 1] if "--by" in argv[:-1] else "laptop"
    return decide(folder, cfg, by, "a laptop verified every job's checkpoints", wd.SystemClock())


def main(argv: list[str]) -> int:
    usage = "usage: queuerunner.py run QUEUE_DIR | finish QUEUE_DIR --decide|--act [--by WHO]"
    if len(argv) < 2 or argv[0] not in ("run", "finish"):
        print(usage, file=sys.stderr)
        return 2
    folder = Path(argv[1]).resolve()
    if argv[0] == "run":
        return run(folder)
    record = finish(folder, argv[2:])
    print("KW finish=" + json.dumps(record, ensure_ascii=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
