"""From what the user typed to a RunPlan: the one place that combines the dataset, the preset
plan, the host's facts and the remote layout."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from kohyawrap.errors import UsageError
from kohyawrap.launcher.layout import RemoteLayout, make_run_id
from kohyawrap.launcher.runplan import (
    RunPlan,
    SetupOptions,
    dataset_files,
    dataset_hash,
    model_source,
    with_host_paths,
)
from kohyawrap.models import RunSpec


@dataclass(frozen=True)
class TrainRequest:
    """A ``kohyawrap train`` invocation, minus the connection details."""

    spec: RunSpec  # gpu may be "auto" until the host's GPU is known
    dataset: Path
    base_model_file: str | None = None
    work_dir: str = "~/kohyawrap"
    setup: SetupOptions = field(default_factory=SetupOptions)
    price_per_hour: float | None = None
    bandwidth_mbps: float | None = None  # MB/s; None = the preset default
    on_finish: str = "none"
    pull_state: bool = False
    max_dollars: float | None = None
    max_hours: float | None = None
    force: bool = False


def expand_work_dir(work_dir: str, home: str) -> str:
    """``~/kohyawrap`` -> ``/root/kohyawrap`` (sd-scripts does not expand ``~``)."""
    if work_dir == "~" or work_dir.startswith("~/"):
        return posixpath.join(home, work_dir[2:])
    if not work_dir.startswith("/"):
        return posixpath.join(home, work_dir)
    return work_dir


def resolve_gpu(spec: RunSpec, facts: Any | None) -> RunSpec:
    """``--gpu auto``: the preset for the host's first GPU (by name, else by VRAM tier)."""
    if spec.gpu != "auto":
        return spec
    from kohyawrap.presets import match_gpu

    gpus = list(getattr(facts, "gpus", []) or [])
    if not gpus:
        raise UsageError(
            "--gpu auto found no NVIDIA GPU on the host",
            hint="name the preset with --gpu (see `kohyawrap presets list`), or use --smoke to test on CPU",
        )
    first = gpus[0]
    memory_gb = first.memory_mib / 1024 if first.memory_mib else None
    return replace(spec, gpu=match_gpu(first.name, memory_gb))


def resolve_device(spec: RunSpec, facts: Any | None) -> RunSpec:
    """A smoke run uses the host's GPU when it has one, else the CPU (accelerate --cpu)."""
    if not spec.smoke or facts is None or spec.cpu is not None:
        return spec
    return replace(spec, cpu=not getattr(facts, "gpus", ()))


# Typical single-file checkpoint sizes (field_notes §8: SDXL 6.94 GB, SD1.5 4.27 GB; SD2.1 ~5.2 GB).
MODEL_GB = {"sd15": 4.3, "sd2": 5.3, "sdxl": 7.0}
VENV_GB = 6.0  # torch + CUDA wheels unpacked (~5 GB, field_notes §8) plus requirements
OUTPUT_GB = 1.0  # checkpoints, states and logs of one LoRA run


def disk_needed_gb(plan: RunPlan, *, model_present: bool, venv_present: bool) -> float:
    """What the run will write on the host, in GB, for the free-disk check."""
    need = OUTPUT_GB + sum(Path(p).stat().st_size for p in plan.dataset_files.values()) / 1e9
    if not model_present:
        if plan.model.kind == "upload":
            need += Path(plan.model.source).stat().st_size / 1e9
        else:
            need += MODEL_GB.get(plan.spec.model, 7.0)
    if not venv_present and plan.setup.torch_spec != "skip" and not plan.setup.sd_scripts_path:
        need += VENV_GB
    return need


def build_run_plan(
    request: TrainRequest,
    *,
    target: str,
    home: str,
    now: datetime,
    facts: Any | None = None,
) -> RunPlan:
    """The executable plan. Deterministic for the same request, host home, clock and facts."""
    from kohyawrap.dataset.scan import read_training_dir
    from kohyawrap.forecast import build_forecast, require_fit

    files = dataset_files(request.dataset)
    digest = dataset_hash(files)
    spec = resolve_device(resolve_gpu(request.spec, facts), facts)
    work = expand_work_dir(request.work_dir, home)
    provisional = RemoteLayout(work, "pending")
    model = model_source(spec.base_model, request.base_model_file, provisional.models)
    host_spec = with_host_paths(spec, model, provisional)
    if (request.dataset / "reg").is_dir():
        # `dataset build --reg` puts class images in <dataset>/reg/<repeats>_<class>/.
        host_spec = replace(host_spec, reg_data_dir="dataset/reg")
    tdir = read_training_dir(request.dataset, caption_extension=spec.caption_extension)
    plan = build_forecast(
        host_spec,
        tdir,
        price_per_hour=request.price_per_hour,
        bandwidth_mbps=request.bandwidth_mbps,
        # A host that already holds an environment skips the install in the time estimate.
        setup="warm" if getattr(facts, "venvs", ()) else "cold",
    )
    if not request.force and not spec.smoke:
        require_fit(plan, force_hint="--force to try anyway")
    run_id = make_run_id(spec.output_name, now, plan.rendered.inputs_hash + digest)
    return RunPlan(
        run_id=run_id,
        created_at=now.isoformat(timespec="seconds"),
        target=target,
        layout=RemoteLayout(work, run_id),
        spec=host_spec,
        rendered=plan.rendered,
        estimate=plan.estimate,
        model=model,
        setup=request.setup,
        dataset_root=str(request.dataset.resolve()),
        dataset_files=files,
        dataset_sha256=digest,
        smoke=spec.smoke,
        on_finish=request.on_finish,
        pull_state=request.pull_state,
        max_dollars=request.max_dollars,
        max_hours=request.max_hours,
    )
