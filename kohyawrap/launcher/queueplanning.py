"""Planning a queue: every job checked before anything is contacted, then planned on the host it
is expected to run on, placed on the hosts' slots, and priced against separate sessions.

:func:`precheck` refuses what can never work without contacting a host (each job planned with
``build_run_plan`` as ``train --dry-run`` would); :func:`plan_queue` reads each host's facts and
plans every job with them (``--gpu auto`` resolved from the smallest GPU the job may land on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kohyawrap.errors import UsageError
from kohyawrap.hosts.base import Host
from kohyawrap.hosts.connect import ConnectOptions
from kohyawrap.hosts.facts import HostFacts
from kohyawrap.launcher.gpus import GpuAssignment, GpuRequest, check_free_memory
from kohyawrap.launcher.layout import make_run_id
from kohyawrap.launcher.queuefile import JobEntry, QueueFile
from kohyawrap.launcher.queuehost import folder_of
from kohyawrap.launcher.queueplan import (
    HostSlots,
    QueueEstimate,
    job_times,
    schedule,
    slot_label,
    slots_for,
    weakest,
)
from kohyawrap.launcher.request import build_run_plan, expand_work_dir, expected_installer
from kohyawrap.launcher.runplan import MoneyOptions, RunPlan


@dataclass(frozen=True)
class QueueOptions:
    """What ``queue run`` was told besides the queue file."""

    targets: tuple[str, ...]
    connect: ConnectOptions = field(default_factory=ConnectOptions)
    price_per_hour: float | None = None  # each host's price, all its GPUs (None: the presets')
    on_finish: str = "none"
    idle_minutes: float = 30.0
    provider: str = "auto"
    gpus: GpuRequest = field(
        default_factory=GpuRequest
    )  # which GPUs of each host the queue uses (default: all free)
    force: bool = False

    @property
    def money(self) -> MoneyOptions:
        """The queue's finish as a run's money options (for the shared checks)."""
        return MoneyOptions(
            price_per_hour=self.price_per_hour,
            on_finish=self.on_finish,
            idle_minutes=self.idle_minutes,
            provider=self.provider,
        )


@dataclass(frozen=True)
class HostPlan:
    """One host of the queue: its facts, its slots and its price."""

    target: str
    label: str
    home: str
    facts: HostFacts
    slots: tuple[GpuAssignment, ...]
    price_per_hour: float  # the whole host
    queue_dir: str
    python: str

    @property
    def slot_price(self) -> float:
        return self.price_per_hour / max(1, len(self.slots))


@dataclass(frozen=True)
class QueuePlan:
    """A planned queue: every job's RunPlan, its hosts, where each job is expected to go."""

    queue_id: str
    created_at: str
    source: Path
    plans: tuple[RunPlan, ...]  # in the queue file's order
    hosts: tuple[HostPlan, ...]
    estimate: QueueEstimate
    options: QueueOptions

    def where(self, job: int) -> str:
        """``gpu-box GPU 1``: where the plan expects job ``job``."""
        p = self.estimate.placements[job]
        host = self.hosts[p.host]
        return f"{host.target} {slot_label(host.slots[p.slot])}"

    def to_json(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id,
            "source": str(self.source),
            "hosts": [
                {"target": h.target, "slots": [slot_label(s) for s in h.slots],
                 "price_per_hour": h.price_per_hour}
                for h in self.hosts
            ],
            "jobs": [
                {"name": p.output_name, "run_id": p.run_id, "where": self.where(i),
                 "plan": p.to_json()}
                for i, p in enumerate(self.plans)
            ],
            "estimate": self.estimate.to_json(),
            "on_finish": self.options.on_finish,
        }  # fmt: skip


def queue_id_of(source: Path, now: datetime, jobs: Sequence[JobEntry]) -> str:
    """``20261128-101500-jobs-1a2b3c``: the queue file's name, the time, the jobs."""
    return make_run_id(source.stem or "queue", now, "|".join(j.name for j in jobs))


# ---------------------------------------------------------------------------------------------
# Before anything is contacted


def precheck(queue: QueueFile, options: QueueOptions, hf_token: str | None, now: datetime) -> None:
    """Refuse what can never work: the finish options, each job's inputs, settings and grid
    (planned as ``train --dry-run`` plans it; ``--gpu auto`` jobs with a stand-in card, since
    only the host can say which card they get)."""
    from kohyawrap.launcher.money import check_money, need_token
    from kohyawrap.presets import load_catalog

    check_money(options.money)
    stand_in = min(load_catalog().gpus.values(), key=lambda g: (-g.vram_gb, g.name)).name
    for job in queue.jobs:
        need_token(job.request.money, hf_token)
        request = replace(job.request, force=job.request.force or options.force)
        if request.spec.gpu == "auto":
            request = replace(request, spec=replace(request.spec, gpu=stand_in), force=True)
        try:
            build_run_plan(request, target=options.targets[0], home="~", now=now)
        except UsageError as err:
            raise UsageError(
                err.message, where=err.where or job.where, hint=err.hint, evidence=err.evidence
            ) from err


# ---------------------------------------------------------------------------------------------
# With the hosts' facts


def plan_host(
    host: Host, target: str, queue: QueueFile, options: QueueOptions, queue_id: str, index: int
) -> tuple[HostPlan, HostFacts]:
    """A host's facts, slots and queue folder (its price is set once a job is planned)."""
    from kohyawrap.hosts.facts import read_facts
    from kohyawrap.launcher.money import check_provider

    facts = read_facts(host, queue.settings.work_dir)
    check_provider(options.money, facts)
    slots = slots_for(facts.gpus, options.gpus, force=options.force)
    home = host.home()
    work = expand_work_dir(queue.settings.work_dir, home)
    plan = HostPlan(
        target=target,
        label=host.label,
        home=home,
        facts=facts,
        slots=slots,
        price_per_hour=options.price_per_hour or 0.0,
        queue_dir=folder_of(work, queue_id, index),
        python=queue.settings.setup.python,
    )
    return plan, facts


def plan_job(job: JobEntry, host: HostPlan, options: QueueOptions, now: datetime) -> RunPlan:
    """The job's RunPlan on ``host``: for the smallest of its slot GPUs, its share of the host's
    price, not pinned (the runner gives it a slot's GPU when it starts), the queue's finish
    left to the queue (a job's own finish action is none); in a pool, its training states
    pulled as they are saved (unless the job says ``pull_state = false``)."""
    price = host.slot_price if options.price_per_hour else None
    request = replace(
        job.request,
        money=replace(job.request.money, price_per_hour=price),
        force=job.request.force or options.force,
    )
    if len(options.targets) > 1 and not job.pull_state_given:
        # In a pool a job whose host drops out resumes elsewhere from a state on the laptop.
        request = replace(request, pull_state=True)
    facts = replace(host.facts, gpus=weakest(host.facts.gpus, host.slots))
    plan = build_run_plan(request, target=host.target, home=host.home, now=now, facts=facts)
    devices = tuple(d for s in host.slots for d in s.devices)
    check_free_memory(
        GpuAssignment(devices=devices), host.facts.gpus, plan.estimate.vram_needed_gb,
        force=request.force or plan.smoke,
    )  # fmt: skip
    return plan


def plan_queue(
    queue: QueueFile,
    options: QueueOptions,
    hosts: Sequence[HostPlan],
    now: datetime,
    queue_id: str,
) -> QueuePlan:
    """Every job planned on the first host, placed on all the hosts' slots; a job placed on
    another host is planned again there. Run ids follow the queue's order (a second apart)."""
    moments = [now + timedelta(seconds=i) for i in range(len(queue.jobs))]
    first = [plan_job(j, hosts[0], options, t) for j, t in zip(queue.jobs, moments, strict=True)]
    hosts = [_priced(h, first[0]) for h in hosts]
    installer = expected_installer(queue.settings.setup, hosts[0].facts)
    times = [job_times(p, installer=installer) for p in first]
    estimate = schedule(times, [_slots(h) for h in hosts])
    plans = [
        p if placed.host == 0 else plan_job(queue.jobs[i], hosts[placed.host], options, moments[i])
        for i, (p, placed) in enumerate(zip(first, estimate.placements, strict=True))
    ]
    return QueuePlan(
        queue_id=queue_id,
        created_at=now.isoformat(timespec="seconds"),
        source=queue.path,
        plans=tuple(plans),
        hosts=tuple(hosts),
        estimate=estimate,
        options=options,
    )


def _priced(host: HostPlan, example: RunPlan) -> HostPlan:
    """Without --price a host costs the preset's typical price for each of its slot GPUs."""
    if host.price_per_hour:
        return host
    return replace(host, price_per_hour=example.estimate.price_per_hour * len(host.slots))


def _slots(host: HostPlan) -> HostSlots:
    return HostSlots(host.target, tuple(slot_label(s) for s in host.slots), host.price_per_hour)
