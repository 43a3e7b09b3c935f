"""The detached training job on the host: launch it, ask whether it lives, read how it ended,
stop it. The job is ``run.sh`` (templates/remote/run.sh.j2) started in its own session, so it
survives a dropped connection; it writes these files in the run folder:

- ``run.pid``: the wrapper's pid; ``train.pid``: the trainer's process group
- ``started_at`` / ``ended_at``: the host's clock (epoch seconds) when it began and ended
- ``exit_code``: written whatever happens (success, failure, a stop)
- ``deadline``: present when the host's own ``--max-hours`` timer stopped it
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from kohyawrap.clock import Clock
from kohyawrap.errors import HostError
from kohyawrap.hosts.base import Host, sh

PID_FILE = "run.pid"
EXIT_FILE = "exit_code"
DEADLINE_FILE = "deadline"
STOP_FILE = "stop_requested"


@dataclass(frozen=True)
class JobExit:
    """How the job ended: its exit code and how long it ran by the host's own clock."""

    code: int
    seconds: float | None  # ended_at - started_at on the host (no clock skew involved)
    deadline: bool  # the host's --max-hours timer stopped it
    stop_requested: bool  # someone asked it to stop (kohyawrap stop, a budget or a NaN)


def launch(host: Host, run_dir: str, clock: Clock, *, wait_seconds: float = 20.0) -> int:
    """Start the run wrapper detached (own session, no terminal) and return its pid.

    Idempotent: a job that was already started (a launch whose answer a dropped connection
    swallowed) is not started twice; its pid is returned.
    """
    pid_file = posixpath.join(run_dir, PID_FILE)
    # mkdir is atomic: only the first launch gets the ".launched" folder and starts the job.
    host.run(
        f"cd {sh(run_dir)} && if mkdir .launched 2>/dev/null; "
        "then setsid -f nohup bash run.sh >/dev/null 2>&1 </dev/null; fi"
    )
    deadline = clock.monotonic() + wait_seconds
    while clock.monotonic() < deadline:
        text = host.run(f"cat {sh(pid_file)} 2>/dev/null || true").stdout.strip()
        if text.isdigit():
            return int(text)
        clock.sleep(0.1)
    raise HostError(f"the run did not start within {wait_seconds:.0f} s (no {pid_file})")


_READ_EXIT = """cd {dir} 2>/dev/null || exit 0
[ -f exit_code ] || exit 0
printf 'code=%s\\n' "$(cat exit_code)"
printf 'started=%s\\n' "$(cat started_at 2>/dev/null)"
printf 'ended=%s\\n' "$(cat ended_at 2>/dev/null)"
[ -f deadline ] && echo deadline=1
[ -f stop_requested ] && echo stop=1
true
"""


def exit_status(host: Host, run_dir: str) -> JobExit | None:
    """How the job ended, or None while it runs (one round trip)."""
    out = host.run(_READ_EXIT.format(dir=sh(run_dir)), timeout=60).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    code = values.get("code", "").strip()
    if not code.lstrip("-").isdigit():
        return None
    return JobExit(
        code=int(code),
        seconds=_duration(values.get("started", ""), values.get("ended", "")),
        deadline="deadline" in values,
        stop_requested="stop" in values,
    )


def _duration(started: str, ended: str) -> float | None:
    try:
        return max(0.0, float(ended) - float(started))
    except ValueError:
        return None


def alive(host: Host, run_dir: str) -> bool:
    """The wrapper process still exists (a zombie does not count: a container's init may be
    slow to reap a killed job)."""
    pid_file = sh(posixpath.join(run_dir, PID_FILE))
    command = (
        f'p="$(cat {pid_file})" && kill -0 "$p" 2>/dev/null && '
        """! grep -q '^[0-9]* (.*) Z' "/proc/$p/stat" 2>/dev/null"""
    )
    return host.run(command, check=False, timeout=60).ok


def request_stop(host: Host, run_dir: str) -> None:
    """Ask the wrapper to stop the trainer (SIGTERM to its process group); returns at once."""
    folder = sh(run_dir)
    host.run(
        f'cd {folder} && touch {STOP_FILE} && kill -TERM "$(cat {PID_FILE})" 2>/dev/null || true',
        check=False,
        timeout=60,
    )


def stop(host: Host, run_dir: str, clock: Clock, *, wait_seconds: float = 120.0) -> JobExit | None:
    """Stop the job and wait for its exit code (None if it did not end in ``wait_seconds``)."""
    request_stop(host, run_dir)
    deadline = clock.monotonic() + wait_seconds
    while clock.monotonic() < deadline:
        ended = exit_status(host, run_dir)
        if ended is not None:
            return ended
        clock.sleep(0.5)
    return None
