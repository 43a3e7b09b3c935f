"""What sd-scripts will make of a training folder, before a GPU is rented: the dataset linter.

Pure: it reads a :class:`~kohyawrap.dataset.scan.TrainingDir` (already scanned) and, for near
duplicates, perceptual hashes computed by the caller (``imaging.file_phash``). Each check names
the sd-scripts behaviour behind it, so a finding says what will actually happen in training.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kohyawrap.dataset.buckets import (
    DEFAULT_MAX_TRAIN_STEPS,
    BatchCount,
    BucketSettings,
    TrainingLength,
    bucket_resolutions,
    count_batches,
    count_training_steps,
    model_min_short_side,
    place,
)
from kohyawrap.models import Finding, Severity

if TYPE_CHECKING:
    from kohyawrap.dataset.scan import ImageInfo, Subset, TrainingDir

STEPS_WARNING = 10_000
# Of 64 perceptual-hash bits: re-encoded and resized copies differ in 0-3, other pictures in ~32.
NEAR_DUPLICATE_BITS = 6
_MIN_DETAIL_BITS = 8  # a hash with fewer set (or unset) bits is a nearly flat picture: not compared
_SD_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_CAPTION_EXTENSIONS = (".txt", ".caption")
_SHOWN = 5  # names listed in one aggregated finding
_WORD = re.compile(r"[^\W_]")  # a letter or digit, in any script
_DEFAULT_LENGTH = TrainingLength()  # batch 1 and sd-scripts' default 1600 steps


@dataclass(frozen=True)
class LintReport:
    """Findings plus the numbers sd-scripts will print: buckets, batches and steps."""

    findings: tuple[Finding, ...]
    batch: BatchCount
    total_steps: int | None
    epochs: int | None = None
    steps_basis: str = "default"  # "epochs", "max_train_steps" or "default" (1600)
    steps_from: str = ""  # where batch size and length came from (presets, given, assumed)
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    model: str = ""
    root: str = ""
    train_images: int = 0
    reg_images: int = 0

    @property
    def errors(self) -> tuple[Finding, ...]:
        """Findings that stop sd-scripts or silently lose data."""
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """Findings that make training worse than intended."""
        return tuple(f for f in self.findings if f.severity == "warning")

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON data (``--json``)."""
        return {
            "root": self.root,
            "model": self.model,
            "ok": not self.errors,
            "counts": {
                s: sum(f.severity == s for f in self.findings) for s in ("error", "warning", "note")
            },
            "findings": [f.to_json() for f in self.findings],
            "train_images": self.train_images,
            "reg_images": self.reg_images,
            "buckets": [
                {"width": w, "height": h, "count": n} for (w, h), n in self.batch.buckets.items()
            ],
            "images_with_repeats": self.batch.images_with_repeats,
            "reg_images_with_repeats": self.batch.reg_images_with_repeats,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "batches_per_epoch": self.batch.batches_per_epoch,
            "epochs": self.epochs,
            "total_steps": self.total_steps,
            "steps_basis": self.steps_basis,
            "steps_from": self.steps_from,
        }


def lint(
    tdir: TrainingDir,
    *,
    model: str,
    bucket: BucketSettings,
    length: TrainingLength = _DEFAULT_LENGTH,
    caption_extension: str = ".txt",
    trigger: str | None = None,
    phashes: Mapping[str, int] | None = None,
    min_short_side: int | None = None,
) -> LintReport:
    """Check a training folder against what sd-scripts will do with it.

    ``length`` (batch size, epochs or steps) decides the step count, as sd-scripts counts it
    (:func:`~kohyawrap.dataset.buckets.count_training_steps`). ``min_short_side`` defaults to the model preset's; ``phashes`` maps image keys
    (``scan.image_key``) to 64-bit perceptual hashes for the near-duplicate check.
    """
    short = min_short_side if min_short_side is not None else model_min_short_side(model)
    findings = [*_folder_findings(tdir)]
    for subset in tdir.subsets:
        findings += _subset_findings(subset, bucket, short, model, caption_extension, trigger)
    findings += _duplicate_findings(tdir, phashes or {})
    batch_size = length.train_batch_size
    batch = count_batches(tdir.subset_sizes(), bucket, batch_size)
    findings += _batch_findings(tdir, batch, batch_size)
    steps, used_epochs, basis = _steps(batch, length)
    findings += _step_findings(steps, used_epochs, basis)
    return LintReport(
        findings=tuple(findings),
        batch=batch,
        total_steps=steps,
        epochs=used_epochs,
        steps_basis=basis,
        steps_from=length.basis,
        batch_size=batch_size,
        gradient_accumulation_steps=length.gradient_accumulation_steps,
        model=model,
        root=str(tdir.root),
        train_images=sum(len(s.images) for s in tdir.subsets if not s.is_reg),
        reg_images=sum(len(s.images) for s in tdir.subsets if s.is_reg),
    )


# ---------------------------------------------------------------------------------------------
# Folders


def _folder_findings(tdir: TrainingDir) -> Iterable[Finding]:
    from kohyawrap.dataset.scan import REG_FOLDER

    for name in tdir.ignored_folders:
        if name == REG_FOLDER:
            # `dataset build` puts regularisation images there; renaming it "10_reg" would
            # train them as a concept.
            yield Finding(
                "note",
                "reg_folder_unused",
                name,
                "regularisation images built by `kohyawrap dataset build`, but another folder is "
                "the reg_data_dir: these are not used (sd-scripts skips the folder); pass it as "
                "reg_data_dir (--reg) to use them, and never rename it like a concept",
            )
            continue
        yield Finding(
            "warning",
            "ignored_folder",
            name,
            "no number prefix: sd-scripts logs 'ignore directory without repeats' and skips it "
            "(rename it like '10_" + name.rsplit("/", 1)[-1] + "')",
        )
    for name in tdir.skipped_folders:
        yield Finding(
            "note", "skipped_folder", name, "repeat count below 1: sd-scripts skips it silently"
        )
    for name in tdir.stray_files:
        if name.lower().endswith(_SD_EXTENSIONS):
            yield Finding(
                "warning",
                "stray_image",
                name,
                "image directly in the dataset folder: sd-scripts only reads concept folders",
            )
        else:
            yield Finding(
                "note", "stray_file", name, "file directly in the dataset folder (not read)"
            )
    if tdir.reg_root is not None and tdir.reg_root.parent == tdir.root:
        yield Finding(
            "note",
            "reg_folder",
            tdir.reg_root.name,
            "regularisation images: pass this folder as reg_data_dir (read as train_data_dir, "
            "sd-scripts logs one harmless 'ignore directory without repeats' line for it)",
        )


# ---------------------------------------------------------------------------------------------
# One concept folder


def _subset_findings(
    subset: Subset,
    bucket: BucketSettings,
    short: int,
    model: str,
    caption_extension: str,
    trigger: str | None,
) -> list[Finding]:
    prefix = ("reg/" if subset.is_reg else "") + subset.folder
    if not subset.images:
        return [
            Finding(
                "warning",
                "empty_folder",
                prefix,
                "no images sd-scripts can see: the folder is ignored",
            )
        ]
    resos = bucket_resolutions(bucket)
    findings: list[Finding] = []
    for image in subset.images:
        path = f"{prefix}/{image.name}"
        findings += _image_findings(image, path, bucket, resos, short, model)
        findings += _caption_findings(image, path, subset, caption_extension)
    findings += _trigger_findings(subset, prefix, trigger)
    findings += _other_file_findings(subset, prefix, caption_extension)
    return findings


def _image_findings(
    image: ImageInfo,
    path: str,
    bucket: BucketSettings,
    resos: list[tuple[int, int]],
    short: int,
    model: str,
) -> list[Finding]:
    if image.image_error is not None:
        return [
            Finding(
                "error", "unreadable_image", path, f"{image.image_error}: sd-scripts fails on it"
            )
        ]
    found: list[Finding] = []
    if image.orientation != 1:
        found.append(
            Finding(
                "warning",
                "exif_orientation",
                path,
                f"EXIF orientation {image.orientation}: sd-scripts ignores it and trains the image "
                "sideways or mirrored (`kohyawrap dataset build` writes it upright)",
            )
        )
    mode_note = _mode_note(image.mode)
    if mode_note:
        found.append(Finding("warning", "color_mode", path, mode_note))
    if min(image.width, image.height) < short:
        found.append(
            Finding(
                "warning",
                "too_small",
                path,
                f"{image.width}x{image.height}: short side below {short} px for {model}; "
                "it is upscaled for training and comes out soft",
            )
        )
    found += _aspect_findings(image, path, bucket, resos)
    return found


def _mode_note(mode: str) -> str | None:
    if mode in ("RGB", "L", ""):
        return None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return f"{mode} image: sd-scripts drops the alpha channel, transparent areas turn black"
    if mode.startswith("I"):
        return f"{mode} (16-bit) image: sd-scripts' conversion to 8-bit clips it to near white"
    if mode == "CMYK":
        return "CMYK image: sd-scripts converts it naively, colours shift"
    if mode == "P":
        return "palette image: converted by sd-scripts; any transparency turns black"
    return f"{mode} image: sd-scripts converts it to RGB"


def _aspect_findings(
    image: ImageInfo, path: str, bucket: BucketSettings, resos: list[tuple[int, int]]
) -> list[Finding]:
    if not resos or not bucket.enable_bucket:
        return []
    ratios = [w / h for w, h in resos]
    width, height = image.stored_size
    aspect = width / height
    if min(ratios) <= aspect <= max(ratios):
        return []
    chosen, resized = place((width, height), bucket, resos)
    kept = chosen[0] * chosen[1] / (resized[0] * resized[1])
    return [
        Finding(
            "warning",
            "extreme_aspect",
            path,
            f"aspect ratio {aspect:.2f} is outside the buckets "
            f"({min(ratios):.2f}-{max(ratios):.2f}): "
            f"bucket {chosen[0]}x{chosen[1]} crops away {100 * (1 - kept):.0f}% of it",
        )
    ]


# ---------------------------------------------------------------------------------------------
# Captions


def _caption_findings(
    image: ImageInfo, path: str, subset: Subset, caption_extension: str
) -> list[Finding]:
    if image.caption_error is not None:
        return [Finding("error", "caption_file", path, image.caption_error)]
    stem = image.name.rsplit(".", 1)[0]
    if image.caption is None:
        return [_missing_caption(stem, path, subset, caption_extension)]
    found: list[Finding] = []
    if not image.caption:
        found.append(
            Finding("warning", "empty_caption", path, f"{image.caption_file}: the caption is empty")
        )
    elif not _WORD.search(image.caption):
        found.append(
            Finding(
                "warning",
                "empty_caption",
                path,
                f"{image.caption_file}: the caption {image.caption[:40]!r} has no words "
                "(a tagger that found nothing?): it describes nothing",
            )
        )
    if image.caption_lines > 1:
        found.append(
            Finding(
                "warning",
                "multiline_caption",
                path,
                f"{image.caption_file} has {image.caption_lines} lines: "
                "sd-scripts uses only the first",
            )
        )
    if image.caption.startswith("\ufeff"):
        found.append(
            Finding(
                "warning",
                "caption_bom",
                path,
                f"{image.caption_file} starts with a byte-order mark: "
                "it becomes part of the caption",
            )
        )
    return found


def _missing_caption(stem: str, path: str, subset: Subset, caption_extension: str) -> Finding:
    others = [stem + e for e in _CAPTION_EXTENSIONS if e != caption_extension]
    wrong = [n for n in others if n in subset.other_files]
    if wrong:
        return Finding(
            "error",
            "caption_extension",
            path,
            f"caption file {wrong[0]} is ignored: the config reads '{caption_extension}' captions "
            f"(rename it {stem}{caption_extension} or set caption_extension)",
        )
    fallback = (
        f"the class token '{subset.class_tokens}'" if subset.class_tokens else "an empty caption"
    )
    return Finding(
        "warning",
        "no_caption",
        path,
        f"no caption file {stem}{caption_extension}: sd-scripts trains it with {fallback}",
    )


def has_trigger(caption: str, trigger: str) -> bool:
    """True when ``trigger`` appears in ``caption`` as whole words (case-insensitive, as CLIP's
    tokenizer lowercases text)."""
    pattern = r"(?<!\w)" + re.escape(trigger.strip()) + r"(?!\w)"
    return re.search(pattern, caption, flags=re.IGNORECASE) is not None


def _trigger_findings(subset: Subset, prefix: str, trigger: str | None) -> list[Finding]:
    if not trigger:
        return []
    captions = [
        (i.name, i.caption if i.caption is not None else subset.class_tokens) for i in subset.images
    ]
    with_trigger = [name for name, cap in captions if has_trigger(cap, trigger)]
    if subset.is_reg:
        if not with_trigger:
            return []
        return [
            Finding(
                "warning",
                "trigger_in_reg",
                prefix,
                f"trigger '{trigger}' is in {len(with_trigger)} regularisation caption(s) "
                f"({_names(with_trigger)}): reg images should show the plain class",
            )
        ]
    missing = [name for name, _ in captions if name not in set(with_trigger)]
    if not missing:
        return [
            Finding(
                "note",
                "trigger_coverage",
                prefix,
                f"trigger '{trigger}' is in all {len(captions)} captions",
            )
        ]
    return [
        Finding(
            "warning",
            "trigger_missing",
            prefix,
            f"trigger '{trigger}' is missing from {len(missing)} of {len(captions)} captions "
            f"({_names(missing)})",
        )
    ]


def _other_file_findings(subset: Subset, prefix: str, caption_extension: str) -> list[Finding]:
    found: list[Finding] = []
    for name in subset.other_files:
        path = f"{prefix}/{name}"
        code, severity, message = _classify_other(name, caption_extension)
        if code:
            found.append(Finding(severity, code, path, message))
    return found


def _classify_other(name: str, caption_extension: str) -> tuple[str, Severity, str]:
    lower = name.lower()
    if name.endswith("/"):
        return "nested_folder", "warning", "sub-folder: sd-scripts does not look inside"
    if lower.endswith(_SD_EXTENSIONS):
        if name.startswith("."):
            return (
                "unseen_image",
                "warning",
                "hidden file: sd-scripts' glob skips names starting with '.'",
            )
        return (
            "unseen_image",
            "warning",
            f"extension '{name.rsplit('.', 1)[-1]}' in mixed case: sd-scripts looks for "
            "all-lower or "
            "all-upper extensions only (case-sensitive on Linux), so it never sees this image",
        )
    if lower.endswith(_CAPTION_EXTENSIONS):
        if name.endswith(caption_extension):
            return "orphan_caption", "note", "caption file without an image"
        return "", "note", ""  # reported with its image (caption_extension) or irrelevant
    if lower.endswith(".npz"):
        return (
            "latent_cache",
            "note",
            "cached latents from an earlier run (reused if the settings match)",
        )
    return "other_file", "note", "not an image or caption: ignored by sd-scripts"


# ---------------------------------------------------------------------------------------------
# Duplicates


def _duplicate_findings(tdir: TrainingDir, phashes: Mapping[str, int]) -> list[Finding]:
    from kohyawrap.dataset.scan import image_key

    keyed = [(image_key(s, i), i) for s in tdir.subsets for i in s.images if i.image_error is None]
    found: list[Finding] = []
    first_by_digest: dict[str, str] = {}
    exact: set[str] = set()
    for key, image in keyed:
        if image.digest and image.digest in first_by_digest:
            exact.add(key)
            found.append(
                Finding(
                    "warning", "duplicate", key, f"exact copy of {first_by_digest[image.digest]}"
                )
            )
        elif image.digest:
            first_by_digest[image.digest] = key
    hashed = [
        (k, phashes[k])
        for k, _ in keyed
        if k in phashes and k not in exact and _has_detail(phashes[k])
    ]
    for index, (key, value) in enumerate(hashed):
        near = [k for k, v in hashed[:index] if (v ^ value).bit_count() <= NEAR_DUPLICATE_BITS]
        if near:
            found.append(
                Finding(
                    "warning",
                    "near_duplicate",
                    key,
                    f"looks almost the same as {near[0]} (perceptual hash)",
                )
            )
    return found


def _has_detail(value: int) -> bool:
    return _MIN_DETAIL_BITS <= value.bit_count() <= 64 - _MIN_DETAIL_BITS


# ---------------------------------------------------------------------------------------------
# Buckets and steps


def _batch_findings(tdir: TrainingDir, batch: BatchCount, batch_size: int) -> list[Finding]:
    if batch.images_with_repeats == 0:
        return [
            Finding(
                "error",
                "no_images",
                None,
                "no training images sd-scripts can read: nothing to train",
            )
        ]
    found = [
        Finding(
            "note",
            "buckets",
            None,
            f"{sum(batch.buckets.values())} images × repeats in {len(batch.buckets)} bucket(s), "
            f"{batch.batches_per_epoch} batches per epoch at batch size {batch_size}",
        )
    ]
    if batch.reg_images_with_repeats > batch.images_with_repeats:
        found.append(
            Finding(
                "note",
                "reg_unused",
                None,
                f"{batch.reg_images_with_repeats} reg images × repeats for "
                f"{batch.images_with_repeats} "
                "training images × repeats: sd-scripts uses only as many as the training images",
            )
        )
    padded = batch.batches_per_epoch * batch_size
    used = sum(batch.buckets.values())
    if batch_size > used:
        found.append(
            Finding(
                "warning",
                "batch_larger_than_dataset",
                None,
                f"train_batch_size {batch_size} is larger than the whole dataset ({used} images × "
                "repeats): sd-scripts trains one partial batch per bucket, so no step sees more "
                f"than {max(batch.buckets.values())} images, while the VRAM and time estimates "
                "assume full batches",
                f"train_batch_size = {min(batch_size, max(batch.buckets.values()))}",
            )
        )
    if batch_size > 1 and padded and (padded - used) / padded > 0.2:
        found.append(
            Finding(
                "note",
                "partial_batches",
                None,
                f"{padded - used} of {padded} batch slots per epoch are empty: small buckets give "
                "short batches (each still costs a step)",
            )
        )
    return found


def _steps(batch: BatchCount, length: TrainingLength) -> tuple[int | None, int | None, str]:
    if batch.batches_per_epoch == 0:
        return None, length.max_train_epochs, "epochs" if length.max_train_epochs else "default"
    count = count_training_steps(batch.batches_per_epoch, length)
    basis = "epochs" if count.decided_by == "max_train_epochs" else count.decided_by
    return count.total_steps, count.epochs, basis


def _step_findings(steps: int | None, epochs: int | None, basis: str) -> list[Finding]:
    found: list[Finding] = []
    if steps is None:
        return found
    if basis == "default":
        found.append(
            Finding(
                "note",
                "default_steps",
                None,
                f"neither epochs nor max_train_steps set: sd-scripts stops at its default of "
                f"{DEFAULT_MAX_TRAIN_STEPS} steps (about {epochs} epochs here)",
            )
        )
    if steps > STEPS_WARNING:
        found.append(
            Finding(
                "warning",
                "too_many_steps",
                None,
                f"{steps} total steps: far beyond what a LoRA needs (a few thousand); lower the "
                "repeats or epochs",
            )
        )
    return found


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
