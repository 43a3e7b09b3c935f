"""Where each job of a queue runs, and what the queue costs against separate sessions. Pure.

A queue's hosts each have one or more slots: a GPU each (one job per GPU, ``CUDA_VISIBLE_DEVICES``)
or the whole machine. Each host is set up once (sd-scripts and its environment); each model file
is downloaded once per host. The plan places the jobs in order, each on the slot that frees up
first by the estimates (list scheduling), and prices the result:

- a separate session per job pays the cold set-up every time (install, model download, upload),
  one GPU at the job's price;
- the queue pays each host's set-up once, each model's download once per host, then every job
  warm; a host is paid for all its GPUs from its set-up until its last job ends (an idle GPU
  still costs), at the host's price.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kohyawrap.errors import HostError
from kohyawrap.hosts.facts import Gpu
from kohyawrap.launcher.gpus import GpuAssignment, GpuRequest, choose_gpus
from kohyawrap.launcher.runplan import RunPlan

if TYPE_CHECKING:
    from kohyawrap.forecast import Forecast


@dataclass(frozen=True)
class JobTimes:
    """One job's seconds as a session of its own and inside a queue."""

    name: str
    cold_seconds: float  # set-up from nothing, training, grid: a session of its own
    warm_seconds: float  # the same on a host already set up, its model files there
    download_seconds: float  # its model files' download on a host that has none of them
    models: tuple[str, ...]  # host paths of its model files (each downloaded once per host)
    price_per_hour: float  # one GPU, as a session of its own would rent it

    @property
    def install_seconds(self) -> float:
        """What a host pays once before any job: the cold set-up less the download."""
        return max(0.0, self.cold_seconds - self.warm_seconds - self.download_seconds)


@dataclass(frozen=True)
class HostSlots:
    """A host of the queue: its slots (GPU labels) and its price for all of them."""

    target: str
    slots: tuple[str, ...]  # "GPU 1" per slot, or "whole machine"
    price_per_hour: float


@dataclass(frozen=True)
class Placement:
    """Where and when (seconds from the queue's start) a job is expected to run."""

    job: int
    host: int
    slot: int
    start: float
    end: float


@dataclass(frozen=True)
class QueueEstimate:
    """The queue's time and dollars, and those of separate sessions."""

    placements: tuple[Placement, ...]
    host_seconds: tuple[float, ...]  # each host, from its set-up to its last job's end
    host_dollars: tuple[float, ...]
    separate_seconds: float  # one session after another
    separate_dollars: float

    @property
    def seconds(self) -> float:
        """The queue's wall time: its hosts work at the same time."""
        return max(self.host_seconds, default=0.0)

    @property
    def dollars(self) -> float:
        return round(sum(self.host_dollars), 4)

    @property
    def saving_dollars(self) -> float:
        return round(self.separate_dollars - self.dollars, 4)

    @property
    def saving_seconds(self) -> float:
        return round(self.separate_seconds - self.seconds, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "dollars": self.dollars,
            "separate_seconds": round(self.separate_seconds, 1),
            "separate_dollars": round(self.separate_dollars, 4),
            "saving_seconds": self.saving_seconds,
            "saving_dollars": self.saving_dollars,
            "host_seconds": [round(s, 1) for s in self.host_seconds],
            "host_dollars": [round(d, 4) for d in self.host_dollars],
            "placements": [
                {"job": p.job, "host": p.host, "slot": p.slot, "start": round(p.start, 1),
                 "end": round(p.end, 1)}
                for p in self.placements
            ],
        }  # fmt: skip


def schedule(jobs: Sequence[JobTimes], hosts: Sequence[HostSlots]) -> QueueEstimate:
    """Place ``jobs`` in order, each on the slot free first (ties: the first host and slot).

    A host prepares its jobs one after another: the install first, then each model file the
    first time a job needs it (the rest of a job's preparation is in its warm seconds). A job
    starts once its slot is free and its host has its model.
    """
    install = jobs[0].install_seconds if jobs else 0.0
    free = {(h, s): install for h, host in enumerate(hosts) for s in range(len(host.slots))}
    prepared = dict.fromkeys(range(len(hosts)), install)  # when each host has its models so far
    models: dict[int, set[str]] = {h: set() for h in range(len(hosts))}
    placements = []
    for i, job in enumerate(jobs):

        def fetched(host: int, job: JobTimes = job) -> float:
            new = not set(job.models) <= models[host]
            return prepared[host] + (job.download_seconds if new else 0.0)

        key = min(free, key=lambda k: (max(free[k], fetched(k[0])), k))
        prepared[key[0]] = fetched(key[0])
        start = max(free[key], prepared[key[0]])
        end = start + job.warm_seconds
        free[key] = end
        models[key[0]].update(job.models)
        placements.append(Placement(i, key[0], key[1], start, end))
    host_seconds = tuple(
        max((p.end for p in placements if p.host == h), default=0.0) for h in range(len(hosts))
    )
    host_dollars = tuple(
        host.price_per_hour * seconds / 3600
        for host, seconds in zip(hosts, host_seconds, strict=True)
    )
    return QueueEstimate(
        placements=tuple(placements),
        host_seconds=host_seconds,
        host_dollars=host_dollars,
        separate_seconds=sum(j.cold_seconds for j in jobs),
        separate_dollars=sum(j.cold_seconds * j.price_per_hour / 3600 for j in jobs),
    )


# ---------------------------------------------------------------------------------------------
# A job's numbers, from its plan


def job_times(plan: RunPlan, *, installer: str = "pip") -> JobTimes:
    """The job's forecast twice, as the plan's own inputs give it: cold (a session of its own)
    and warm (after the queue's set-up); the download is the cold forecast's own part."""
    from kohyawrap.dataset.scan import read_training_dir
    from kohyawrap.forecast import build_forecast

    tdir = read_training_dir(Path(plan.dataset_root), caption_extension=plan.spec.caption_extension)
    price = plan.estimate.price_per_hour
    kind: Literal["uv", "pip"] = "uv" if installer == "uv" else "pip"

    def forecast(setup: Literal["cold", "warm"]) -> Forecast:
        return build_forecast(
            plan.spec, tdir, price_per_hour=price, setup=setup, installer=kind, grid=plan.grid
        )

    cold, warm = forecast("cold"), forecast("warm")
    if plan.setup.sd_scripts_path:
        cold = warm  # a pre-installed sd-scripts: nothing is installed, even on a new host
    download = sum(p.seconds for p in cold.stages if p.name == "model download")
    return JobTimes(
        name=plan.output_name,
        cold_seconds=cold.total_seconds,
        warm_seconds=warm.total_seconds,
        download_seconds=download,
        models=tuple(sorted(f.remote_path for f in plan.model_files)),
        price_per_hour=price,
    )


# ---------------------------------------------------------------------------------------------
# The slots of a host: one per GPU


def slots_for(
    gpus: Sequence[Gpu], selection: GpuRequest, *, force: bool
) -> tuple[GpuAssignment, ...]:
    """The GPUs the queue uses on a host, one slot each. Without a selection: every idle GPU
    (no other process) of a host with several, or the whole machine when it has one or none.
    A busy GPU is left alone; none idle is refused (``force``: use them all anyway)."""
    if not selection.asked and len(gpus) <= 1:
        return (GpuAssignment(),)
    asked = selection if selection.asked else GpuRequest(every=True)
    try:
        chosen = choose_gpus(replace(asked, multi=True), gpus, force=force)
    except HostError:
        if not force or selection.devices or not gpus:
            raise
        chosen = choose_gpus(GpuRequest(devices=tuple(_index(g, i) for i, g in enumerate(gpus)),
                                        multi=True), gpus, force=True)  # fmt: skip
    return tuple(
        GpuAssignment(devices=(device,), uuids=(uuid,) if uuid else (), basis=chosen.basis)
        for device, uuid in zip(
            chosen.devices, chosen.uuids or ("",) * len(chosen.devices), strict=True
        )
    )


def _index(gpu: Gpu, position: int) -> int:
    return gpu.index if gpu.index is not None else position


def slot_label(slot: GpuAssignment) -> str:
    """``GPU 1`` for a pinned slot, ``whole machine`` for one that is not."""
    return f"GPU {slot.devices[0]}" if slot.devices else "whole machine"


def weakest(gpus: Sequence[Gpu], slots: Sequence[GpuAssignment]) -> tuple[Gpu, ...]:
    """The smallest GPU among the slots (a job may land on any of them: it is planned for it)."""
    used = {d for s in slots for d in s.devices}
    pool = [g for i, g in enumerate(gpus) if not used or _index(g, i) in used]
    return tuple(sorted(pool, key=lambda g: (g.memory_mib or 0, g.index or 0))[:1])
