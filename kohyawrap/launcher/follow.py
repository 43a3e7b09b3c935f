"""FOLLOW: read the job's log from a byte offset, turn it into events, pull each checkpoint as
soon as it is complete, and stop the job when a limit is passed or the loss is NaN.

What must survive a dropped connection (log offset, announced and pending checkpoints, pulled
files) is handed to ``save`` after every poll; ``attach`` continues exactly from there.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from kohyawrap.clock import Clock
from kohyawrap.errors import ConnectionLost, HostError
from kohyawrap.hosts.base import Host
from kohyawrap.launcher import job
from kohyawrap.launcher.budget import Budget
from kohyawrap.launcher.fetch import Puller, is_checkpoint
from kohyawrap.launcher.manifest import FollowState, StopReason
from kohyawrap.launcher.reconnect import Reconnector
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.launcher.samples import SampleWatcher
from kohyawrap.logparse import LogParser, readable_lines
from kohyawrap.models import CheckpointSaved, Event, Failure, Finding, Progress

READ_LIMIT = 1 << 20
TAIL_BYTES = 64_000
RESTOP_SECONDS = 60.0  # ask again if a stopped job has not ended after this long


class FollowHook(Protocol):
    """Something that watches the job beside the log (GPU use, training states to pull)."""

    def after_poll(self, follower: Follower, events: Sequence[Event], ended: bool) -> None:
        """Called after each poll with its events; may raise ConnectionLost like the poll."""


class Follower:
    """Follows one job on one host until it exits."""

    def __init__(
        self,
        *,
        host: Host,
        run: RunDir,
        run_dir: str,
        reporter: Reporter,
        clock: Clock,
        settings: dict[str, object],
        budget: Budget,
        puller: Puller,
        reconnector: Reconnector,
        state: FollowState,
        poll_seconds: float = 2.0,
        step_offset: int = 0,
        hooks: Sequence[FollowHook] = (),
        samples: SampleWatcher | None = None,
    ) -> None:
        self.host = host
        self.run = run
        self.run_dir = run_dir
        self.reporter = reporter
        self.clock = clock
        self.budget = budget
        self.puller = puller
        self.reconnector = reconnector
        self.poll = poll_seconds
        self.samples = samples  # pulls sample images as they appear (None: not while following)
        self.log_offset = state.log_offset
        self.last_step, self.total_steps, self.last_loss = (
            state.last_step,
            state.total_steps,
            state.last_loss,
        )
        self.announced = list(state.announced)
        self.pending = dict(state.pending)
        self.since_saved: dict[str, int] = {}  # rel -> events seen since its save was announced
        self.parser = LogParser(settings)
        self.failure: Failure | None = None
        self.last_progress: Progress | None = None
        self.tail = bytearray()
        self.stop_reason: StopReason | None = None
        self.stop_message = ""
        self.stop_asked_at: float | None = None  # monotonic, when the stop was last asked
        # A resumed leg: sd-scripts counts its steps from 0 again; shown and kept as the run's.
        self.step_offset = step_offset
        self.hooks = tuple(hooks)
        self.sec_per_step = state.sec_per_step
        self.measured = dict(state.measured)
        self.findings = list(state.findings)

    def state(self) -> FollowState:
        """What to save: enough to continue from here after a drop."""
        p = self.last_progress
        return FollowState(
            log_offset=self.log_offset,
            announced=tuple(self.announced),
            pending=dict(self.pending),
            rejected=dict(self.puller.rejected),
            last_step=p.step if p else self.last_step,
            total_steps=p.total if p else self.total_steps,
            last_loss=p.avr_loss if p and p.avr_loss is not None else self.last_loss,
            sec_per_step=p.sec_per_it if p and p.sec_per_it else self.sec_per_step,
            measured=dict(self.measured),
            findings=tuple(self.findings),
        )

    def note_finding(self, finding: Finding) -> None:
        """Record (and show, once) something noticed about the run."""
        if any(f.code == finding.code for f in self.findings):
            return
        self.findings.append(finding)
        self.reporter.info(finding.message + (f": {finding.hint}" if finding.hint else ""))

    # -- money -------------------------------------------------------------------------------
    def dollars_projected(self, spent: float) -> float | None:
        p = self.last_progress
        if p is None or not p.sec_per_it or p.total <= 0:
            return None
        remaining = (p.total - p.step) * p.sec_per_it
        return spent + self.budget.price_per_hour * remaining / 3600

    # -- reading the log ---------------------------------------------------------------------
    def _read_log(self) -> list[Event]:
        events: list[Event] = []
        log = posixpath.join(self.run_dir, "run.log")
        while True:
            chunk = self.host.read_from(log, self.log_offset, READ_LIMIT)
            if not chunk:
                return events
            self.log_offset += len(chunk)
            self.run.append_log(chunk)
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]
            events.extend(self.parser.feed(chunk))
            if len(chunk) < READ_LIMIT:
                return events

    def _note(self, event: Event) -> None:
        if isinstance(event, Progress):
            self.last_progress = event
        if isinstance(event, Failure):
            self.failure = event
        for seen in self.since_saved:
            self.since_saved[seen] += 1
        if isinstance(event, CheckpointSaved):
            rel = self._relative(event.path)
            if rel is not None and is_checkpoint(rel):
                if rel not in self.announced:
                    self.announced.append(rel)
                self.pending.setdefault(rel, -1)
                self.since_saved[rel] = 0

    def _relative(self, path: str) -> str | None:
        inside = path[len(self.run_dir) :].lstrip("/") if path.startswith(self.run_dir) else path
        rel = posixpath.normpath(inside)
        if rel.startswith("..") or posixpath.isabs(rel):
            return None
        return rel

    def _report(self, event: Event) -> None:
        spent = self.budget.spent(self.clock.now())
        self.reporter.event(event, spent, self.dollars_projected(spent))

    # -- pulling as checkpoints complete -----------------------------------------------------
    def pull_ready(self, finished: bool) -> None:
        """Pull each announced checkpoint whose size is stable and whose save is over."""
        for rel, last_size in list(self.pending.items()):
            st = self.host.stat(posixpath.join(self.run_dir, rel))
            if st is None:
                continue
            later = self.since_saved.get(rel, 0) > 0
            if st.size > 0 and st.size == last_size and (later or finished):
                self.puller.pull(rel, self.run.checkpoints)
                del self.pending[rel]
                self.since_saved.pop(rel, None)
            else:
                self.pending[rel] = st.size

    # -- stopping ----------------------------------------------------------------------------
    def _ask_stop(self, reason: StopReason, message: str) -> None:
        now = self.clock.monotonic()
        if self.stop_reason is None:
            self.stop_reason, self.stop_message = reason, message
            self.reporter.info(f"stopping the training: {message}")
        elif self.stop_asked_at is not None and now - self.stop_asked_at < RESTOP_SECONDS:
            return
        self.stop_asked_at = now
        job.request_stop(self.host, self.run_dir)

    def _limits(self) -> None:
        if self.failure is not None and self.failure.kind == "nan":
            # Every further step is wasted money: stop now, keep what was saved.
            self._ask_stop(StopReason.NAN, "the loss is NaN")
            return
        over = self.budget.over(self.clock.now())
        if over is not None:
            self._ask_stop(*over)

    # -- the loop ----------------------------------------------------------------------------
    def poll_once(self) -> job.JobExit | None:
        """Read new output, pull what is ready, act on limits; the exit once the job ended."""
        ended = job.exit_status(self.host, self.run_dir)
        events = [self._shifted(e) for e in self._read_log()]
        for event in events:
            self._note(event)
            self._report(event)
        self.pull_ready(ended is not None)
        for hook in self.hooks:
            hook.after_poll(self, events, ended is not None)
        if self.samples is not None:
            self.samples.poll()
        if ended is not None:
            for event in map(self._shifted, self.parser.close()):
                self._note(event)
                self._report(event)
            return ended
        self._limits()
        if (
            not job.alive(self.host, self.run_dir)
            and job.exit_status(self.host, self.run_dir) is None
        ):
            raise HostError(
                "the training process is gone but left no exit code (host restarted or killed?)",
                evidence=self.tail_lines(10),
                hint="check the host; `kohyawrap pull RUN` fetches what was saved",
            )
        return None

    def _shifted(self, event: Event) -> Event:
        if isinstance(event, Progress) and self.step_offset:
            return replace(event, step=event.step + self.step_offset)
        return event

    def run_until_exit(self, save: Callable[[], None]) -> job.JobExit:
        """Poll until the job exits; ``save`` persists the state after every poll."""
        while True:
            try:
                ended = self.poll_once()
            except ConnectionLost as lost:
                save()
                self.reconnector.recover(lost, "following from where the log was left")
                continue
            save()
            if ended is not None:
                self._last_pass(save)
                return ended
            self.clock.sleep(self.poll)

    def _last_pass(self, save: Callable[[], None]) -> None:
        """Files whose size was seen only once are stable now that the job has ended."""
        for _ in range(3):
            if not self.pending:
                return
            self.reconnector.call(lambda: self.pull_ready(True), "pulling the last checkpoints")
            save()

    # -- evidence ----------------------------------------------------------------------------
    @property
    def log_tail(self) -> str:
        return bytes(self.tail).decode("utf-8", "replace")

    def tail_lines(self, count: int = 30) -> list[str]:
        """The last lines as a terminal would show them (progress bars at their last frame)."""
        return readable_lines(bytes(self.tail))[-count:]
