"""Riding out dropped connections: reconnect with back-off (1, 2, 4 ... 30 s).

The budget counts *consecutive* failed attempts and starts afresh after every successful
reconnect, so six brief drops over a long run are six recoveries, not the end of the run. Only a
lost connection is retried (:class:`~kohyawrap.errors.ConnectionLost`); a command that failed, or
a file the host should not have, is not a network problem and is never retried.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from kohyawrap.clock import Clock
from kohyawrap.errors import ConnectionLost, HostError
from kohyawrap.hosts.base import Host
from kohyawrap.launcher.report import Reporter

T = TypeVar("T")
MAX_WAIT = 30.0


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (1-based)."""
    return min(MAX_WAIT, 2.0 ** (attempt - 1))


class Reconnector:
    """Reopens one host after drops, up to ``tries`` failed attempts in a row."""

    def __init__(self, host: Host, reporter: Reporter, clock: Clock, tries: int) -> None:
        self.host = host
        self.reporter = reporter
        self.clock = clock
        self.tries = tries
        self.recoveries = 0  # successful reconnects so far (for the record and for tests)
        self._lock = threading.Lock()

    def recover(self, lost: HostError, doing: str) -> None:
        """Reconnect after ``lost``; raise the last error when ``tries`` attempts failed."""
        err = lost
        for attempt in range(1, self.tries + 1):
            wait = backoff(attempt)
            self.reporter.info(
                f"connection lost ({err.message}); reconnecting in {wait:.0f} s "
                f"(attempt {attempt} of {self.tries})"
            )
            self.clock.sleep(wait)
            try:
                self.host.reconnect()
            except HostError as again:
                err = again
                continue
            self.recoveries += 1
            self.reporter.info(f"reconnected; {doing}")
            return
        raise err

    def call(self, action: Callable[[], T], doing: str) -> T:
        """Run ``action``; after a drop, reconnect and run it again (it must be idempotent).

        One call rides out at most ``tries`` drops, so a step that drops the connection every
        time cannot loop for ever.
        """
        drops = 0
        while True:
            seen = self.recoveries
            try:
                return action()
            except ConnectionLost as lost:
                drops += 1
                if drops > self.tries:
                    raise
                # Several steps share the host (PREPARE): one drop fails them all, and only the
                # first to get here reconnects; the others find it done, say so and try again.
                with self._lock:
                    if self.recoveries == seen:
                        self.recover(lost, doing)
                    else:
                        self.reporter.info(f"reconnected; {doing}")
