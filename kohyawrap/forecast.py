"""What a run will cost before anything is rented: steps, time, VRAM fit and dollars.

Steps are counted exactly as sd-scripts counts them (repeats, buckets, batch, epochs, gradient
accumulation) by the dataset package's bucket simulation. Time and VRAM come from the GPU and
model presets (each number sourced there) and presets/tiers.toml [plan]. Pure: the dataset is
passed in already scanned, the clock is not read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from kohyawrap.dataset.buckets import (
    BatchCount,
    BucketSettings,
    TrainingLength,
    batches_per_process,
    bucket_settings_from,
    count_batches,
    count_training_steps,
)
from kohyawrap.dataset.lint import LintReport, lint
from kohyawrap.errors import DatasetError, UsageError
from kohyawrap.evaluate.gridplan import (
    call_count,
    estimate_seconds,
    image_count,
    planned_checkpoints,
)
from kohyawrap.evaluate.options import GridOptions
from kohyawrap.evaluate.prompts import concept_prompts, concepts_from_folders
from kohyawrap.models import Estimate, RenderedRun, RunSpec
from kohyawrap.presets import Catalog, GpuPreset, ModelPreset, Rules, load_catalog, resolve
from kohyawrap.prompts import count_prompts
from kohyawrap.render import SAMPLE_PROMPTS, dataset_options, render_run

if TYPE_CHECKING:
    from kohyawrap.dataset.scan import TrainingDir

Setup = Literal["cold", "warm"]
Installer = Literal["uv", "pip"]
# Set-up steps that run at once (the launcher's PREPARE stage): set-up waits for the longest.
_AT_ONCE = ("install", "model download", "dataset upload")


@dataclass(frozen=True)
class Steps:
    """How sd-scripts will count the run: images x repeats -> buckets -> batches -> steps."""

    images: int
    reg_images: int
    images_with_repeats: int
    reg_images_with_repeats: int
    batch_size: int
    batches_per_epoch: int
    gradient_accumulation_steps: int
    epochs: int
    total_steps: int
    basis: str  # which option decided the length
    buckets: Mapping[tuple[int, int], int]
    # Training processes (one per GPU) and what each sees: its share of an epoch's batches, and
    # the images one optimizer step learns from (batch x processes x accumulation).
    processes: int = 1
    batches_per_process: int = 0
    effective_batch_size: int = 0

    def to_json(self) -> dict[str, Any]:
        """The breakdown as data (bucket keys as "WxH")."""
        data = asdict(self)
        data["buckets"] = {f"{w}x{h}": n for (w, h), n in self.buckets.items()}
        return data


@dataclass(frozen=True)
class Part:
    """One part of the wall-clock estimate, with how it was worked out."""

    name: str
    seconds: float
    basis: str


@dataclass(frozen=True)
class Forecast:
    """A rendered run with its step count, time/VRAM/dollar estimate and their breakdowns."""

    rendered: RenderedRun
    estimate: Estimate
    steps: Steps
    stages: tuple[Part, ...]
    vram: tuple[Part, ...]  # VRAM parts in GB (``seconds`` holds gigabytes here)
    gpu_title: str
    seconds_per_step: float
    price_basis: str
    setup: Setup

    @property
    def total_seconds(self) -> float:
        """Wall-clock seconds, setup to results pulled back (and the grid, when planned)."""
        return (
            self.estimate.train_seconds + self.estimate.setup_seconds + self.estimate.grid_seconds
        )

    def to_json(self) -> dict[str, Any]:
        """The plan as data (``kohyawrap plan --json``)."""
        return {
            "gpu": self.estimate.gpu,
            "gpu_title": self.gpu_title,
            "model": self.rendered.spec.model,
            "script": self.rendered.script,
            "inputs_hash": self.rendered.inputs_hash,
            "setup": self.setup,
            "steps": self.steps.to_json(),
            "seconds_per_step": round(self.seconds_per_step, 3),
            "stages": [asdict(s) for s in self.stages],
            "vram_gb": [
                {"part": s.name, "gb": round(s.seconds, 2), "basis": s.basis} for s in self.vram
            ],
            "estimate": asdict(self.estimate),
            "total_seconds": round(self.total_seconds, 1),
            "price_basis": self.price_basis,
            "settings": self.rendered.settings,
        }


# ---------------------------------------------------------------------------------------------
# Steps


def _pixels(resolution: Any) -> int:
    width, _, height = str(resolution).partition(",")
    return int(width) * int(height or width)


def _bucket_settings(options: Mapping[str, Any], model: ModelPreset) -> BucketSettings:
    # bucket_settings_from reads only the bucketing options out of the full set.
    return bucket_settings_from(model.dataset, model.family, options, where=model.path)


def count_steps(rendered: RenderedRun, tdir: TrainingDir, model: ModelPreset) -> Steps:
    """Batches and optimizer steps exactly as sd-scripts will count them for this dataset."""
    options = dataset_options(rendered)
    buckets = _bucket_settings(options, model)
    length = replace(training_length(options), processes=rendered.spec.processes)
    batch = length.train_batch_size
    counted: BatchCount = count_batches(tdir.subset_sizes(), buckets, batch)
    if counted.images_with_repeats == 0:
        raise DatasetError(
            f"no training images in {tdir.root}: sd-scripts would stop with 'No data found'",
            hint="train_data_dir must be the PARENT of <repeats>_<concept> image folders",
        )
    count = count_training_steps(counted.batches_per_epoch, length)
    basis = {"default": "max_train_steps (sd-scripts default 1600)"}.get(
        count.decided_by, count.decided_by
    )
    return Steps(
        images=sum(len(s.images) for s in tdir.subsets if not s.is_reg),
        reg_images=sum(len(s.images) for s in tdir.subsets if s.is_reg),
        images_with_repeats=counted.images_with_repeats,
        reg_images_with_repeats=counted.reg_images_with_repeats,
        batch_size=batch,
        batches_per_epoch=counted.batches_per_epoch,
        gradient_accumulation_steps=length.gradient_accumulation_steps,
        epochs=count.epochs,
        total_steps=count.total_steps,
        basis=basis,
        buckets=counted.buckets,
        processes=length.processes,
        batches_per_process=batches_per_process(counted.batches_per_epoch, length.processes),
        effective_batch_size=batch * length.processes * length.gradient_accumulation_steps,
    )


def training_length(options: Mapping[str, Any], basis: str = "") -> TrainingLength:
    """The options that decide the step count (batch, epochs or steps, accumulation)."""
    epochs, steps = options.get("max_train_epochs"), options.get("max_train_steps")
    return TrainingLength(
        train_batch_size=int(options.get("train_batch_size", 1)),
        max_train_epochs=int(epochs) if epochs is not None else None,
        max_train_steps=int(steps) if steps is not None else None,
        gradient_accumulation_steps=int(options.get("gradient_accumulation_steps", 1)),
        basis=basis,
    )


@dataclass(frozen=True)
class PresetSteps:
    """What the presets say decides a dataset's step count: buckets and training length."""

    family: str
    bucket: BucketSettings
    length: TrainingLength
    min_short_side: int  # below it an image is upscaled for training (the linter warns)


def preset_steps(
    model: str,
    gpu: str | None = None,
    *,
    given: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
) -> PresetSteps:
    """Buckets, batch size and length for ``dataset build`` / ``dataset lint``, from the same
    presets ``plan`` renders (model < GPU tier < ``given``), so all three count alike.

    Without ``gpu`` the model preset alone decides and the batch size is sd-scripts' default 1
    (the tiers set it per card); ``length.basis`` says so, and lists what was ``given``
    (sd-scripts option names: train_batch_size, max_train_epochs, ...).
    """
    catalog = catalog if catalog is not None else load_catalog()
    preset = catalog.model(model)
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if gpu:
        resolved = resolve(catalog, gpu, model)
        options = resolved.values()
        tier = f", {resolved.tier.label}" if resolved.tier else ""
        source, batch_note = f"presets {preset.name} + {resolved.gpu.name}{tier}", ""
    else:
        options = {**dict(preset.dataset), **{s.key: s.value for s in preset.train}}
        source = f"preset {preset.name}"
        batch_note = " (assumed with no --gpu: a GPU preset's tier sets it, as in `plan`)"
    if "max_train_steps" in given and "max_train_epochs" not in given:
        options.pop("max_train_epochs", None)  # steps given alone: they decide, not the preset
    options.update(given)
    length = training_length(options)
    if "train_batch_size" in given:
        batch_note = " (given)"
    parts = [f"batch size {length.train_batch_size}{batch_note}"]
    if length.max_train_epochs is not None:
        parts.append(f"{length.max_train_epochs} epochs")
    elif length.max_train_steps is not None:
        parts.append(f"{length.max_train_steps} steps")
    if length.gradient_accumulation_steps != 1:
        parts.append(f"gradient accumulation {length.gradient_accumulation_steps}")
    others = [f"{k}={v}" for k, v in sorted(given.items()) if k != "train_batch_size"]
    basis = f"{source}: {', '.join(parts)}" + (f"; given {', '.join(others)}" if others else "")
    return PresetSteps(
        family=preset.family,
        bucket=_bucket_settings(options, preset),
        length=replace(length, basis=basis),
        min_short_side=int(preset.dataset.get("min_short_side", preset.resolution)),
    )


# ---------------------------------------------------------------------------------------------
# Time and memory


def seconds_per_step(
    gpu: GpuPreset, model: ModelPreset, options: Mapping[str, Any], rules: Rules
) -> tuple[float, str]:
    """Seconds per optimizer step on ``gpu`` for these options, and how it was derived."""
    speed = gpu.speed.get(model.family) or gpu.speed.get(model.name)
    if speed is None:
        raise UsageError(
            f"GPU preset {gpu.name} has no [speed.{model.family}] table", where=gpu.path
        )
    scale = _pixels(options.get("resolution", model.resolution)) / model.resolution**2
    factors = [f"{scale:.2f}x pixels"] if scale != 1 else []
    per_image = speed.s_per_image * scale
    if options.get("gradient_checkpointing"):
        per_image *= rules.number("checkpointing_slowdown")
        factors.append("gradient checkpointing")
    if not options.get("network_train_unet_only"):
        per_image *= rules.number("text_encoder_training_slowdown")
        factors.append("text encoder trained")
    if options.get("cpu_offload_checkpointing"):
        per_image *= rules.number("cpu_offload_slowdown")
        factors.append("cpu_offload_checkpointing")
    batch = int(options.get("train_batch_size", 1))
    accumulation = int(options.get("gradient_accumulation_steps", 1))
    swap = swap_seconds(model, options, rules)
    seconds = (speed.step_overhead_s + swap + batch * per_image) * accumulation
    basis = (
        f"{speed.step_overhead_s:g} s + {batch} x {per_image:.3f} s/image "
        f"({gpu.name} [speed.{model.family}]"
    )
    if swap:
        factors.append(f"+{swap:.2f} s moving {_swapped(model, options)} swapped blocks")
    return seconds, basis + (", " + ", ".join(factors) if factors else "") + ")"


def _swapped(model: ModelPreset, options: Mapping[str, Any]) -> int:
    """How many blocks ``blocks_to_swap`` keeps off the card (0 for models without blocks)."""
    value = options.get("blocks_to_swap")
    if not model.vram.block_count or isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, min(value, model.vram.block_count))


def _weight_scale(options: Mapping[str, Any]) -> float:
    """fp8_base (and fp8_base_unet) store the transformer in 1 byte per weight instead of 2."""
    return 0.5 if options.get("fp8_base") or options.get("fp8_base_unet") else 1.0


def swap_seconds(model: ModelPreset, options: Mapping[str, Any], rules: Rules) -> float:
    """Seconds per step spent moving swapped blocks to the card and back (blocks_to_swap)."""
    swapped = _swapped(model, options)
    if not swapped:
        return 0.0
    block_gb = model.vram.weights_gb * _weight_scale(options) / model.vram.block_count
    return 2 * swapped * block_gb / rules.number("swap_gb_s")


def vram_parts(model: ModelPreset, options: Mapping[str, Any]) -> tuple[Part, ...]:
    """The VRAM estimate in parts (GB in ``Part.seconds``): weights, text encoders, activations."""
    v = model.vram
    full_precision = options.get("mixed_precision", "no") == "no"
    parts = [
        Part(
            "weights and optimizer",
            v.base_gb * (2 if full_precision else 1),
            "base_gb" + (" x2 (no mixed precision)" if full_precision else ""),
        )
    ]
    if v.weights_gb:
        parts.append(_transformer_part(model, options, full_precision))
    cached = options.get("cache_text_encoder_outputs") or options.get(
        "cache_text_encoder_outputs_to_disk"
    )  # sd-scripts turns caching on when _to_disk is set
    if not cached:
        parts.append(
            Part("text encoders", v.text_encoder_gb, "text_encoder_gb (outputs not cached)")
        )
    checkpointed = bool(options.get("gradient_checkpointing"))
    per_image = v.per_image_checkpointed_gb if checkpointed else v.per_image_gb
    scale = _pixels(options.get("resolution", model.resolution)) / model.resolution**2
    batch = int(options.get("train_batch_size", 1))
    basis = f"{batch} x {per_image:g} GB{' (checkpointed)' if checkpointed else ''}" + (
        f" x {scale:.2f} pixels" if scale != 1 else ""
    )
    parts.append(Part("activations", batch * per_image * scale, basis))
    return tuple(parts)


def _transformer_part(model: ModelPreset, options: Mapping[str, Any], full: bool) -> Part:
    """The DiT weights on the card: halved by fp8_base, less the blocks swapped to the CPU."""
    v = model.vram
    scale = _weight_scale(options)
    swapped = _swapped(model, options)
    resident = (v.block_count - swapped) / v.block_count if v.block_count else 1.0
    gb = v.weights_gb * scale * resident * (2 if full and scale == 1 else 1)
    basis = f"weights_gb {v.weights_gb:g}" + (" x0.5 (fp8_base)" if scale != 1 else "")
    basis += " x2 (no mixed precision)" if full and scale == 1 else ""
    if swapped:
        basis += f" x {v.block_count - swapped}/{v.block_count} on the card ({swapped} swapped)"
    return Part("transformer weights", gb, basis)


def download_gb(model: ModelPreset) -> float:
    """GB a cold host downloads for this preset: the base model plus its default companion
    files (FLUX.1: clip_l, t5xxl, ae)."""
    extra = sum(f.size_gb or 0.0 for key, f in model.files.items() if key != "base")
    return model.vram.model_download_gb + extra


def _sample_images(rendered: RenderedRun, epochs: int) -> int:
    # The prompt file the config names: kohyawrap's, or the user's own (.txt, .toml or .json).
    name = str(rendered.settings.get("sample_prompts", SAMPLE_PROMPTS))
    prompts = count_prompts(name, rendered.files.get(name, ""))
    every = rendered.settings.get("sample_every_n_epochs")
    return prompts * (epochs // every) if isinstance(every, int) and every > 0 else 0


def _checkpoints(settings: Mapping[str, Any], epochs: int) -> int:
    every = settings.get("save_every_n_epochs")
    numbered = (epochs - 1) // every if isinstance(every, int) and every > 0 else 0
    return numbered + 1  # the final model is always written (docs/sources.md [4])


def _stages(
    plan_in: _Inputs,
    steps: Steps,
    per_step: tuple[float, str],
    bandwidth: float,
    setup: Setup,
    installer: Installer = "pip",
) -> tuple[Part, ...]:
    rules, model, options = plan_in.rules, plan_in.model, plan_in.options
    n = rules.number
    host = n("host_download_mb_s")
    per_image = _per_image(plan_in)
    cold = setup == "cold"
    upload_mb = sum(w * h for w, h in plan_in.sizes) * n("image_bytes_per_pixel") / 1e6
    dim = int(options.get("network_dim", 4))
    pull_mb = (
        _checkpoints(plan_in.rendered.settings, steps.epochs) * model.vram.lora_mb_per_dim * dim
    )
    samples = _sample_images(plan_in.rendered, steps.epochs)
    install = (
        n("install_download_gb") * 1000 / host + n(f"install_{installer}_s")
        if cold
        else n("install_warm_s")
    )
    model_gb = download_gb(model)
    companions = " (with its companion files)" if len(model.files) > 1 else ""
    load_s = model.plan.get("model_load_s", n("model_load_s"))
    sample_steps = model.sample.steps or n("sample_steps")
    caching = len(plan_in.sizes) * per_image * n("latent_cache_fraction")
    parts = (
        Part("connect", n("ssh_connect_s"), "SSH connect and checks"),
        Part(
            "install",
            install,
            f"torch + sd-scripts requirements at {host:g} MB/s, {installer}"
            if cold
            else "venv already there",
        ),
        Part(
            "model download",
            model_gb * 1000 / host if cold else 0.0,
            f"{model_gb:g} GB{companions} at {host:g} MB/s"
            if cold
            else "model already on the host",
        ),
        Part("dataset upload", upload_mb / bandwidth, f"~{upload_mb:.0f} MB at {bandwidth:g} MB/s"),
        Part("model load", load_s, "sd-scripts start-up and model load"),
        Part(
            "latent caching",
            caching if options.get("cache_latents") else 0.0,
            f"{len(plan_in.sizes)} images, one VAE encode each",
        ),
        Part(
            "training",
            steps.total_steps * per_step[0],
            f"{steps.total_steps} steps x {per_step[0]:.2f} s = {per_step[1]}",
        ),
        Part(
            "sampling",
            samples * sample_steps * per_image * n("sampling_fraction"),
            f"{samples} sample images x {sample_steps:g} steps",
        ),
        Part("pull results", pull_mb / bandwidth, f"~{pull_mb:.0f} MB of checkpoints"),
    )
    return _overlapped(parts)


def _overlapped(parts: tuple[Part, ...]) -> tuple[Part, ...]:
    """``parts`` plus what running install, model download and upload at once saves (a negative
    part, so every part still shows what it takes alone)."""
    at_once = [p.seconds for p in parts if p.name in _AT_ONCE]
    saved = sum(at_once) - max(at_once, default=0.0)
    if saved <= 0:
        return parts
    where = max(i for i, p in enumerate(parts) if p.name in _AT_ONCE) + 1
    part = Part("at once", -saved, "install, model download and upload overlap: the longest counts")
    return (*parts[:where], part, *parts[where:])


def grid_prompt_count(grid: GridOptions, tdir: TrainingDir) -> int:
    """The grid's prompts: the user's, else two per concept folder (at least one prompt)."""
    if grid.prompts:
        return len(grid.prompts)
    concepts = concepts_from_folders(
        [s.class_tokens for s in tdir.subsets if not s.is_reg],
        [s.class_tokens for s in tdir.subsets if s.is_reg],
    )
    return max(1, len(concept_prompts(concepts)))


def _grid_part(
    plan_in: _Inputs, steps: Steps, grid: GridOptions, tdir: TrainingDir
) -> tuple[Part, int]:
    """After training, on the same card: a model load per checkpoint, then each image (sampled
    like the in-training samples: [plan] sample_steps denoising steps at sampling_fraction)."""
    every = plan_in.rendered.settings.get("save_every_n_epochs")
    checkpoints = planned_checkpoints(grid, steps.epochs, every if isinstance(every, int) else None)
    prompts = grid_prompt_count(grid, tdir)
    images = image_count(checkpoints, grid, prompts)
    per_image, load = _grid_rates(plan_in)
    calls = call_count(checkpoints, grid)
    seconds = estimate_seconds(images, calls, per_image, load)
    basis = (
        f"{images} images ({checkpoints} checkpoint(s) x {len(grid.strengths)} strengths x "
        f"{grid.seeds} seeds x {prompts} prompt(s)), {per_image:.2f} s each + {calls} "
        "model load(s)"
    )
    return Part("grid", seconds, basis), images


def _per_image(plan_in: _Inputs) -> float:
    """Seconds of one training image on this card at this resolution (the speed preset)."""
    model, gpu, options = plan_in.model, plan_in.gpu, plan_in.options
    speed = gpu.speed.get(model.family) or gpu.speed[model.name]
    return (
        speed.s_per_image
        * _pixels(options.get("resolution", model.resolution))
        / model.resolution**2
    )


def _grid_rates(plan_in: _Inputs) -> tuple[float, float]:
    n = plan_in.rules.number
    return _per_image(plan_in) * n("sample_steps") * n("sampling_fraction"), n("model_load_s")


def grid_rates(
    spec: RunSpec, settings: Mapping[str, Any], catalog: Catalog | None = None
) -> tuple[float, float]:
    """(seconds per grid image, seconds per model load) of a recorded run, from its presets."""
    catalog = catalog if catalog is not None else load_catalog()
    gpu, model = catalog.gpu(spec.gpu, spec.vram_gb), catalog.model(spec.model)
    rendered = RenderedRun(spec, model.script, {}, (), dict(settings), "")
    inputs = _Inputs(rendered, gpu, model, catalog.rules, settings, ())
    return _grid_rates(inputs)


@dataclass(frozen=True)
class _Inputs:
    rendered: RenderedRun
    gpu: GpuPreset
    model: ModelPreset
    rules: Rules
    options: Mapping[str, Any]
    sizes: tuple[tuple[int, int], ...]


_TRAIN_STAGES = ("training", "sampling")


def build_forecast(
    spec: RunSpec,
    tdir: TrainingDir,
    *,
    price_per_hour: float | None = None,
    bandwidth_mbps: float | None = None,
    setup: Setup = "cold",
    catalog: Catalog | None = None,
    installer: Installer = "pip",
    grid: GridOptions | None = None,
) -> Forecast:
    """Render the run and estimate it. ``bandwidth_mbps`` is the upload/download speed between
    this machine and the host in MB/s (default: presets/tiers.toml [plan] upload_mb_s).
    ``grid``: the evaluation grid drawn after training (its time and dollars are added)."""
    catalog = catalog if catalog is not None else load_catalog()
    rendered = render_run(spec, tdir=tdir, catalog=catalog)
    gpu, model = catalog.gpu(spec.gpu, spec.vram_gb), catalog.model(spec.model)
    options = dataset_options(rendered)
    sizes = tuple(i.stored_size for s in tdir.subsets for i in s.images if i.image_error is None)
    inputs = _Inputs(rendered, gpu, model, catalog.rules, options, sizes)
    steps = count_steps(rendered, tdir, model)
    per_step = seconds_per_step(gpu, model, options, catalog.rules)
    bandwidth = (
        bandwidth_mbps if bandwidth_mbps is not None else catalog.rules.number("upload_mb_s")
    )
    if bandwidth <= 0:
        raise UsageError(f"--bandwidth must be above 0 MB/s, not {bandwidth:g}")
    stages = _stages(inputs, steps, per_step, bandwidth, setup, installer)
    grid_images = 0
    if grid is not None and grid.enabled:
        part, grid_images = _grid_part(inputs, steps, grid, tdir)
        stages = (*stages, part)
    vram = vram_parts(model, options)
    # A job across N GPUs rents N of them: the preset's typical price is per card.
    cards = steps.processes
    price = price_per_hour if price_per_hour is not None else gpu.price_per_hour * cards
    estimate = replace(
        _estimate(gpu, steps, stages, vram, price, catalog.rules),
        seconds_per_step=round(per_step[0], 4),
        grid_images=grid_images,
    )
    notes = (*estimate.notes, *_estimate_notes(gpu, model), *_process_notes(steps, options))
    estimate = replace(estimate, notes=notes)
    basis = "--price" if price_per_hour is not None else f"typical price in {gpu.path}"
    if price_per_hour is None and cards > 1:
        basis = f"{cards} x the typical price in {gpu.path}"
    return Forecast(rendered, estimate, steps, stages, vram, gpu.title, per_step[0], basis, setup)


def _estimate(
    gpu: GpuPreset,
    steps: Steps,
    stages: Iterable[Part],
    vram: Iterable[Part],
    price: float,
    rules: Rules,
) -> Estimate:
    stages = tuple(stages)
    train = sum(s.seconds for s in stages if s.name in _TRAIN_STAGES)
    grid = next((s for s in stages if s.name == "grid"), None)
    other = sum(s.seconds for s in stages if s.name not in (*_TRAIN_STAGES, "grid"))
    grid_seconds = grid.seconds if grid is not None else 0.0
    needed = sum(part.seconds for part in vram)
    usable = gpu.vram_gb * rules.number("usable_vram_fraction")
    fits = needed <= usable
    notes = [] if fits else [
        f"needs ~{needed:.1f} GB of {gpu.vram_gb:g} GB ({usable:.1f} usable): try --set "
        "gradient_checkpointing=true, "
        "a smaller train_batch_size, or a larger card"
    ]  # fmt: skip
    if not gpu.known:
        notes.append(
            f"{gpu.name} has no preset: timed with "
            f"{rules.unknown_gpu['speed_like'].value}'s speeds (estimate)"
        )
    return Estimate(
        gpu=gpu.name,
        steps=steps.total_steps,
        train_seconds=round(train, 1),
        setup_seconds=round(other, 1),
        vram_needed_gb=round(needed, 2),
        vram_available_gb=gpu.vram_gb,
        fits=fits,
        price_per_hour=price,
        dollars=round(price * (train + other + grid_seconds) / 3600, 4),
        notes=tuple(notes),
        grid_seconds=round(grid_seconds, 1),
    )


def _estimate_notes(gpu: GpuPreset, model: ModelPreset) -> list[str]:
    """Say which numbers were not measured (their source comment says "estimate")."""
    notes = []
    speed_source = gpu.sources.get(f"speed.{model.family}.s_per_image", "")
    if "estimate" in speed_source:
        notes.append(
            f"seconds per step are an estimate: {gpu.path} [speed.{model.family}] has no "
            "published measurement behind it"
        )
    vram_source = model.sources.get("vram.per_image_checkpointed_gb", "")
    if model.vram.weights_gb and "estimate" in vram_source:
        notes.append(f"VRAM need is an estimate ({model.path} [vram])")
    return notes


def _process_notes(steps: Steps, options: Mapping[str, Any]) -> list[str]:
    """What changes when one job runs on several GPUs (sd-scripts' own arithmetic)."""
    n = steps.processes
    if n <= 1:
        return []
    notes = [
        f"{n} processes (one per GPU): each takes {steps.batches_per_process} of "
        f"the epoch's {steps.batches_per_epoch} batches; one step learns from "
        f"{steps.effective_batch_size} images (batch {steps.batch_size} x {n} "
        f"GPUs x accumulation {steps.gradient_accumulation_steps})",
        "seconds per step are one GPU's: the gradient exchange between the GPUs is not counted",
    ]
    warmup = options.get("lr_warmup_steps")
    if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup > 0:
        # get_scheduler_fix counts scheduler steps, which accelerate takes N per optimizer step.
        notes.append(
            f"lr_warmup_steps={warmup} counts scheduler steps, {n} per optimizer step with {n} "
            f"GPUs: the warm-up ends after ~{math.ceil(warmup / n)} steps (a fraction such as "
            "0.05 keeps its share)"
        )
    return notes


def lint_forecast(plan: Forecast, tdir: TrainingDir, model: ModelPreset) -> LintReport:
    """The dataset linter run with the plan's own options (batch, epochs, buckets, captions)."""
    options = dataset_options(plan.rendered)
    short = model.dataset.get("min_short_side", model.resolution)
    return lint(
        tdir,
        model=model.name,
        min_short_side=int(short),
        bucket=_bucket_settings(options, model),
        length=training_length(options),
        caption_extension=str(options.get("caption_extension", ".caption")),
    )


def compare_forecasts(
    spec: RunSpec,
    tdir: TrainingDir,
    *,
    bandwidth_mbps: float | None = None,
    setup: Setup = "cold",
    catalog: Catalog | None = None,
) -> tuple[Forecast, ...]:
    """The same run on every GPU preset (each at its typical price), smallest card first."""
    catalog = catalog if catalog is not None else load_catalog()
    gpus = sorted(catalog.gpus.values(), key=lambda g: (g.vram_gb, g.price_per_hour, g.name))
    return tuple(
        build_forecast(
            replace(spec, gpu=g.name, vram_gb=None),
            tdir,
            bandwidth_mbps=bandwidth_mbps,
            setup=setup,
            catalog=catalog,
        )
        for g in gpus
    )


def require_fit(forecast: Forecast, *, force_hint: str = "--force to plan it anyway") -> None:
    """Refuse a run that will not fit in the card's VRAM, with the parts that add up to it.

    The one VRAM-fit refusal: ``plan`` and ``train`` both call it (``--force`` skips it there).
    """
    if forecast.estimate.fits:
        return
    est = forecast.estimate
    raise UsageError(
        f"this run needs ~{est.vram_needed_gb:.1f} GB of VRAM; "
        f"{est.gpu} has {est.vram_available_gb:g} GB",
        evidence=[f"{part.name}: {part.seconds:.1f} GB ({part.basis})" for part in forecast.vram],
        hint="--set gradient_checkpointing=true, --set train_batch_size=1, a larger card "
        f"(`kohyawrap plan --compare`), or {force_hint}",
    )


# ---------------------------------------------------------------------------------------------
# Money: a budget before renting, and what each --on-finish choice costs afterwards


def require_budget(
    forecast: Forecast,
    max_dollars: float | None,
    alternatives: Iterable[Forecast],
    *,
    force_hint: str = "",
) -> None:
    """Refuse a run predicted to cost more than ``--max-dollars``; name the cheapest preset GPU
    that fits the VRAM and the budget (``alternatives``: the same run on every preset)."""
    est = forecast.estimate
    if max_dollars is None or est.dollars <= max_dollars:
        return
    fitting = [
        f
        for f in alternatives
        if f.estimate.fits and f.estimate.dollars <= max_dollars and f.estimate.gpu != est.gpu
    ]
    cheapest = min(fitting, key=lambda f: (f.estimate.dollars, f.estimate.gpu), default=None)
    if cheapest is not None:
        c = cheapest.estimate
        hint = (
            f"--gpu {c.gpu} fits in VRAM and costs ~${c.dollars:.2f} at its typical "
            f"${c.price_per_hour:.2f}/h (`kohyawrap plan --compare`)"
        )
    else:
        hint = (
            "no GPU preset fits both the VRAM and the budget: train fewer steps "
            "(--set max_train_epochs=N)"
        )
    raise UsageError(
        f"this run is predicted to cost ~${est.dollars:.2f}, over --max-dollars ${max_dollars:.2f}",
        evidence=[
            f"{duration_text(forecast.total_seconds)} at ${est.price_per_hour:.2f}/h on {est.gpu}",
            *(f"{p.name}: {duration_text(p.seconds)}" for p in forecast.stages if p.seconds >= 1),
        ],
        hint=f"{hint}; or raise --max-dollars{force_hint}",
    )


def duration_text(seconds: float) -> str:
    """``1h05m``, ``12m30s``, ``45s``; ``-2m00s`` for a saving (set-up steps that overlap)."""
    if seconds < 0:
        return "-" + duration_text(-seconds)
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class FinishChoice:
    """What the host costs per day after the run for one ``--on-finish`` choice."""

    action: str  # none | stop | destroy | shutdown
    provider: str  # runpod | vast | any
    dollars_per_day: float | None  # None: depends on the provider
    note: str


def finish_choices(price_per_hour: float, disk_gb: float, rules: Rules) -> tuple[FinishChoice, ...]:
    """Each choice's cost once the run is over (disk prices sourced in presets/tiers.toml)."""
    per_gb_day = {
        "runpod": rules.number("stopped_disk_runpod_usd_gb_month") / 30,
        "vast": rules.number("stopped_disk_vast_usd_gb_month") / 30,
    }
    return (
        FinishChoice(
            "none", "any", price_per_hour * 24, "the GPU keeps billing until someone stops it"
        ),
        FinishChoice(
            "stop",
            "runpod",
            disk_gb * per_gb_day["runpod"],
            f"disk still billed: {disk_gb:g} GB x ${rules.number('stopped_disk_runpod_usd_gb_month'):.2f}/GB/month",
        ),
        FinishChoice(
            "stop",
            "vast",
            disk_gb * per_gb_day["vast"],
            f"disk still billed: {disk_gb:g} GB x ~${rules.number('stopped_disk_vast_usd_gb_month'):.2f}/GB/month "
            "(each host sets its price)",
        ),
        FinishChoice("destroy", "runpod", 0.0, "nothing billed; the pod and its disk are gone"),
        FinishChoice("destroy", "vast", 0.0, "nothing billed; the instance and its disk are gone"),
        FinishChoice(
            "shutdown",
            "any",
            None,
            "your own machine or VM: a powered-off VM may still bill its disk",
        ),
    )
