"""A queue's folder on a host, seen from the laptop: install the runner, hand it jobs, keep it
company (the lease), read what it did, and ask it to finish.

The runner itself (``kohyawrap/hostside/queuerunner.py``) runs on the host and needs no laptop.
Its folder, ``<work>/queues/<queue-id>-h<N>/``, holds ``queuerunner.py`` and ``watchdog.py`` (it
uses the watchdog's safety rule; no file there is named like a standard module, which the other
would import instead), ``config.json``, one ``jobs/<key>.json`` per job, and what the runner
writes: ``state.json``, ``log``, ``watchdog/finish.json``. The host is untrusted: what it writes
is read bounded, and a file that does not parse is ignored, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kohyawrap.errors import HostError, KohyawrapError
from kohyawrap.hosts.base import Host, sh
from kohyawrap.launcher import watchdog
from kohyawrap.launcher.finish import ask_host
from kohyawrap.launcher.manifest import FinishRecord
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.scripts import parse_kv

RUNNER = "queuerunner.py"
_SOURCE = Path(__file__).resolve().parents[1] / "hostside" / "queuerunner.py"
_MAX_STATE = 1 << 20  # bytes of the runner's files read back
GOES_AWAY = ("stop", "destroy", "shutdown")


def folder_of(work: str, queue_id: str, host_index: int) -> str:
    """The queue's folder on host ``host_index`` (hosts of a pool may share a file system)."""
    return posixpath.join(work, "queues", f"{queue_id}-h{host_index + 1}")


def config_of(
    queue_id: str, slots: tuple[str, ...], on_finish: str, idle_minutes: float, provider: str,
    poll_seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """The runner's ``config.json``."""
    return {
        "queue_id": queue_id,
        "slots": list(slots),
        "on_finish": on_finish,
        "idle_minutes": idle_minutes,
        "provider": provider,
        "poll_seconds": min(poll_seconds, watchdog.HOST_POLL_LIMIT),
    }


def install(host: Host, folder: str, config: dict[str, Any]) -> None:
    """The runner, the watchdog it uses, and its config, in one round trip."""
    from kohyawrap.launcher.setup import put_files

    text = json.dumps(config, indent=1, sort_keys=True) + "\n"
    put_files(
        host,
        folder,
        {
            RUNNER: (_SOURCE.read_bytes(), 0o644),
            watchdog.SCRIPT: (watchdog.script_text(), 0o644),
            "config.json": (text.encode(), 0o644),
        },
        mkdirs=("jobs",),
    )


def add_job(host: Host, folder: str, key: str, name: str, run_dir: str) -> None:
    """Hand a prepared job (its run folder holds run.sh) to the runner."""
    data = {"name": name, "run_dir": run_dir}
    text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
    # Written beside, then renamed: the runner never reads half a job file.
    path = posixpath.join(folder, "jobs", f"{key}.json")
    host.put_bytes(text.encode(), path + ".tmp")
    host.run(f"mv -f {sh(path + '.tmp')} {sh(path)}")


def ensure_runner(host: Host, folder: str, python: str) -> None:
    """Start the runner detached unless one runs (a second one exits at once: an OS lock)."""
    host.run(
        f"cd {sh(folder)} && setsid -f nohup {sh(python, RUNNER, 'run', '.')} >>log 2>&1 </dev/null"
    )


def touch_lease(host: Host, folder: str) -> None:
    """Tell the runner a laptop is here (it finishes by itself only after the idle time)."""
    host.run(f"touch {sh(posixpath.join(folder, 'lease'))}", timeout=60)


@contextmanager
def lease(host: Host, folder: str, every: float) -> Iterator[None]:
    """Touch the lease every ``every`` seconds while the block runs (a failed touch is simply
    tried again: the follower deals with a lost connection)."""
    stop = threading.Event()

    def keep() -> None:
        while not stop.is_set():
            with contextlib.suppress(KohyawrapError):
                touch_lease(host, folder)
            stop.wait(every)

    thread = threading.Thread(target=keep, name="queue-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# What the runner did


@dataclass(frozen=True)
class JobOnHost:
    """One job as the runner and the job's watchdog see it now."""

    key: str
    state: str  # waiting | running | ended
    slot: int | None = None
    gpu: str = ""
    started_at: float | None = None  # host clock
    exit_code: int | None = None
    step: int | None = None  # the watchdog's last look
    total: int | None = None
    spent: float | None = None


@dataclass(frozen=True)
class HostQueueState:
    """The queue's folder as read in one round trip."""

    jobs: dict[str, JobOnHost] = field(default_factory=dict)
    drained: bool = False
    runner_alive: bool = False
    finish: FinishRecord | None = None
    now: float = 0.0  # the host's clock when read


_READ_STATE = r"""
import json, os, sys, time
folder = sys.argv[1]
def load(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.loads(fh.read(200000))
    except (OSError, ValueError):
        return None
state = load(os.path.join(folder, "state.json")) or {}
alive = False
try:
    pid = int(open(os.path.join(folder, "runner.pid")).read().strip())
    os.kill(pid, 0)
    with open("/proc/%d/stat" % pid) as fh:
        alive = ") Z" not in fh.read()
except (OSError, ValueError):
    pass
jobs = state.get("jobs") if isinstance(state.get("jobs"), dict) else {}
for key, job in jobs.items():
    if isinstance(job, dict) and isinstance(job.get("run_dir"), str):
        job["watch"] = load(os.path.join(job["run_dir"], "watchdog", "state.json"))
out = {"jobs": jobs, "drained": bool(state.get("drained")), "alive": alive,
       "finish": load(os.path.join(folder, "watchdog", "finish.json")), "now": time.time()}
print(json.dumps(out))
"""


def read_state(host: Host, folder: str, python: str) -> HostQueueState:
    """The runner's state, each running job's steps and dollars, and the finish if decided."""
    out = host.run(sh(python, "-c", _READ_STATE, folder), check=False, timeout=60).stdout
    try:
        data = json.loads(out[:_MAX_STATE])
    except (ValueError, RecursionError):
        return HostQueueState()
    if not isinstance(data, dict):
        return HostQueueState()
    jobs = {}
    for key, raw in (data.get("jobs") or {}).items():
        parsed = _job_on_host(str(key), raw)
        if parsed is not None:
            jobs[parsed.key] = parsed
    return HostQueueState(
        jobs=jobs,
        drained=bool(data.get("drained")),
        runner_alive=bool(data.get("alive")),
        finish=watchdog.finish_record(data.get("finish")),
        now=_number(data.get("now")) or 0.0,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _job_on_host(key: str, raw: Any) -> JobOnHost | None:
    if not isinstance(raw, dict) or raw.get("state") not in ("waiting", "running", "ended"):
        return None
    found = raw.get("watch")
    watch: dict[str, Any] = found if isinstance(found, dict) else {}
    return JobOnHost(
        key=key,
        state=str(raw["state"]),
        slot=_int(raw.get("slot")),
        gpu=str(raw.get("gpu") or "")[:200],
        started_at=_number(raw.get("started_at")),
        exit_code=_int(raw.get("exit_code")),
        step=_int(watch.get("step")),
        total=_int(watch.get("total")),
        spent=_number(watch.get("spent")),
    )


_STARTED = """cd {dir} 2>/dev/null || exit 0
[ -f run.pid ] || exit 0
printf 'KW pid=%s\\n' "$(cat run.pid)"
printf 'KW started=%s\\n' "$(cat started_at 2>/dev/null)"
printf 'KW now=%s\\n' "$(date +%s)"
"""


# A waiting job taken back from the runner: ``.launched`` made first (the runner's own atomic
# claim, so the job is either started there or withdrawn, never both), then an ``exit_code`` the
# runner reads as "ended" (it frees nothing: the job never held a slot). Its token goes too.
_WITHDRAW = """cd {dir} || exit 0
mkdir .launched 2>/dev/null || exit 0
rm -f watchdog/hf_token
printf 'withdrawn\\n' > exit_code.tmp && mv -f exit_code.tmp exit_code
printf 'KW withdrawn=yes\\n'
"""


def withdraw_job(host: Host, run_dir: str) -> bool:
    """Take a job the runner has not started back from it; False when it had started."""
    return (
        parse_kv(host.run(_WITHDRAW.format(dir=sh(run_dir)), timeout=60).stdout).get("withdrawn")
        == "yes"
    )


def job_started(host: Host, run_dir: str) -> tuple[int, float] | None:
    """The job's wrapper pid and how many seconds ago it started (host clock), once it has."""
    values = parse_kv(host.run(_STARTED.format(dir=sh(run_dir)), timeout=60).stdout)
    pid, started, now = values.get("pid", ""), values.get("started", ""), values.get("now", "")
    if not pid.isdigit():
        return None
    try:
        ago = max(0.0, float(now) - float(started))
    except ValueError:
        ago = 0.0
    return int(pid), ago


# ---------------------------------------------------------------------------------------------
# The queue's finish, asked for by the laptop


def _ask(host: Host, folder: str, python: str, *flags: str) -> FinishRecord:
    return ask_host(host, folder, python, RUNNER, "the queue runner", *flags)


def decide_finish(host: Host, folder: str, python: str) -> FinishRecord:
    """Ask the runner what ``--on-finish`` may do now, over every job (decided once)."""
    return _ask(host, folder, python, "--decide", "--by", "laptop")


def act_finish(
    host: Host, folder: str, python: str, record: FinishRecord, reporter: Reporter
) -> str:
    """Carry out the decision; the result ("ok", "failed: ...")."""
    if record.action in ("", "none") or record.result != "pending":
        return record.result
    reporter.stage("finish", f"{record.action} (the queue has drained)")
    try:
        return _ask(host, folder, python, "--act").result
    except HostError as err:
        if record.action not in GOES_AWAY:
            raise
        reporter.info(f"the host went away as asked ({err.message})")
        return f"ok (the connection closed: {err.message})"[:500]
