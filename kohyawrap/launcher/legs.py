"""The legs of a run: the first training, then each resume, extension or out-of-memory retry.

A run's record keeps one :class:`~kohyawrap.launcher.manifest.Leg` per leg. The run's own
fields (host, plan, exit code, follow state, pulled files, cost) always describe the current
leg; :func:`begin_leg` closes the current leg (copies what it did into its Leg) and points those
fields at the next one. Pure: values in, values out.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kohyawrap.launcher.manifest import (
    Cost,
    FollowState,
    HostRecord,
    Leg,
    RunManifest,
    RunStatus,
)
from kohyawrap.launcher.runplan import RunPlan


def first_leg(plan: RunPlan, host: HostRecord, started_at: float | None) -> Leg:
    """The record of a run's first leg, when it starts."""
    return Leg(
        number=1,
        kind="train",
        target=host.target,
        connect=dict(host.connect),
        remote_run_dir=plan.layout.run_dir,
        started_at=started_at,
        price_per_hour=plan.money.price_per_hour,
    )


def _status(m: RunManifest) -> str:
    if m.status.active:
        return "lost"  # never seen to end: its host went away (or was left running)
    return m.status.value


def leg_dollars(m: RunManifest, now: float) -> float:
    """What the current leg cost: its share of the recorded cost, or (a leg whose end was never
    seen) its price from its start until ``now``, since a rented host is paid until released."""
    if m.cost is not None and m.finished_at is not None:
        return round(max(0.0, m.cost.actual - m.earlier_dollars), 4)
    started = m.started_at if m.started_at is not None else now
    price = m.plan.money.price_per_hour or m.plan.estimate.price_per_hour
    return round(price * max(0.0, now - started) / 3600, 4)


def closed(m: RunManifest, now: float) -> Leg:
    """The current leg with what it did filled in from the run's fields."""
    leg = m.legs[-1] if m.legs else first_leg(m.plan, m.host, m.started_at)
    return replace(
        leg,
        ended_at=m.finished_at if m.finished_at is not None else now,
        last_step=m.follow.last_step,
        status=_status(m),
        exit_code=m.exit_code,
        dollars=leg_dollars(m, now),
        failure=f"{m.failure.kind}: {m.failure.message}" if m.failure else (m.error or ""),
        pulled=dict(m.pulled),
        missing=m.missing(),
        measured={
            **m.follow.measured,
            **({"s_per_step": m.follow.sec_per_step} if m.follow.sec_per_step else {}),
        },
    )


def leg_records(m: RunManifest, now: float) -> tuple[Leg, ...]:
    """Every leg, the current one completed from the run's fields (for showing, not storing)."""
    earlier = m.legs[:-1] if m.legs else ()
    return (*earlier, closed(m, now))


def begin_leg(m: RunManifest, leg: Leg, plan: RunPlan, host: HostRecord, now: float) -> RunManifest:
    """The record with the current leg closed and ``leg`` (run by ``plan`` on ``host``) begun."""
    done = closed(m, now)
    spent = m.earlier_dollars + (done.dollars or 0.0)
    fresh: dict[str, Any] = {
        "plan": plan,
        "origin": m.original_plan,
        "host": host,
        "status": RunStatus.PLANNED,
        "model_how": None,
        "upload": None,
        "pid": None,
        "started_at": leg.started_at,
        "launched_at": None,
        "finished_at": None,
        "exit_code": None,
        "follow": FollowState(),
        "pulled": {},
        "cost": Cost(plan.estimate.dollars, round(spent, 4), plan.estimate.price_per_hour),
        "failure": None,
        "error": None,
        "stop_reason": None,
        # --on-finish is carried out at the end of every leg: a leg on a box rented again must
        # not read the first box's decision as its own (and leave the new box billing).
        "finish": None,
    }
    earlier = m.legs[:-1] if m.legs else ()
    return m.with_changes(legs=(*earlier, done, leg), **fresh)


def pulled_everywhere(m: RunManifest) -> dict[str, Any]:
    """Every file pulled by any leg, by run-relative local path (``runs show``)."""
    files = {f.path: f for leg in m.legs[:-1] for f in leg.pulled.values()}
    files.update({f.path: f for f in m.pulled.values()})
    return files
