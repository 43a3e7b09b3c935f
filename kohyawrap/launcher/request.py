"""From what the user typed to a RunPlan: the one place that combines the dataset, the forecast,
the host's facts and the remote layout.

:func:`check_request` refuses what can never work before anything is contacted;
:func:`build_run_plan` is deterministic for the same request, host home, clock and facts.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from kohyawrap.errors import HostError, UsageError
from kohyawrap.hosts.facts import HostFacts
from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.gpus import (
    GpuAssignment,
    GpuRequest,
    check_free_memory,
    check_gpu_request,
    choose_gpus,
    chosen_gpus,
)
from kohyawrap.launcher.layout import RemoteLayout, make_run_id
from kohyawrap.launcher.runplan import (
    ModelSource,
    MoneyOptions,
    RunPlan,
    SetupOptions,
)
from kohyawrap.models import RunSpec
from kohyawrap.names import check_output_name, slug

# The single-file checkpoints people mean when they name these repos.
KNOWN_FILES = {
    "runwayml/stable-diffusion-v1-5": "v1-5-pruned-emaonly.safetensors",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "v1-5-pruned-emaonly.safetensors",
    "stabilityai/stable-diffusion-2-1": "v2-1_768-ema-pruned.safetensors",
    "stabilityai/stable-diffusion-xl-base-1.0": "sd_xl_base_1.0.safetensors",
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Options a run manages itself: where files go and what data is read. Set through --set they
# would send the LoRA where nothing pulls it (or train on the wrong data); each names its option.
RUN_MANAGED = {
    "output_dir": "the run writes into its own output/ folder, which is what gets pulled back",
    "output_name": "use --name",
    "logging_dir": "the run logs into its own logs/ folder (TensorBoard files are pulled from there)",
    "train_data_dir": "use --dataset",
    "reg_data_dir": "put class images in <dataset>/reg (`kohyawrap dataset build --reg`)",
    "dataset_config": "the run renders its own from --dataset",
    "pretrained_model_name_or_path": "use --base-model",
    "config_file": "the run renders its own training_config.toml",
    "output_config": "the run renders its own training_config.toml",
    "resume": "resuming is the run's to manage",
    "tokenizer_cache_dir": "the run keeps tokenizers in the host's shared model cache",
}
LOCAL_TARGETS = {"local", "localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class TrainRequest:
    """A ``kohyawrap train`` invocation, minus the connection details."""

    spec: RunSpec  # gpu may be "auto" until the host's GPU is known
    dataset: Path
    base_model_file: str | None = None
    work_dir: str = "~/kohyawrap"
    setup: SetupOptions = field(default_factory=SetupOptions)
    money: MoneyOptions = field(default_factory=MoneyOptions)
    bandwidth_mbps: float | None = None  # MB/s; None = the preset default
    pull_state: bool = False
    force: bool = False
    gpus: GpuRequest = field(default_factory=GpuRequest)  # --gpus / --multi-gpu / --scale-lr


def looks_local(target: str) -> bool:
    """The target is this machine (``local``, or an SSH address on loopback)."""
    host = target.rsplit("@", 1)[-1]
    host = host.split(":", 1)[0] if host.count(":") == 1 else host
    return target == "local" or host in LOCAL_TARGETS or host.startswith("127.")


def check_request(request: TrainRequest) -> TrainRequest:
    """Refuse what can never work, before anything is contacted; the request with the name
    normalised."""
    name = check_output_name(request.spec.output_name)
    for key, _ in request.spec.overrides:
        if key in RUN_MANAGED:
            raise UsageError(
                f"--set {key}=... is managed by the run: {RUN_MANAGED[key]}",
                hint="kohyawrap sets it so that every file is pulled back and the right data is read",
            )
    if not request.dataset.is_dir():
        raise UsageError(
            f"dataset folder {request.dataset} does not exist",
            hint="build one with `kohyawrap dataset build`",
        )
    check_gpu_request(request.gpus)
    return replace(request, spec=replace(request.spec, output_name=name))


def expand_work_dir(work_dir: str, home: str) -> str:
    """``~/kohyawrap`` -> ``/root/kohyawrap`` (sd-scripts does not expand ``~``)."""
    if work_dir == "~" or work_dir.startswith("~/"):
        return posixpath.join(home, work_dir[2:])
    if not work_dir.startswith("/"):
        return posixpath.join(home, work_dir)
    return work_dir


def resolve_gpu(spec: RunSpec, facts: HostFacts | None) -> RunSpec:
    """``--gpu auto``: the preset for the host's first GPU (by name, else by VRAM tier).

    A smoke run on a host without a GPU trains on the CPU with the smallest preset's settings.
    """
    if spec.gpu != "auto":
        return spec
    from kohyawrap.presets import load_catalog, match_gpu

    gpus = list(facts.gpus) if facts is not None else []
    if not gpus:
        if spec.smoke:
            catalog = load_catalog()
            smallest = min(catalog.gpus.values(), key=lambda g: (g.vram_gb, g.name))
            return replace(spec, gpu=smallest.name, cpu=True)
        raise HostError(
            "--gpu auto found no NVIDIA GPU on the host",
            hint="check the driver; name a preset with --gpu (`kohyawrap presets list`) and "
            "--force to start anyway, or --smoke to test the chain on the CPU",
        )
    first = gpus[0]
    memory_gb = first.memory_mib / 1024 if first.memory_mib else None
    return replace(spec, gpu=match_gpu(first.name, memory_gb))


def _on_chosen(facts: HostFacts | None, gpus: GpuAssignment) -> HostFacts | None:
    """The facts as ``--gpu auto`` should read them: only the chosen GPUs, the smallest first
    (a job across different cards is planned for the weakest)."""
    if facts is None or not gpus.devices:
        return facts
    chosen = sorted(chosen_gpus(gpus, facts.gpus), key=lambda g: g.memory_mib or 0)
    return replace(facts, gpus=tuple(chosen))


def _with_processes(spec: RunSpec, asked: GpuRequest, gpus: GpuAssignment) -> RunSpec:
    """One training process per chosen GPU for a --multi-gpu job (one otherwise)."""
    if not asked.multi or len(gpus.devices) <= 1:
        return spec
    return replace(spec, processes=len(gpus.devices), scale_lr=asked.scale_lr)


def resolve_device(spec: RunSpec, facts: HostFacts | None) -> RunSpec:
    """A smoke run uses the host's GPU when it has one, else the CPU (accelerate --cpu)."""
    if not spec.smoke or facts is None or spec.cpu is not None:
        return spec
    return replace(spec, cpu=not facts.gpus)


# Typical single-file checkpoint sizes: SDXL 6.94 GB, SD1.5 4.27 GB (docs/sources.md [39], [40]);
# SD2.1 ~5.2 GB (estimate).
MODEL_GB = {"sd15": 4.3, "sd2": 5.3, "sdxl": 7.0}
VENV_GB = (
    6.0  # torch + CUDA wheels, ~2.9 GB downloaded and ~5 GB unpacked ([38]), plus requirements
)
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


def dataset_files(root: Path) -> dict[str, str]:
    """Every file sd-scripts may read under the dataset folder, by relative POSIX path."""
    if not root.is_dir():
        raise UsageError(
            f"dataset folder {root} does not exist", hint="build one with `kohyawrap dataset build`"
        )
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(
            part.startswith(".") for part in path.relative_to(root).parts
        ):
            rel = path.relative_to(root).as_posix()
            if "\n" in rel or "\r" in rel:
                raise UsageError(f"file name with a line break in the dataset: {rel!r}")
            files[rel] = str(path)
    if not files:
        raise UsageError(f"dataset folder {root} is empty")
    return files


def dataset_hash(files: dict[str, str]) -> str:
    """A content hash of the whole dataset: names and bytes."""
    digest = hashlib.sha256()
    for rel, local in sorted(files.items()):
        digest.update(rel.encode() + b"\0" + file_sha256(Path(local)).encode() + b"\n")
    return digest.hexdigest()


def model_source(
    base_model: str, filename: str | None, models_dir: str, *, in_place: bool = False
) -> ModelSource:
    """Classify ``--base-model`` (local file, URL, or Hugging Face repo id) and place it on the
    host. ``in_place``: the host is this machine, so a local file is used where it is."""
    local = Path(base_model).expanduser()
    if local.is_file():
        if in_place:
            path = str(local.resolve())
            return ModelSource("upload", path, local.name, path, "", in_place=True)
        digest = file_sha256(local)
        name = f"{digest[:16]}-{slug(local.name, 80)}"
        return ModelSource(
            "upload",
            str(local.resolve()),
            local.name,
            posixpath.join(models_dir, "uploads", name),
            digest,
        )
    if base_model.startswith(("http://", "https://")):
        tail = slug(base_model.rsplit("/", 1)[-1].split("?")[0], 80) or "model.safetensors"
        key = hashlib.sha256(base_model.encode()).hexdigest()[:12]
        return ModelSource(
            "url", base_model, tail, posixpath.join(models_dir, "urls", f"{key}-{tail}")
        )
    if _REPO_ID.match(base_model):
        file = filename if filename is not None else KNOWN_FILES.get(base_model, "")
        name = slug(base_model.replace("/", "--"), 120) + (f"--{slug(file, 120)}" if file else "")
        return ModelSource("hf", base_model, file, posixpath.join(models_dir, "hf-files", name))
    raise UsageError(
        f"--base-model {base_model!r} is not a file, a URL or a Hugging Face repo id",
        hint="e.g. stabilityai/stable-diffusion-xl-base-1.0, ./models/v1-5.safetensors or https://...",
    )


def with_host_paths(spec: RunSpec, model: ModelSource, layout: RemoteLayout) -> RunSpec:
    """The spec as the host will see it: model and tokenizer cache at absolute host paths,
    dataset/output/logs relative to the run folder (sd-scripts' working directory)."""
    return replace(
        spec,
        base_model=model.remote_path,
        train_data_dir="dataset",
        output_dir="output",
        logging_dir="logs",
        tokenizer_cache_dir=layout.tokenizers,
    )


def build_run_plan(
    request: TrainRequest,
    *,
    target: str,
    home: str,
    now: datetime,
    facts: HostFacts | None = None,
) -> RunPlan:
    """The executable plan. Deterministic for the same request, host home, clock and facts."""
    from kohyawrap.dataset.scan import read_training_dir
    from kohyawrap.forecast import build_forecast, require_fit

    request = check_request(request)
    files = dataset_files(request.dataset)
    digest = dataset_hash(files)
    gpus = choose_gpus(request.gpus, facts.gpus if facts else (), force=request.force)
    spec = resolve_device(resolve_gpu(request.spec, _on_chosen(facts, gpus)), facts)
    spec = _with_processes(spec, request.gpus, gpus)
    work = expand_work_dir(request.work_dir, home)
    provisional = RemoteLayout(work, "pending")
    model = model_source(
        spec.base_model, request.base_model_file, provisional.models, in_place=target == "local"
    )
    host_spec = with_host_paths(spec, model, provisional)
    if (request.dataset / "reg").is_dir():
        # `dataset build --reg` puts class images in <dataset>/reg/<repeats>_<class>/.
        host_spec = replace(host_spec, reg_data_dir="dataset/reg")
    tdir = read_training_dir(request.dataset, caption_extension=spec.caption_extension)
    if not host_spec.prompt_subjects:
        from kohyawrap.prompts import subjects_from_dataset

        # The sample prompts show the trigger and class word, as `dataset build` named the folders.
        host_spec = replace(host_spec, prompt_subjects=subjects_from_dataset(tdir))
    forecast = build_forecast(
        host_spec,
        tdir,
        price_per_hour=request.money.price_per_hour,
        bandwidth_mbps=request.bandwidth_mbps,
        # A host that already holds an environment, or a pre-installed sd-scripts, installs nothing.
        setup="warm"
        if request.setup.sd_scripts_path or (facts is not None and facts.venvs)
        else "cold",
    )
    if not request.force and not spec.smoke:
        require_fit(forecast, force_hint="--force to try anyway")
    if facts is not None:
        need = forecast.estimate.vram_needed_gb
        check_free_memory(gpus, facts.gpus, need, force=request.force or spec.smoke)
    run_id = make_run_id(spec.output_name, now, forecast.rendered.inputs_hash + digest)
    return RunPlan(
        run_id=run_id,
        created_at=now.isoformat(timespec="seconds"),
        target=target,
        layout=RemoteLayout(work, run_id),
        spec=host_spec,
        rendered=forecast.rendered,
        estimate=forecast.estimate,
        model=model,
        setup=request.setup,
        dataset_root=str(request.dataset.resolve()),
        dataset_files=files,
        dataset_sha256=digest,
        money=replace(request.money, price_per_hour=forecast.estimate.price_per_hour),
        smoke=spec.smoke,
        pull_state=request.pull_state,
        gpus=gpus,
    )
