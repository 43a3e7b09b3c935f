"""What the launcher tells the person watching. The console implements it; tests can too."""

from __future__ import annotations

from typing import Protocol

from kohyawrap.models import Event


class Reporter(Protocol):
    """Callbacks for the stages of a run. All of them must be cheap and never raise."""

    def stage(self, name: str, detail: str = "") -> None:
        """A stage starts: connect, setup, model, upload, train, follow, pull, finish."""

    def info(self, message: str) -> None:
        """A line worth showing (setup decisions, skipped steps)."""

    def transfer(self, label: str, done: int, total: int) -> None:
        """Bytes moved so far in an upload or download."""

    def event(self, event: Event, dollars_so_far: float, dollars_projected: float | None) -> None:
        """A parsed training event, with the money spent so far and projected to the end."""

    def pulled(self, name: str, size: int) -> None:
        """A checkpoint (or log) arrived locally and its sha256 matched."""


class SilentReporter:
    """A reporter that shows nothing (library use)."""

    def stage(self, name: str, detail: str = "") -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def transfer(self, label: str, done: int, total: int) -> None:
        pass

    def event(self, event: Event, dollars_so_far: float, dollars_projected: float | None) -> None:
        pass

    def pulled(self, name: str, size: int) -> None:
        pass
