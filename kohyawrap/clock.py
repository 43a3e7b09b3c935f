"""Time as an input. Everything that reads the time (budgets, polling, cost, timings, deadlines)
takes a :class:`Clock`, so tests run hours of a run in milliseconds on a fake one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time, a monotonic counter, and a way to wait."""

    def now(self) -> float:
        """Seconds since the epoch (for records: launched_at, finished_at)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and deadlines)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class Timings:
    """Seconds spent per phase (connect, setup, model, upload, train, pull), for the manifest."""

    def __init__(self, clock: Clock, start: dict[str, float] | None = None) -> None:
        self.clock = clock
        self.phases: dict[str, float] = dict(start or {})
        self._mark = clock.monotonic()

    def lap(self, phase: str) -> None:
        """Charge the time since the last lap to ``phase``."""
        now = self.clock.monotonic()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._mark, 3)
        self._mark = now

    def charge(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` measured elsewhere to ``phase`` (steps that ran at the same time)."""
        self.phases[phase] = round(self.phases.get(phase, 0.0) + seconds, 3)

    def restart(self) -> None:
        """Start the next lap now (time before it is charged to no phase)."""
        self._mark = self.clock.monotonic()
