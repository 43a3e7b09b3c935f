"""How sd-scripts sorts images into aspect-ratio buckets, and how many batches an epoch has.

A faithful re-implementation (not a copy) of sd-scripts' bucketing at the pinned commit:
``library/model_util.make_bucket_resolutions`` (the predefined bucket list),
``library/train_util.BucketManager.select_bucket`` (nearest aspect ratio, or size-derived buckets
with ``bucket_no_upscale``), ``BaseDataset.make_buckets`` (images × repeats fill buckets; each
bucket gives ceil(count / batch size) batches) and ``DreamBoothDataset``'s handling of
regularisation images (they are repeated until they match the training images). Pure: the only
input read is the model preset file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kohyawrap.errors import ConfigError, UsageError, did_you_mean
from kohyawrap.sdscripts import FAMILIES

_BUCKET_KEYS = (
    "resolution",
    "enable_bucket",
    "min_bucket_reso",
    "max_bucket_reso",
    "bucket_reso_steps",
    "bucket_no_upscale",
)


@dataclass(frozen=True)
class BucketSettings:
    """The sd-scripts options that decide bucketing (same names as the training options)."""

    resolution: tuple[int, int]  # (width, height)
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False


@dataclass(frozen=True)
class SubsetSizes:
    """One concept (or regularisation) folder as the bucketer sees it."""

    sizes: tuple[tuple[int, int], ...]  # (width, height) of each image AFTER our EXIF transpose
    repeats: int
    is_reg: bool = False


@dataclass(frozen=True)
class BatchCount:
    """Buckets and batches of one epoch, as sd-scripts would print them."""

    buckets: dict[tuple[int, int], int]  # bucket (w, h) -> images × repeats placed in it
    batches_per_epoch: int
    images_with_repeats: int  # train images × repeats (what sd-scripts prints)
    reg_images_with_repeats: int


# ---------------------------------------------------------------------------------------------
# Settings


def bucket_settings_for(model: str, overrides: Mapping[str, Any] | None = None) -> BucketSettings:
    """Bucket settings of a model preset (``presets/models/<model>.toml`` ``[dataset]``).

    ``overrides`` uses sd-scripts' option names (``resolution`` as ``"512"``, ``"512,768"``, an
    int or a ``[w, h]`` list; ``enable_bucket``, ``min_bucket_reso``, ...). Other keys are
    ignored, so a whole training-options mapping can be passed.
    """
    return bucket_settings_from(
        _preset_dataset_table(model),
        _preset_family(model),
        overrides,
        where=f"presets/models/{model}.toml [dataset]",
    )


def bucket_settings_from(
    dataset: Mapping[str, Any],
    family: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    where: str = "[dataset]",
) -> BucketSettings:
    """Bucket settings from a model preset's ``[dataset]`` table (any preset, user ones too) and
    its family (which decides the bucket_reso_steps multiple sd-scripts asserts)."""
    table = dict(dataset)
    table.update({k: v for k, v in (overrides or {}).items() if k in _BUCKET_KEYS})
    settings = BucketSettings(
        resolution=parse_resolution(table.get("resolution"), where=where),
        enable_bucket=_bool(table, "enable_bucket", True, where),
        min_bucket_reso=_int(table, "min_bucket_reso", 256, where),
        max_bucket_reso=_int(table, "max_bucket_reso", 1024, where),
        bucket_reso_steps=_int(table, "bucket_reso_steps", 64, where),
        bucket_no_upscale=_bool(table, "bucket_no_upscale", False, where),
    )
    check_settings(settings, family)
    return settings


def model_min_short_side(model: str) -> int:
    """The preset's ``min_short_side``: below it an image is upscaled for training."""
    table = _preset_dataset_table(model)
    value = table.get("min_short_side", min(parse_resolution(table.get("resolution"))))
    return int(value)


def parse_resolution(value: Any, *, where: str = "resolution") -> tuple[int, int]:
    """``512`` / ``"512"`` -> (512, 512); ``"512,768"`` / ``[512, 768]`` -> (512, 768) (w, h)."""
    parts: list[Any]
    if isinstance(value, bool) or value is None:
        parts = []
    elif isinstance(value, int):
        parts = [value]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = []
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) <= 0:
        raise ConfigError(
            f"resolution {value!r} is not a size",
            where=where,
            hint='write it as "512" or "512,768" (width,height)',
        )
    return (sizes[0], sizes[-1])


def check_settings(settings: BucketSettings, family: str | None = None) -> None:
    """Raise ConfigError where sd-scripts would stop on these settings (its start-up assertions)."""
    if not settings.enable_bucket:
        return
    steps = settings.bucket_reso_steps
    # sdxl/sd3 scripts accept steps divisible by 32, train_network.py and FLUX.1 need 64 (docs/sources.md
    # [5]; the multiple is in sdscripts.FAMILIES).
    need = FAMILIES[family].bucket_multiple if family in FAMILIES else 64
    if steps <= 0 or steps % need:
        raise ConfigError(
            f"bucket_reso_steps {steps} must be a multiple of {need} for this model",
            hint=f"use {need} or a multiple of it",
        )
    low, high = _effective_min_max(settings)
    w, h = settings.resolution
    if low <= 0:
        raise ConfigError(
            f"min_bucket_reso {settings.min_bucket_reso} rounds down to 0 at bucket_reso_steps "
            f"{steps} (sd-scripts would divide by zero)",
            hint=f"use a min_bucket_reso of at least {steps}",
        )
    if min(w, h) < low:
        raise ConfigError(
            f"min_bucket_reso {settings.min_bucket_reso} is larger than the resolution {w}x{h}",
            hint="lower min_bucket_reso or raise the resolution",
        )
    if max(w, h) > high:
        raise ConfigError(
            f"max_bucket_reso {settings.max_bucket_reso} is smaller than the resolution {w}x{h}",
            hint="raise max_bucket_reso or lower the resolution",
        )


# ---------------------------------------------------------------------------------------------
# Buckets


def bucket_resolutions(settings: BucketSettings) -> list[tuple[int, int]]:
    """The predefined buckets, sorted. One bucket when bucketing is off; none with no_upscale
    (then each image's bucket is derived from its own size)."""
    if not settings.enable_bucket:
        return [settings.resolution]
    if settings.bucket_no_upscale:
        return []
    low, high = _effective_min_max(settings)
    steps = settings.bucket_reso_steps
    area = settings.resolution[0] * settings.resolution[1]
    side = int(math.sqrt(area) // steps) * steps
    resos = {(side, side)}
    for width in range(max(low, steps), high + 1, steps):  # low 0: see check_settings
        height = min(high, int((area // width) // steps) * steps)
        if height >= low:
            resos.add((width, height))
            resos.add((height, width))
    return sorted(resos)


def select_bucket(size: tuple[int, int], settings: BucketSettings) -> tuple[int, int]:
    """The bucket sd-scripts puts an image of ``size`` (w, h) into."""
    return place(size, settings, bucket_resolutions(settings))[0]


def place(
    size: tuple[int, int],
    settings: BucketSettings,
    resos: Sequence[tuple[int, int]],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(bucket, resized size) for an image; ``resos`` is ``bucket_resolutions(settings)``.

    The image is scaled to ``resized`` and then centre-cropped to ``bucket``.
    """
    if settings.enable_bucket and settings.bucket_no_upscale:
        return _place_no_upscale(size, settings)
    return _place_predefined(size, resos)


def _place_predefined(
    size: tuple[int, int], resos: Sequence[tuple[int, int]]
) -> tuple[tuple[int, int], tuple[int, int]]:
    width, height = size
    aspect = width / height
    if size in resos:
        bucket = size
    else:
        # Nearest aspect ratio; on a tie the first in sorted order wins (numpy argmin).
        errors = [abs(w / h - aspect) for w, h in resos]
        bucket = resos[errors.index(min(errors))]
    # Wider than the bucket: match heights and crop the sides; else match widths.
    scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    return bucket, resized


def _place_no_upscale(
    size: tuple[int, int], settings: BucketSettings
) -> tuple[tuple[int, int], tuple[int, int]]:
    width, height = size
    steps = settings.bucket_reso_steps
    max_area = settings.resolution[0] * settings.resolution[1]
    resized = size
    if width * height > max_area:
        resized = _shrink_to_area(width / height, max_area, steps)
    # Never pad: the bucket is the resized size rounded DOWN to the step, the rest is cropped.
    bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    return bucket, resized


def _shrink_to_area(aspect: float, max_area: int, steps: int) -> tuple[int, int]:
    def round_to_steps(x: float) -> int:
        n = int(x + 0.5)
        return n - n % steps

    width = math.sqrt(max_area * aspect)
    height = max_area / width
    # Round either side to the step and keep the variant whose aspect ratio is closer.
    # A side that rounds to 0 (aspect ratios beyond ~area/step²) makes sd-scripts divide by
    # zero; here that variant just loses.
    w_rounded = round_to_steps(width)
    h_in_w = round_to_steps(w_rounded / aspect)
    ar_by_width = w_rounded / h_in_w if h_in_w else math.inf
    h_rounded = round_to_steps(height)
    ar_by_height = round_to_steps(h_rounded * aspect) / h_rounded if h_rounded else math.inf
    if abs(ar_by_width - aspect) < abs(ar_by_height - aspect):
        return (w_rounded, int(w_rounded / aspect + 0.5))
    return (int(h_rounded * aspect + 0.5), h_rounded)


# ---------------------------------------------------------------------------------------------
# Batches and steps


def count_batches(
    subsets: Sequence[SubsetSizes], settings: BucketSettings, batch_size: int
) -> BatchCount:
    """Buckets and batches per epoch for these subsets, as one sd-scripts DreamBooth dataset.

    Subsets with repeats < 1 or no images are skipped, as sd-scripts does. Images of size 0 (which
    sd-scripts could not read) are left out.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, not {batch_size}")
    used = [s for s in subsets if s.repeats >= 1 and s.sizes]
    train = [(size, s.repeats) for s in used if not s.is_reg for size in s.sizes]
    reg = [(size, s.repeats) for s in used if s.is_reg for size in s.sizes]
    num_train = sum(r for _, r in train)
    placed = [*train, *_repeat_reg(reg, num_train)]
    resos = bucket_resolutions(settings)
    buckets: dict[tuple[int, int], int] = {}
    for size, repeats in placed:
        if min(size) <= 0:
            continue
        bucket = place(size, settings, resos)[0]
        buckets[bucket] = buckets.get(bucket, 0) + repeats
    ordered = dict(sorted(buckets.items()))
    batches = sum(math.ceil(n / batch_size) for n in ordered.values())
    return BatchCount(
        buckets=ordered,
        batches_per_epoch=batches,
        images_with_repeats=num_train,
        reg_images_with_repeats=sum(r for _, r in reg),
    )


def _repeat_reg(
    reg: list[tuple[tuple[int, int], int]], num_train: int
) -> list[tuple[tuple[int, int], int]]:
    """The reg images sd-scripts actually uses: taken in order with their own repeats until they
    reach the train count, then one more repeat each, round after round, until they match it."""
    used: list[tuple[tuple[int, int], int]] = []
    if not reg:
        return used
    total = 0
    for size, repeats in reg:
        if total >= num_train:
            break
        used.append((size, repeats))
        total += repeats
    index = 0
    while total < num_train:
        size, repeats = used[index]
        used[index] = (size, repeats + 1)
        total += 1
        index = (index + 1) % len(used)
    return used


def batches_per_process(batches_per_epoch: int, processes: int = 1) -> int:
    """Batches each of ``processes`` training processes sees in an epoch.

    accelerate deals the epoch's batches out in turn to the processes and, by default
    (``even_batches``, which sd-scripts does not change), tops the last round up so every process
    gets the same number: ceil(batches / processes) (docs/scale.md, "Steps with N processes").
    """
    return math.ceil(batches_per_epoch / max(1, processes))


def total_steps(
    batches_per_epoch: int,
    epochs: int,
    gradient_accumulation_steps: int = 1,
    processes: int = 1,
) -> int:
    """Optimizer steps for ``epochs`` epochs, as sd-scripts derives ``max_train_steps`` from
    ``max_train_epochs``: epochs × ceil(batches / processes / accumulation)."""
    accumulation = max(1, gradient_accumulation_steps)
    return epochs * math.ceil(batches_per_epoch / max(1, processes) / accumulation)


# sd-scripts' --max_train_steps default, used when max_train_epochs is not set (docs/sources.md [3]).
DEFAULT_MAX_TRAIN_STEPS = 1600


@dataclass(frozen=True)
class TrainingLength:
    """The options that decide how long sd-scripts trains (its option names), and where they
    came from: ``basis`` is said beside every step count made with them. ``processes`` is the
    number of training processes (GPUs) accelerate launches: each sees a share of the batches."""

    train_batch_size: int = 1
    max_train_epochs: int | None = None
    max_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    basis: str = ""
    processes: int = 1


@dataclass(frozen=True)
class StepCount:
    """Optimizer steps of a run and the option that decided them."""

    total_steps: int
    epochs: int
    decided_by: str  # "max_train_epochs", "max_train_steps" or "default" (1600 steps)


def count_training_steps(batches_per_epoch: int, length: TrainingLength) -> StepCount:
    """Steps as sd-scripts counts them: max_train_epochs wins over max_train_steps, which
    defaults to 1600. The one count behind ``plan``, ``dataset build`` and ``dataset lint``.

    With N processes each optimizer step is taken by all of them at once on their own batches,
    so an epoch has ceil(ceil(batches / N) / accumulation) steps; the epochs sd-scripts runs for
    a step budget are counted from that per-process length, as it does.
    """
    processes = max(1, length.processes)
    accumulation = max(1, length.gradient_accumulation_steps)
    per_epoch = math.ceil(batches_per_process(batches_per_epoch, processes) / accumulation)
    if length.max_train_epochs is not None:
        epochs = length.max_train_epochs
        steps = total_steps(batches_per_epoch, epochs, accumulation, processes)
        return StepCount(steps, epochs, "max_train_epochs")
    if length.max_train_steps is not None:
        steps, decided_by = length.max_train_steps, "max_train_steps"
    else:
        steps, decided_by = DEFAULT_MAX_TRAIN_STEPS, "default"
    return StepCount(steps, math.ceil(steps / max(1, per_epoch)), decided_by)


# ---------------------------------------------------------------------------------------------
# Helpers


def _effective_min_max(settings: BucketSettings) -> tuple[int, int]:
    """sd-scripts rounds min_bucket_reso down and max_bucket_reso up to a multiple of the step."""
    steps = settings.bucket_reso_steps
    low, high = settings.min_bucket_reso, settings.max_bucket_reso
    if steps > 0:
        low -= low % steps
        if high % steps:
            high += steps - high % steps
    return low, high


def _preset_dataset_table(model: str) -> Mapping[str, Any]:
    import tomlkit

    from kohyawrap.resources import presets_dir

    folder = presets_dir() / "models"
    path = folder / f"{model}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.toml"))
        raise UsageError(
            f"unknown model {model!r}",
            evidence=[f"known models: {', '.join(known)}"],
            hint=did_you_mean(model, known),
        )
    data = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
    table = data.get("dataset", {})
    if not isinstance(table, dict):
        raise ConfigError("[dataset] is not a table", where=str(path))
    return table


def _preset_family(model: str) -> str:
    """The ``[model] family`` of a shipped model preset (its name when the file gives none)."""
    import tomlkit

    from kohyawrap.resources import presets_dir

    data = tomlkit.parse((presets_dir() / "models" / f"{model}.toml").read_text("utf-8")).unwrap()
    family = data.get("model", {}).get("family", model)
    return str(family)


def _int(table: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be a whole number, not {value!r}", where=where)
    return value


def _bool(table: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, not {value!r}", where=where)
    return value
