"""FOLLOW and FETCH: read the run's log from a byte offset, turn it into events, and pull each
checkpoint as soon as it is complete (sha256 computed on the host, checked here).

State that must survive a dropped connection (log offset, what was pulled) lives in the local
manifest, so ``kohyawrap attach`` continues exactly where the last follower stopped.
"""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kohyawrap.errors import HostError
from kohyawrap.hosts.base import Host, sh
from kohyawrap.launcher.report import Reporter
from kohyawrap.logparse import LogParser
from kohyawrap.models import CheckpointSaved, Event, Failure, Progress
from kohyawrap.runstore import RunDir

# Names we accept from the host: a rented machine is untrusted, so only plain file names.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +-]{0,200}$")
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt")
READ_LIMIT = 1 << 20


@dataclass
class RunStatus:
    """Where a run stands, as the follower last saw it."""

    log_offset: int = 0
    exit_code: int | None = None
    last_progress: Progress | None = None
    pulled: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # rel path -> last size seen (-1 = new)
    events_since_save: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # rel path -> why it was not kept


def _safe_local(directory: Path, name: str) -> Path:
    if not SAFE_NAME.match(name) or name in (".", ".."):
        raise HostError(f"refusing to pull a file with an unsafe name: {name!r}")
    return directory / name


def pull_file(
    host: Host,
    run: RunDir,
    remote: str,
    local_dir: Path,
    reporter: Reporter,
    status: RunStatus,
    key: str,
) -> bool:
    """Pull one file (verified) unless it was pulled already. Never overwrites a local file."""
    if key in status.pulled or key in status.rejected:
        return False
    digests = host.sha256([remote])
    if remote not in digests:
        return False
    digest = digests[remote]
    name = posixpath.basename(remote)
    target = _safe_local(local_dir, name)
    local_dir.mkdir(parents=True, exist_ok=True)
    if target.exists():
        from kohyawrap.hosts.transfer import file_sha256

        if file_sha256(target) != digest:
            # Keep what is there; the new content gets its own name.
            target = target.with_name(f"{target.stem}.{digest[:8]}{target.suffix}")
    if not target.exists():
        host.download(
            remote,
            target,
            expected_sha256=digest,
            progress=lambda d, t: reporter.transfer(name, d, t),
        )
        problem = _incomplete(target)
        if problem is not None:
            # sd-scripts writes checkpoints in place: a crash (full disk) can leave half a file.
            target.unlink()
            status.rejected[key] = problem
            reporter.info(f"not kept: {name} is incomplete ({problem})")
            return False
        reporter.pulled(name, target.stat().st_size)
    status.pulled[key] = {
        "sha256": digest,
        "bytes": target.stat().st_size,
        "path": str(target.relative_to(run.path)),
    }
    return True


def read_exit_code(host: Host, run_dir: str) -> int | None:
    """The code the run wrapper wrote when the training ended, or None while it runs."""
    exit_file = sh(posixpath.join(run_dir, "exit_code"))
    text = host.run(f"cat {exit_file} 2>/dev/null || true", timeout=60).stdout.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _incomplete(path: Path) -> str | None:
    """Why a pulled .safetensors file is unusable (truncated, bad header), or None when it is whole."""
    if path.suffix != ".safetensors":
        return None
    from kohyawrap.errors import KohyawrapError
    from kohyawrap.safetensors_header import read_header

    try:
        read_header(path)
    except KohyawrapError as err:
        return err.message
    return None


class Follower:
    """Follows one run on one host until it exits (or a budget stops it)."""

    def __init__(
        self,
        host: Host,
        run: RunDir,
        run_dir: str,
        reporter: Reporter,
        *,
        status: RunStatus,
        settings: dict[str, Any],
        price_per_hour: float,
        started_at: float,
        poll_seconds: float = 2.0,
        budget_check: Callable[[float], None] | None = None,
        reconnect_tries: int = 5,
    ) -> None:
        self.host = host
        self.run = run
        self.run_dir = run_dir
        self.reporter = reporter
        self.status = status
        self.settings = settings
        self.price = price_per_hour
        self.started_at = started_at
        self.poll = poll_seconds
        self.budget_check = budget_check
        self.reconnect_tries = reconnect_tries
        self._attempts = 0
        self.parser = LogParser(settings)
        self.failure: Failure | None = None
        self.tail = bytearray()

    # -- money ---------------------------------------------------------------------------
    def dollars_so_far(self) -> float:
        return self.price * (time.time() - self.started_at) / 3600

    def dollars_projected(self) -> float | None:
        p = self.status.last_progress
        if p is None or not p.sec_per_it or p.total <= 0:
            return None
        remaining = (p.total - p.step) * p.sec_per_it
        return self.dollars_so_far() + self.price * remaining / 3600

    # -- one poll ------------------------------------------------------------------------
    def _read_log(self) -> list[Event]:
        events: list[Event] = []
        log = posixpath.join(self.run_dir, "run.log")
        while True:
            chunk = self.host.read_from(log, self.status.log_offset, READ_LIMIT)
            if not chunk:
                return events
            self.status.log_offset += len(chunk)
            self.run.append_log(chunk)
            self.tail = (self.tail + chunk)[-64_000:]
            events.extend(self.parser.feed(chunk))
            if len(chunk) < READ_LIMIT:
                return events

    def _note(self, event: Event) -> None:
        if isinstance(event, Progress):
            self.status.last_progress = event
        if isinstance(event, Failure):
            self.failure = event
        for key in self.status.events_since_save:
            self.status.events_since_save[key] += 1
        if isinstance(event, CheckpointSaved):
            rel = self._relative(event.path)
            if rel is not None:
                self.status.pending.setdefault(rel, -1)
                self.status.events_since_save[rel] = 0

    def _relative(self, path: str) -> str | None:
        rel = posixpath.normpath(
            path if not path.startswith(self.run_dir) else path[len(self.run_dir) :].lstrip("/")
        )
        if rel.startswith("..") or posixpath.isabs(rel):
            return None
        return rel

    def _pull_ready(self, finished: bool) -> None:
        for rel, last_size in list(self.status.pending.items()):
            remote = posixpath.join(self.run_dir, rel)
            st = self.host.stat(remote)
            if st is None:
                continue
            later = self.status.events_since_save.get(rel, 0) > 0
            if st.size > 0 and st.size == last_size and (later or finished):
                pull_file(
                    self.host,
                    self.run,
                    remote,
                    self.run.checkpoints,
                    self.reporter,
                    self.status,
                    rel,
                )
                del self.status.pending[rel]
                self.status.events_since_save.pop(rel, None)
            else:
                self.status.pending[rel] = st.size

    def _exit_code(self) -> int | None:
        return read_exit_code(self.host, self.run_dir)

    def _alive(self) -> bool:
        pid_file = sh(posixpath.join(self.run_dir, "run.pid"))
        return self.host.run(f'kill -0 "$(cat {pid_file})" 2>/dev/null', check=False, timeout=60).ok

    def poll_once(self) -> bool:
        """Read new output, pull what is ready; True once the run has exited."""
        exit_code = self._exit_code()
        for event in self._read_log():
            self._note(event)
            self.reporter.event(event, self.dollars_so_far(), self.dollars_projected())
        finished = exit_code is not None
        if not finished and self.failure is not None and self.failure.kind == "nan":
            # The loss is NaN: every further step is wasted money. Stop now, keep what was saved.
            from kohyawrap.launcher.run import stop_job

            exit_code = stop_job(self.host, self.run_dir)
            finished = exit_code is not None
        self._pull_ready(finished)
        if finished:
            self.status.exit_code = exit_code
            for event in self.parser.close():
                self.reporter.event(event, self.dollars_so_far(), self.dollars_projected())
        elif not self._alive() and self._exit_code() is None:
            raise HostError(
                "the training process is gone but left no exit code (host restarted or killed?)",
                evidence=bytes(self.tail).decode("utf-8", "replace").splitlines()[-10:],
                hint="check the host; `kohyawrap pull RUN` fetches what was saved",
            )
        return finished

    def run_until_exit(self, save: Callable[[], None]) -> int:
        """Poll until the run exits; ``save`` persists the status after every poll."""
        while True:
            try:
                done = self.poll_once()
            except HostError as err:
                if not self._reconnect(err):
                    raise
                continue
            save()
            if done:
                # A last pass: files whose size we saw only once are stable now.
                for _ in range(3):
                    if not self.status.pending:
                        break
                    self._pull_ready(True)
                    save()
                assert self.status.exit_code is not None
                return self.status.exit_code
            if self.budget_check is not None:
                self.budget_check(self.dollars_so_far())
            time.sleep(self.poll)

    def _reconnect(self, err: HostError) -> bool:
        """After a dropped connection, reconnect with backoff (1, 2, 4, ... 30 s); False if not."""
        reconnect = getattr(self.host, "reconnect", None)
        if reconnect is None:
            return False
        while self.reconnect_tries > 0:
            self.reconnect_tries -= 1
            self._attempts += 1
            wait = min(30.0, 2.0 ** (self._attempts - 1))
            self.reporter.info(f"connection lost ({err.message}); reconnecting in {wait:.0f} s")
            time.sleep(wait)
            try:
                reconnect()
            except HostError as again:
                err = again
                continue
            self.reporter.info("reconnected; following from where the log was left")
            return True
        return False

    @property
    def log_tail(self) -> str:
        return bytes(self.tail).decode("utf-8", "replace")

    def tail_lines(self, count: int = 30) -> list[str]:
        """The last lines as a terminal would show them (progress bars at their last frame)."""
        from kohyawrap.logparse import readable_lines

        return readable_lines(bytes(self.tail))[-count:]
