"""From what the user typed to a RunPlan: the one place that combines the dataset, the forecast,
the host's facts and the remote layout.

:func:`check_request` refuses what can never work before anything is contacted;
:func:`build_run_plan` is deterministic for the same request, host home, clock and facts.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kohyawrap.errors import HostError, UsageError
from kohyawrap.evaluate.gridplan import GEN_SCRIPTS
from kohyawrap.evaluate.options import GridOptions
from kohyawrap.hashcache import HashCache
from kohyawrap.hosts.facts import HostFacts
from kohyawrap.launcher.gpus import (
    GpuAssignment,
    GpuRequest,
    check_free_memory,
    check_gpu_request,
    choose_gpus,
    chosen_gpus,
)
from kohyawrap.launcher.layout import RemoteLayout, make_run_id
from kohyawrap.launcher.money import check_money
from kohyawrap.launcher.runplan import MoneyOptions, RunPlan, SetupOptions
from kohyawrap.models import RunSpec
from kohyawrap.models_fetch import BASE_KEY, FetchFile, config_paths, expected_gb, fetch_plan
from kohyawrap.names import check_output_name

if TYPE_CHECKING:
    from kohyawrap.forecast import Forecast

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
    "clip_l": "use --clip-l",
    "clip_g": "use --clip-g",
    "t5xxl": "use --t5xxl",
    "ae": "use --ae",
    "config_file": "the run renders its own training_config.toml",
    "output_config": "the run renders its own training_config.toml",
    "resume": "resuming is the run's to manage",
    "tokenizer_cache_dir": "the run keeps tokenizers in the host's shared model cache",
}
LOCAL_TARGETS = {"local", "localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class TrainRequest:
    """A ``kohyawrap train`` invocation, minus the connection details.

    ``spec.base_model`` and ``spec.companions`` hold the model files as the user named them
    (``""`` / left out: the model preset's ``[files.*]``); the plan replaces them with host paths.
    """

    spec: RunSpec  # gpu may be "auto" until the host's GPU is known
    dataset: Path
    base_model_file: str | None = None
    work_dir: str = "~/kohyawrap"
    setup: SetupOptions = field(default_factory=SetupOptions)
    money: MoneyOptions = field(default_factory=MoneyOptions)
    bandwidth_mbps: float | None = None  # MB/s; None = the preset default
    pull_state: bool = False
    force: bool = False
    keep_states: int = 2  # save training states with the checkpoints, keeping the last N (0: none)
    retry_oom: int = 2  # after "CUDA out of memory", retry with the next rung of the OOM ladder
    grid: GridOptions = field(default_factory=lambda: GridOptions(enabled=False))
    gpus: GpuRequest = field(default_factory=GpuRequest)  # --gpus / --multi-gpu / --scale-lr


def state_overrides(request: TrainRequest) -> tuple[tuple[str, Any], ...]:
    """``save_state`` with every checkpoint (keeping the last N) so a run can be resumed, unless
    the user chose otherwise or it is a smoke test."""
    keys = {key for key, _ in request.spec.overrides}
    if request.keep_states <= 0 or request.spec.smoke or "save_state" in keys:
        return ()
    return (("save_state", True), ("save_last_n_epochs_state", request.keep_states))


def looks_local(target: str) -> bool:
    """The target is this machine (``local``, or an SSH address on loopback)."""
    host = target.rsplit("@", 1)[-1]
    host = host.split(":", 1)[0] if host.count(":") == 1 else host
    return target == "local" or host in LOCAL_TARGETS or host.startswith("127.")


def check_request(request: TrainRequest) -> TrainRequest:
    """Refuse what can never work, before anything is contacted; the request with the name
    normalised."""
    name = check_output_name(request.spec.output_name)
    check_money(request.money)
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
    # A model file the family does not load, a missing local file, a repo where a file is needed:
    # refused here, before any host is contacted (nothing is hashed yet: placed "in place").
    model_files(request, request.spec, "/", in_place=True)
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


VENV_GB = (
    6.0  # torch + CUDA wheels, ~2.9 GB downloaded and ~5 GB unpacked ([38]), plus requirements
)
# Checkpoints, training states and logs of one LoRA run. Estimate: an SDXL dim-32 state holds the
# network in float32 (~0.35 GB) and the optimizer's moments (~0.2 GB 8-bit, ~0.7 GB AdamW); the
# default keeps 2 states plus the final one (--keep-states).
OUTPUT_GB = 3.0


def disk_needed_gb(plan: RunPlan, *, absent: Iterable[FetchFile], venv_present: bool) -> float:
    """What the run will write on the host, in GB, for the free-disk check: the model files not
    there yet (``absent``), the dataset, the outputs, and an environment unless one is there."""
    from kohyawrap.presets import load_catalog

    need = OUTPUT_GB + sum(Path(p).stat().st_size for p in plan.dataset_files.values()) / 1e9
    need += expected_gb(absent, load_catalog().model(plan.spec.model))
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
    """A content hash of the whole dataset: names and bytes (file digests from the hash cache)."""
    rels = sorted(files)
    paths = {rel: Path(files[rel]) for rel in rels}
    try:
        known = HashCache.default().sha256_many(paths.values())
    except OSError as err:
        raise UsageError(f"cannot read {err.filename}: {err.strerror}") from err
    digest = hashlib.sha256()
    for rel in rels:
        digest.update(rel.encode() + b"\0" + known[paths[rel]].encode() + b"\n")
    return digest.hexdigest()


def expected_installer(setup: SetupOptions, facts: HostFacts | None) -> Literal["uv", "pip"]:
    """What will build the environment: uv when asked for, or (auto) when the host has it."""
    if setup.installer == "uv" or (
        setup.installer == "auto" and facts is not None and facts.uv_version
    ):
        return "uv"
    return "pip"


def checkout_dir(setup: SetupOptions, layout: RemoteLayout) -> str:
    """The sd-scripts checkout a run will use: the given one, or its commit under the work dir.

    For a branch or tag the clone lands under its commit, known after SETUP, which then points
    launch.sh there (``setup.upload_run_files``).
    """
    return setup.sd_scripts_path or layout.sd_scripts(setup.ref)


def with_host_paths(spec: RunSpec, files: Iterable[FetchFile], layout: RemoteLayout) -> RunSpec:
    """The spec as the host will see it: model files and tokenizer cache at absolute host
    paths, dataset/output/logs relative to the run folder (sd-scripts' working directory)."""
    base, companions = config_paths(files)
    return replace(
        spec,
        base_model=base,
        companions=companions,
        train_data_dir="dataset",
        output_dir="output",
        logging_dir="logs",
        tokenizer_cache_dir=layout.tokenizers,
    )


def model_files(
    request: TrainRequest, spec: RunSpec, models_dir: str, *, in_place: bool
) -> tuple[FetchFile, ...]:
    """The model files of the run (base first), placed in the host's shared model cache; what
    the user did not name comes from the model preset. ``in_place``: the host is this machine."""
    from kohyawrap.presets import load_catalog

    choices: dict[str, str | None] = {BASE_KEY: spec.base_model or None, **dict(spec.companions)}
    return fetch_plan(
        load_catalog().model(spec.model),
        choices,
        models_dir,
        base_model_file=request.base_model_file,
        in_place=in_place,
    )


def build_run_plan(
    request: TrainRequest,
    *,
    target: str,
    home: str,
    now: datetime,
    facts: HostFacts | None = None,
    managed: tuple[tuple[str, Any], ...] = (),
) -> RunPlan:
    """The executable plan. Deterministic for the same request, host home, clock and facts.

    ``managed``: options the run itself sets after the user's (a resumed leg's ``resume``).
    """
    from kohyawrap.dataset.scan import read_training_dir
    from kohyawrap.evaluate.gridplan import check_listed_epochs, check_size
    from kohyawrap.evaluate.prompts import with_sample_prompts
    from kohyawrap.forecast import build_forecast, require_fit

    request = check_request(request)
    extra = state_overrides(request) + managed
    if extra:
        request = replace(
            request, spec=replace(request.spec, overrides=request.spec.overrides + extra)
        )
    data = dataset_files(request.dataset)
    digest = dataset_hash(data)
    gpus = choose_gpus(request.gpus, facts.gpus if facts else (), force=request.force)
    spec = resolve_device(resolve_gpu(request.spec, _on_chosen(facts, gpus)), facts)
    spec = _with_processes(spec, request.gpus, gpus)
    work = expand_work_dir(request.work_dir, home)
    provisional = RemoteLayout(work, "pending")
    files = model_files(request, spec, provisional.models, in_place=target == "local")
    host_spec = with_host_paths(spec, files, provisional)
    if (request.dataset / "reg").is_dir():
        # `dataset build --reg` puts class images in <dataset>/reg/<repeats>_<class>/.
        host_spec = replace(host_spec, reg_data_dir="dataset/reg")
    tdir = read_training_dir(request.dataset, caption_extension=spec.caption_extension)
    if not host_spec.prompt_subjects:
        from kohyawrap.prompts import subjects_from_dataset

        # The sample prompts show the trigger and class word, as `dataset build` named the folders.
        host_spec = replace(host_spec, prompt_subjects=subjects_from_dataset(tdir))
    grid, grid_notes = request.grid, tuple[str, ...]()

    def forecast_with(grid: GridOptions) -> Forecast:
        return build_forecast(
            host_spec,
            tdir,
            price_per_hour=request.money.price_per_hour,
            bandwidth_mbps=request.bandwidth_mbps,
            # A host that already holds an environment, or a pre-installed sd-scripts, installs
            # nothing.
            setup="warm"
            if request.setup.sd_scripts_path or (facts is not None and facts.venvs)
            else "cold",
            installer=expected_installer(request.setup, facts),
            grid=grid,
        )

    forecast = forecast_with(grid)
    if grid.enabled and forecast.rendered.script not in GEN_SCRIPTS:
        grid = replace(grid, enabled=False)
        grid_notes = (
            f"no grid: it draws SD1.x/2.x and SDXL LoRAs, not {forecast.rendered.script}'s",
        )
        forecast = forecast_with(grid)
    if not request.force and not spec.smoke:
        require_fit(forecast, force_hint="--force to try anyway")
        _require_budget(forecast, request, host_spec, tdir)
    every = forecast.rendered.settings.get("save_every_n_epochs")
    check_listed_epochs(grid, forecast.steps.epochs, every if isinstance(every, int) else None)
    check_size(forecast.estimate.grid_images)
    if facts is not None:
        need = forecast.estimate.vram_needed_gb
        check_free_memory(gpus, facts.gpus, need, force=request.force or spec.smoke)
    run_id = make_run_id(spec.output_name, now, forecast.rendered.inputs_hash + digest)
    from kohyawrap.render import relaunch

    return RunPlan(
        run_id=run_id,
        created_at=now.isoformat(timespec="seconds"),
        target=target,
        layout=RemoteLayout(work, run_id),
        spec=host_spec,
        rendered=with_sample_prompts(
            relaunch(forecast.rendered, checkout_dir(request.setup, provisional)), grid.prompts
        ),
        estimate=forecast.estimate,
        model_files=files,
        setup=request.setup,
        dataset_root=str(request.dataset.resolve()),
        dataset_files=data,
        dataset_sha256=digest,
        money=replace(request.money, price_per_hour=forecast.estimate.price_per_hour),
        smoke=spec.smoke,
        pull_state=request.pull_state,
        grid=grid,
        notes=(
            *money_notes(request.money, forecast, facts),
            *grid_notes,
            *_sampling_notes(grid, forecast.rendered.files),
        ),
        gpus=gpus,
    )


def _require_budget(forecast: Forecast, request: TrainRequest, spec: RunSpec, tdir: Any) -> None:
    """``--max-dollars`` below the prediction: refused, naming the cheapest preset that fits."""
    from kohyawrap.forecast import compare_forecasts, require_budget

    if request.money.max_dollars is None or forecast.estimate.dollars <= request.money.max_dollars:
        return
    others = compare_forecasts(
        spec, tdir, bandwidth_mbps=request.bandwidth_mbps, setup=forecast.setup
    )
    require_budget(
        forecast,
        request.money.max_dollars,
        others,
        force_hint=" (--force starts it anyway: the limit still stops it)",
    )


def money_notes(
    money: MoneyOptions, forecast: Forecast, facts: HostFacts | None
) -> tuple[str, ...]:
    """What the plan says about money beyond the estimate: each finish choice's cost, and the
    traps (a limit with nothing saved before the end, a stopped Vast.ai disk)."""
    from kohyawrap.launcher.money import finish_note, provider_of
    from kohyawrap.presets import load_catalog

    rules = load_catalog().rules
    provider = provider_of(money, facts) if facts is not None else money.provider
    disk = (facts.disk_total_bytes or 0) / 1e9 if facts is not None else 0.0
    notes = [
        finish_note(
            provider,
            forecast.estimate.price_per_hour,
            disk or rules.number("typical_disk_gb"),
            rules,
        )
    ]
    settings = forecast.rendered.settings
    if (money.max_dollars or money.max_hours) and not (
        settings.get("save_every_n_epochs") or settings.get("save_every_n_steps")
    ):
        notes.append(
            "no checkpoint is saved before the end (no save_every_n_epochs / save_every_n_steps): "
            "a --max-dollars or --max-hours stop would keep nothing"
        )
    if provider == "vast" and money.on_finish == "stop":
        notes.append(
            "a stopped Vast.ai instance still bills its disk: --on-finish destroy is the "
            "money-saving choice (refused until every checkpoint is safe)"
        )
    return tuple(notes)


def _sampling_notes(grid: GridOptions, files: dict[str, str]) -> tuple[str, ...]:
    from kohyawrap.render import SAMPLE_PROMPTS

    if grid.prompts and SAMPLE_PROMPTS not in files:
        return ("no samples during training on this card (sample_every_n_epochs = 0): your "
                "--sample-prompts are drawn by the grid only",)  # fmt: skip
    return ()
