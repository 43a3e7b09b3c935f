"""Money and time limits of a running job, judged on an injected clock.

Two moments count (both on the laptop's clock, recorded in the manifest):
- ``started_at``: when work on the host began (connect). Dollars are spent from here: set-up on a
  rented box is paid time too.
- ``launched_at``: when the detached job was started. ``--max-hours`` counts from here, on the
  host (its watchdog, started by the launch) and on the laptop alike.

The host's watchdog (kohyawrap/hostside/watchdog.py) holds both limits by itself, a look before
they are passed; the laptop's checks are the backup: it steps in only if the host has not stopped
the job ``grace_seconds`` after a limit (the dollars of that grace included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kohyawrap.launcher.manifest import StopReason

DEADLINE_GRACE_SECONDS = 60.0


def dollars(amount: float) -> str:
    """``$12.34``, ``$0.26``, ``$0.0012``: always enough digits to tell small amounts apart."""
    if amount <= 0:
        return "$0.00"
    if amount >= 1:
        return f"${amount:,.2f}"
    places = max(2, 1 - math.floor(math.log10(amount)))
    return f"${amount:.{places}f}"


@dataclass(frozen=True)
class Budget:
    """The limits of one run and the moments they count from."""

    price_per_hour: float
    started_at: float
    launched_at: float
    max_dollars: float | None = None
    max_hours: float | None = None
    grace_seconds: float = DEADLINE_GRACE_SECONDS
    earlier_dollars: float = 0.0  # what earlier legs of the run cost (a resume, an OOM retry)

    def spent(self, now: float) -> float:
        """Dollars spent so far: earlier legs, then the price times the time since work began."""
        return self.earlier_dollars + self.price_per_hour * max(0.0, now - self.started_at) / 3600

    def hours_running(self, now: float) -> float:
        return max(0.0, now - self.launched_at) / 3600

    def over(self, now: float) -> tuple[StopReason, str] | None:
        """Which limit the run is over at ``now`` (and the sentence that says so), or None."""
        spent = self.spent(now)
        if self.max_dollars is not None and self.spent(now - self.grace_seconds) > self.max_dollars:
            return StopReason.BUDGET, (
                f"spent {dollars(spent)}, over the {dollars(self.max_dollars)} budget "
                "(--max-dollars), and the host did not stop it"
            )
        if self.max_hours is not None:
            limit = self.max_hours * 3600 + self.grace_seconds
            if now - self.launched_at > limit:
                return StopReason.DEADLINE, (
                    f"ran {self.hours_running(now):.3g} h, over the {self.max_hours:g} h limit "
                    "(--max-hours), and the host did not stop it"
                )
        return None
