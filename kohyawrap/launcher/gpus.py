"""Which of a host's GPUs a run trains on: what the user asked (``train --gpus``/``--multi-gpu``)
and the choice made from the host's facts (free memory, other processes). Pure: the facts are
passed in, nothing is asked of the host here.

A job is one RunPlan; the GPUs it was given are a value the plan carries
(:class:`GpuAssignment`), which the run wrapper turns into ``CUDA_VISIBLE_DEVICES``. A queue that
runs one job per GPU chooses with the same function, one GPU at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kohyawrap.errors import HostError, UsageError
from kohyawrap.hosts.facts import Gpu

ALL = "all"


@dataclass(frozen=True)
class GpuRequest:
    """What ``--gpus`` / ``--multi-gpu`` / ``--scale-lr`` asked for.

    ``count`` (``--gpus N``) or ``every`` (``--gpus all``) leave the choice to the host's facts;
    ``devices`` (``--gpus device=0,2``) names them. ``multi`` trains one job across all of them
    with accelerate; without it a job is pinned to exactly one GPU.
    """

    count: int | None = None
    every: bool = False
    devices: tuple[int, ...] = ()
    multi: bool = False
    scale_lr: bool = False

    @property
    def asked(self) -> bool:
        """Anything was asked (else the run uses whatever GPU CUDA offers first, as before)."""
        return self.count is not None or self.every or bool(self.devices) or self.multi

    @property
    def needs_host(self) -> bool:
        """The choice depends on the host's GPUs (a count, or all of them)."""
        return self.count is not None or self.every or (self.multi and not self.devices)

    def describe(self) -> str:
        """The request as typed: ``--gpus 2 --multi-gpu``."""
        if self.devices:
            what = "device=" + ",".join(str(d) for d in self.devices)
        elif self.count is not None:
            what = str(self.count)
        else:
            what = ALL
        words = [f"--gpus {what}"] + ["--multi-gpu"] * self.multi + ["--scale-lr"] * self.scale_lr
        return " ".join(words)


def parse_gpus(text: str) -> tuple[int | None, bool, tuple[int, ...]]:
    """``all`` | ``N`` | ``device=I[,J...]`` -> (count, every, devices); UsageError otherwise."""
    value = text.strip()
    if value.lower() == ALL:
        return None, True, ()
    if value.isdigit() and int(value) >= 1:
        return int(value), False, ()
    name, sep, rest = value.partition("=")
    if sep and name.strip().lower() == "device":
        parts = [p.strip() for p in rest.split(",")]
        if parts and all(p.isdigit() for p in parts):
            devices = tuple(int(p) for p in parts)
            if len(set(devices)) == len(devices):
                return None, False, devices
    raise UsageError(
        f"--gpus {text!r} is not a GPU selection",
        hint="--gpus all, --gpus 2 (that many free GPUs), or --gpus device=0,2 (nvidia-smi's indices)",
    )


def check_gpu_request(request: GpuRequest) -> None:
    """Refuse, before anything is contacted, a selection that can never be one job."""
    if request.scale_lr and not request.multi:
        raise UsageError(
            "--scale-lr multiplies the learning rate by the number of GPUs of a --multi-gpu job",
            hint="add --multi-gpu (one job across the GPUs), or leave --scale-lr out",
        )
    if request.multi:
        return
    if request.every or (request.count or 1) > 1 or len(request.devices) > 1:
        raise UsageError(
            f"{request.describe()} names several GPUs, but one run without --multi-gpu trains "
            "on one GPU",
            hint="add --multi-gpu to spread this run over them, or --gpus 1 to pin it to the "
            "freest GPU",
        )


@dataclass(frozen=True)
class GpuAssignment:
    """The GPUs a planned job trains on (nvidia-smi's indices, and their uuids when known) and
    how they were chosen. Empty: not pinned (CUDA's first GPU, as a run without --gpus)."""

    devices: tuple[int, ...] = ()
    uuids: tuple[str, ...] = ()
    basis: str = ""

    @property
    def visible(self) -> str:
        """The value of ``CUDA_VISIBLE_DEVICES`` ("" = leave it unset): uuids when every one is
        known (no ordering doubt at all), else indices in PCI bus order."""
        if self.uuids and len(self.uuids) == len(self.devices) and all(self.uuids):
            return ",".join(self.uuids)
        return ",".join(str(d) for d in self.devices)

    def to_json(self) -> dict[str, Any]:
        return {"devices": list(self.devices), "uuids": list(self.uuids), "basis": self.basis}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GpuAssignment:
        return cls(
            devices=tuple(int(d) for d in data.get("devices") or ()),
            uuids=tuple(str(u) for u in data.get("uuids") or ()),
            basis=str(data.get("basis") or ""),
        )


def _index(gpu: Gpu, position: int) -> int:
    return gpu.index if gpu.index is not None else position


def _describe(gpu: Gpu, position: int) -> str:
    free = f"{gpu.memory_free_mib} MiB free" if gpu.memory_free_mib is not None else "free ?"
    busy = ""
    if gpu.processes:
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in gpu.processes)
        busy = f", in use by {names}"
    return f"GPU {_index(gpu, position)}: {gpu.name}, {free}{busy}"


def choose_gpus(request: GpuRequest, gpus: Sequence[Gpu], *, force: bool = False) -> GpuAssignment:
    """The GPUs for one job: the named ones, or the freest idle ones (no other compute process,
    then the most free memory, then the lowest index). Busy named GPUs are refused unless
    ``force``; too few idle GPUs are always refused, with every GPU's state as evidence."""
    check_gpu_request(request)
    if not request.asked:
        return GpuAssignment()
    listed = list(enumerate(gpus))
    evidence = [_describe(g, i) for i, g in listed]
    if request.devices:
        return _named(request.devices, listed, evidence, force)
    idle = [(i, g) for i, g in listed if not g.processes]
    idle.sort(key=lambda pair: (-(pair[1].memory_free_mib or 0), _index(pair[1], pair[0])))
    wanted = len(idle) if request.every or request.count is None else request.count
    if not idle or len(idle) < wanted:
        raise HostError(
            f"{request.describe()}: {len(idle)} of the host's {len(listed)} GPU(s) are free "
            "(no other process on them)",
            evidence=evidence or ["nvidia-smi lists no GPU"],
            hint="wait for the other jobs, ask for fewer GPUs, or name them with --gpus device=I",
        )
    chosen = sorted(idle[:wanted], key=lambda pair: _index(pair[1], pair[0]))
    skipped = len(listed) - len(idle)
    basis = (
        f"the {wanted} free GPU(s) with the most free memory"
        if request.count is not None
        else f"every free GPU ({wanted})"
    ) + (f"; {skipped} busy GPU(s) left alone" if skipped else "")
    return _assignment(chosen, basis)


def _named(
    devices: tuple[int, ...], listed: list[tuple[int, Gpu]], evidence: list[str], force: bool
) -> GpuAssignment:
    if not listed:
        # No facts (a dry run that did not ask the host): the indices are taken as given.
        return GpuAssignment(devices=devices, basis="given (--gpus device=...), not checked")
    by_index = {_index(g, i): (i, g) for i, g in listed}
    missing = [d for d in devices if d not in by_index]
    if missing:
        raise HostError(
            f"--gpus device={','.join(map(str, devices))}: the host has no GPU "
            + ", ".join(map(str, missing)),
            evidence=evidence,
            hint="use nvidia-smi's indices (`kohyawrap hosts check` lists them)",
        )
    chosen = [by_index[d] for d in devices]
    busy = [_describe(g, i) for i, g in chosen if g.processes]
    if busy and not force:
        raise HostError(
            "the GPU(s) you named are in use by other processes",
            evidence=busy,
            hint="name free ones, let kohyawrap choose with --gpus N, or --force to share them",
        )
    return _assignment(chosen, "given (--gpus device=...)" + (", shared (--force)" * bool(busy)))


def _assignment(chosen: Sequence[tuple[int, Gpu]], basis: str) -> GpuAssignment:
    return GpuAssignment(
        devices=tuple(_index(g, i) for i, g in chosen),
        uuids=tuple(g.uuid for _, g in chosen),
        basis=basis,
    )


def chosen_gpus(assignment: GpuAssignment, gpus: Sequence[Gpu]) -> tuple[Gpu, ...]:
    """The facts of the assigned GPUs (all of them when the job is not pinned)."""
    if not assignment.devices:
        return tuple(gpus)
    by_index = {_index(g, i): g for i, g in enumerate(gpus)}
    return tuple(by_index[d] for d in assignment.devices if d in by_index)


def check_free_memory(
    assignment: GpuAssignment, gpus: Sequence[Gpu], need_gb: float, *, force: bool
) -> None:
    """Refuse GPUs whose free memory (now, other processes counted) is below the plan's need."""
    if not assignment.devices or force:
        return
    short = [
        g
        for g in chosen_gpus(assignment, gpus)
        if g.memory_free_mib is not None and g.memory_free_mib / 1024 < need_gb
    ]
    if short:
        raise HostError(
            f"the run needs ~{need_gb:.1f} GB on each GPU, more than is free now",
            evidence=[_describe(g, g.index or 0) for g in short],
            hint="free the GPU, choose another (--gpus device=I), or --force to try anyway",
        )
