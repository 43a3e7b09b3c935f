"""Running independent set-up steps at the same time (the PREPARE stage).

Installing sd-scripts, fetching the base model and uploading the dataset need nothing from each
other until training starts, and each waits on something different: the package index, the
model's server, the laptop's uplink. :func:`overlap` runs them on threads over the one host
connection (each command is its own SSH channel), tags what each one reports so the lines stay
readable, times each one, and once one fails stops the others at their next progress report
(an install line, a transfer update) so the error is not held up by a long upload. Every step
is idempotent, so a step stopped half way is simply done again by the next run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from kohyawrap.clock import Clock
from kohyawrap.launcher.report import Reporter
from kohyawrap.models import Event


class Cancelled(Exception):
    """Another step failed: this one stops at its next progress report."""


class TaggedReporter:
    """A Reporter that prefixes a step's lines with its name and stops it when cancelled."""

    def __init__(self, inner: Reporter, tag: str, cancel: threading.Event) -> None:
        self.inner = inner
        self.tag = tag
        self.cancel = cancel

    def _check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(self.tag)

    def stage(self, name: str, detail: str = "") -> None:
        self._check()
        self.inner.stage(name, detail)

    def info(self, message: str) -> None:
        self._check()
        self.inner.info(f"{self.tag}: {message}")

    def transfer(self, label: str, done: int, total: int) -> None:
        self._check()
        self.inner.transfer(label, done, total)

    def event(self, event: Event, dollars_so_far: float, dollars_projected: float | None) -> None:
        self.inner.event(event, dollars_so_far, dollars_projected)

    def pulled(self, name: str, size: int) -> None:
        self.inner.pulled(name, size)


def overlap(
    steps: Mapping[str, Callable[[TaggedReporter], None]],
    reporter: Reporter,
    clock: Clock,
) -> dict[str, float]:
    """Run ``steps`` at once; the seconds each took. The first failure (in ``steps`` order when
    several failed) is raised after every step has ended."""
    cancel = threading.Event()
    seconds: dict[str, float] = {}
    errors: dict[str, BaseException] = {}

    def run(name: str, step: Callable[[TaggedReporter], None]) -> None:
        start = clock.monotonic()
        try:
            step(TaggedReporter(reporter, name, cancel))
        except Cancelled:
            pass
        except BaseException as err:  # handed to the caller's thread below
            errors[name] = err
            cancel.set()
        finally:
            seconds[name] = round(clock.monotonic() - start, 3)

    threads = [
        threading.Thread(target=run, args=(name, step), name=f"prepare-{name}", daemon=True)
        for name, step in steps.items()
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        cancel.set()  # Ctrl-C: the steps stop at their next report
        raise
    for name in steps:
        if name in errors:
            raise errors[name]
    return seconds
