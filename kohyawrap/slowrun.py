"""Why a run is slow: the tutorial's "check nvidia-smi" step, automated. Pure: text in, findings out.

The host samples ``nvidia-smi`` next to the job (templates/remote/gpu_sample.sh.j2) into
``gpu.log``, one line per GPU and per compute process each time::

    <unix time> gpu <index> <utilization %> <memory used MiB> <memory total MiB>
    <unix time> app <pid> <memory MiB> <1 when the pid belongs to the trainer, else 0>

:func:`slow_run_findings` compares the measured seconds per step with the preset's estimate and
reads the samples: a run more than :data:`SLOW_FACTOR` times slower than planned, or a GPU that
stays mostly idle, gets the likely causes as findings (training on the CPU, another process on
the GPU, no efficient attention, a data loader that cannot keep up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kohyawrap.models import Finding

SLOW_FACTOR = 2.0  # issue #8: "over 2x the preset's estimate"
LOW_UTILISATION_PCT = 50.0  # estimate: a GPU busy under half the time is waiting for something
MIN_SAMPLES = 3  # GPU samples before utilisation counts as "stays low"
MIN_STEPS = 3  # steps before the measured speed counts (the first one includes warm-up)
OTHER_PROCESS_MIB = 256  # estimate: less is a monitoring tool or a desktop, not a training job
_ATTENTION = ("sdpa", "xformers", "mem_eff_attn")


@dataclass(frozen=True)
class GpuSample:
    time: int
    index: int
    utilization: float  # percent
    memory_used_mib: int
    memory_total_mib: int


@dataclass(frozen=True)
class GpuApp:
    time: int
    pid: int
    memory_mib: int
    ours: bool


@dataclass(frozen=True)
class GpuLog:
    samples: tuple[GpuSample, ...] = ()
    apps: tuple[GpuApp, ...] = ()

    @property
    def times(self) -> tuple[int, ...]:
        return tuple(sorted({s.time for s in self.samples}))

    def busiest(self) -> list[float]:
        """Utilisation per sample time, of the busiest GPU then (training uses one)."""
        best: dict[int, float] = {}
        for s in self.samples:
            best[s.time] = max(best.get(s.time, 0.0), s.utilization)
        return [best[t] for t in sorted(best)]


def parse_gpu_log(text: str) -> GpuLog:
    """The samples in ``gpu.log`` text (a torn first or last line is skipped)."""
    samples: list[GpuSample] = []
    apps: list[GpuApp] = []
    for line in text.splitlines():
        parts = line.split()
        try:
            if len(parts) == 6 and parts[1] == "gpu":
                samples.append(
                    GpuSample(
                        int(parts[0]), int(parts[2]), float(parts[3]), int(parts[4]), int(parts[5])
                    )
                )
            elif len(parts) == 5 and parts[1] == "app":
                apps.append(GpuApp(int(parts[0]), int(parts[2]), int(parts[3]), parts[4] == "1"))
        except ValueError:
            continue  # "[N/A]" from a GPU that does not report a value
    return GpuLog(tuple(samples), tuple(apps))


def measured(gpu: GpuLog) -> dict[str, float]:
    """What the manifest keeps of the samples: mean utilisation, peak memory, how many."""
    busy = gpu.busiest()
    if not busy:
        return {}
    return {
        "gpu_utilization_pct": round(sum(busy) / len(busy), 1),
        "gpu_memory_peak_mib": float(max(s.memory_used_mib for s in gpu.samples)),
        "gpu_samples": float(len(busy)),
    }


@dataclass(frozen=True)
class Speed:
    """The measured and the planned seconds per step (0 when unknown), and the steps seen."""

    measured: float
    estimated: float
    steps: int

    @property
    def slow(self) -> bool:
        return (
            self.estimated > 0
            and self.steps >= MIN_STEPS
            and self.measured > SLOW_FACTOR * self.estimated
        )


def enough_evidence(speed: Speed, gpu: GpuLog, *, sampled: bool) -> bool:
    """Whether a verdict can be given: some steps, and (``sampled``: the host has nvidia-smi)
    some GPU samples."""
    return speed.steps >= MIN_STEPS and (len(gpu.times) >= MIN_SAMPLES or not sampled)


def slow_run_findings(
    speed: Speed,
    gpu: GpuLog,
    settings: Mapping[str, Any],
    *,
    device: str | None = None,
    planned_cpu: bool = False,
) -> tuple[Finding, ...]:
    """The likely causes of a slow run, or () when it is not slow.

    ``device`` is what sd-scripts logged (``accelerator device: cuda``); ``planned_cpu`` a run
    meant for the CPU (a smoke test), which is never "slow" for being on the CPU.
    """
    busy = gpu.busiest()
    utilisation = sum(busy) / len(busy) if busy else None
    idle = (
        utilisation is not None and len(busy) >= MIN_SAMPLES and utilisation < LOW_UTILISATION_PCT
    )
    if planned_cpu or not (speed.slow or idle):
        return ()
    headline = _headline(speed, utilisation)
    on_cpu = _on_cpu(gpu, device)
    # On the CPU nothing else matters; on the GPU, every cause found is worth fixing.
    causes = (
        [on_cpu]
        if on_cpu is not None
        else [
            cause
            for cause in (
                _other_process(gpu),
                _no_attention(settings, device),
                _data_loader(settings, idle, device),
            )
            if cause is not None
        ]
    )
    if not causes:
        causes.append(
            (
                "slow-unexplained",
                "no cause found on the host",
                "the preset's speed table may be off for this GPU: the measured s/step is kept "
                "in the run record (runs show --json) to recalibrate it",
            )
        )
    return tuple(
        Finding("warning", code, None, f"{headline}: {why}", hint) for code, why, hint in causes
    )


def _headline(speed: Speed, utilisation: float | None) -> str:
    parts = []
    if speed.measured > 0:
        rate = f"{speed.measured:.3g} s/step"
        if speed.estimated > 0:
            rate += f", {speed.measured / speed.estimated:.1f}x the preset's {speed.estimated:.3g}"
        parts.append(rate)
    if utilisation is not None:
        parts.append(f"GPU busy {utilisation:.0f} % of the time")
    return "slow run" + (f" ({'; '.join(parts)})" if parts else "")


_Cause = tuple[str, str, str]


def _on_cpu(gpu: GpuLog, device: str | None) -> _Cause | None:
    listed = bool(gpu.apps)
    not_on_gpu = listed and not any(a.ours for a in gpu.apps) and max(gpu.busiest(), default=0) < 5
    if device != "cpu" and not not_on_gpu:
        return None
    return (
        "slow-cpu",
        "the training runs on the CPU"
        + (" (sd-scripts logged 'accelerator device: cpu')" if device == "cpu" else ""),
        "torch does not see the GPU: a CPU-only torch wheel, or a driver too old for the wheel's "
        "CUDA; check `python -c 'import torch; print(torch.cuda.is_available())'` in the run's "
        "environment and choose wheels with --torch-spec",
    )


def _other_process(gpu: GpuLog) -> _Cause | None:
    if not any(a.ours for a in gpu.apps):
        return None  # the host's process ids are not visible here (a container): cannot tell
    times = gpu.times or tuple(sorted({a.time for a in gpu.apps}))
    strangers = [a for a in gpu.apps if not a.ours and a.memory_mib >= OTHER_PROCESS_MIB]
    seen_at = {a.time for a in strangers}
    if not strangers or len(seen_at) * 2 < len(times):
        return None
    biggest = max(strangers, key=lambda a: a.memory_mib)
    return (
        "slow-gpu-shared",
        f"another process uses the GPU (pid {biggest.pid}, {biggest.memory_mib} MiB)",
        "stop it (`nvidia-smi` on the host lists it), or rent a host of your own",
    )


def _no_attention(settings: Mapping[str, Any], device: str | None) -> _Cause | None:
    if device == "cpu" or any(settings.get(key) for key in _ATTENTION):
        return None
    return (
        "slow-attention",
        "no efficient attention is on (sdpa or xformers)",
        "--set sdpa=true (needs nothing extra; xformers must match torch exactly)",
    )


def _data_loader(settings: Mapping[str, Any], idle: bool, device: str | None) -> _Cause | None:
    if not idle or device == "cpu":
        return None
    tips = []
    if not settings.get("cache_latents"):
        tips.append("--set cache_latents=true (no VAE pass per step)")
    workers = settings.get("max_data_loader_n_workers")
    if not isinstance(workers, int) or workers < 4:
        tips.append(
            f"--set max_data_loader_n_workers=4 (now {workers if workers is not None else 'default'})"
        )
    if not settings.get("persistent_data_loader_workers"):
        tips.append("--set persistent_data_loader_workers=true")
    return (
        "slow-dataloader",
        "the GPU waits for data (the data loader or the CPU cannot keep up)",
        "; ".join(tips) if tips else "a host with more CPU cores, or fewer image augmentations",
    )
