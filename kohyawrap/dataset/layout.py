"""Decide a dataset's layout: which file goes where, copied or converted, with which caption.

Pure: it takes scanned source folders (``scan.scan_sources``) and options and returns a
:class:`Layout`, a list of file operations that ``build.apply_layout`` (the one writer) carries
out. Nothing here touches the disk, so the whole plan can be inspected and tested as data.

Output: ``<out>/<repeats>_<trigger> <class>/<name>.<ext>`` with ``<name><caption_extension>``
beside it; regularisation images in ``<out>/reg/<repeats>_<class>/``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from kohyawrap.dataset.lint import has_trigger
from kohyawrap.errors import UsageError
from kohyawrap.models import Finding
from kohyawrap.names import WINDOWS_RESERVED

if TYPE_CHECKING:
    from kohyawrap.dataset.imaging import Header
    from kohyawrap.dataset.scan import SourceFolder, SourceImage

_T = TypeVar("_T")
DEFAULT_TEMPLATE = "photo of {concept}"
TEMPLATE_FIELDS = ("trigger", "class", "concept")
REG_FOLDER = "reg"
KEPT_MODES = ("RGB", "L")
# Source format -> (format when re-encoded, extension). Copies keep their format.
_ENCODE = {"JPEG": ("JPEG", ".jpg"), "MPO": ("JPEG", ".jpg"), "WEBP": ("WEBP", ".webp")}
_COPY_EXT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}
# images × repeats per epoch, by model family (the Kohya Colab notebooks, docs/sources.md [16],
# [17]): SD1.5 200-400 per epoch over ~10 epochs (we aim at the middle), SDXL about 100. SD2 follows
# SD1.5 (an assumption: no published figure).
PER_EPOCH_TARGET = {
    "sd15": (300, "≈200-400 images × repeats per epoch for SD1.5, ~10 epochs (Kohya Colab)"),
    "sd2": (300, "≈200-400 images × repeats per epoch as for SD1.5, ~10 epochs (Kohya Colab)"),
    "sdxl": (100, "≈100 images × repeats per epoch for SDXL, ~10 epochs (Kohya Colab XL)"),
    # No published rule for the 1024 px DiT families: SDXL's (an estimate, said so in the notes).
    **{
        family: (
            100,
            "estimate: ≈100 images × repeats per epoch as for SDXL at 1024 px, ~10 epochs",
        )
        for family in ("flux", "chroma", "sd35-large", "sd35-medium")
    },
}
SUGGESTED_EPOCHS = 10


@dataclass(frozen=True)
class ConceptInput:
    """One concept to build: its source folders and how to name and caption it."""

    sources: tuple[SourceFolder, ...]
    trigger: str  # "" for regularisation images
    class_word: str = ""
    repeats: int | None = None  # None: derived by the published rule
    is_reg: bool = False


@dataclass(frozen=True)
class BuildOptions:
    """How to build: model family (for the repeats rule), resizing and captions."""

    model: str  # the model preset's family: sd15, sdxl, flux, ...
    max_side: int | None  # None: never downscale
    caption_template: str = DEFAULT_TEMPLATE
    caption_extension: str = ".txt"


@dataclass(frozen=True)
class RepeatsChoice:
    """The repeat count of a concept and why."""

    repeats: int
    images: int
    derived: bool
    rule: str

    @property
    def per_epoch(self) -> int:
        """Images × repeats: what sd-scripts prints as 'num train images * repeats'."""
        return self.repeats * self.images


@dataclass(frozen=True)
class ConceptPlan:
    """A concept folder in the output."""

    folder: str  # relative to the output, POSIX ("10_sks dog", "reg/1_dog")
    trigger: str
    class_word: str
    repeats: RepeatsChoice
    is_reg: bool = False


@dataclass(frozen=True)
class ImageOp:
    """Write one training image and its caption."""

    source: Path
    dest: str  # relative to the output, POSIX
    caption_dest: str
    caption: str
    action: Literal["copy", "convert"]
    size: tuple[int, int]  # upright (width, height) written
    format: str  # JPEG, PNG, WEBP or BMP
    reasons: tuple[str, ...] = ()  # why converted


@dataclass(frozen=True)
class Skipped:
    """A source file that will not be in the dataset, and why."""

    source: Path
    reason: str


@dataclass(frozen=True)
class Layout:
    """The whole build as data: folders, file operations, skipped files and notes."""

    concepts: tuple[ConceptPlan, ...]
    images: tuple[ImageOp, ...]
    skipped: tuple[Skipped, ...]
    notes: tuple[Finding, ...]


# ---------------------------------------------------------------------------------------------
# Concepts from command-line inputs


def group_concepts(
    folders: Sequence[SourceFolder],
    triggers: Sequence[str],
    class_words: Sequence[str] = (),
    repeats: Sequence[int] = (),
) -> list[ConceptInput]:
    """Pair input folders with triggers, class words and repeats (one each, or one for all).

    Folders that end up with the same trigger and class word become one concept folder.
    """
    n = len(folders)
    if not triggers:
        raise UsageError("--trigger is required", hint='e.g. --trigger "sks dog"')
    trig = _spread("--trigger", triggers, n, "")
    words = _spread("--class-word", class_words, n, "")
    reps = _spread("--repeats", [*repeats], n, None)
    merged: dict[tuple[str, str], list[int]] = {}
    for i in range(n):
        merged.setdefault((trig[i].strip(), words[i].strip()), []).append(i)
    concepts = []
    for (trigger, word), indexes in merged.items():
        counts = {reps[i] for i in indexes}
        if len(counts) > 1:
            raise UsageError(
                f"folders for '{trigger}' have different --repeats ({sorted(map(str, counts))})",
                hint="give one --repeats for a concept",
            )
        concepts.append(
            ConceptInput(tuple(folders[i] for i in indexes), trigger, word, counts.pop())
        )
    return concepts


def reg_concepts(
    folders: Sequence[SourceFolder], class_words: Sequence[str], repeats: int | None = None
) -> list[ConceptInput]:
    """Regularisation folders, each paired with a class word (one each, or one for all)."""
    if not folders:
        return []
    if not class_words:
        raise UsageError(
            "--reg needs a class word: regularisation images show the plain class",
            hint='add --class-word dog (the class of your subject, as in "sks dog")',
        )
    if len(class_words) not in (1, len(folders)):
        raise UsageError(
            f"{len(folders)} --reg folder(s) and {len(class_words)} class words: "
            "which class do the regularisation images show?",
            hint="give one --class-word, or one --reg folder per class word (paired in order)",
        )
    words = _spread("--class-word", class_words, len(folders), "")
    merged: dict[str, list[SourceFolder]] = {}
    for folder, word in zip(folders, words, strict=True):
        merged.setdefault(word.strip(), []).append(folder)
    return [ConceptInput(tuple(f), "", w, repeats, is_reg=True) for w, f in merged.items()]


def _spread(option: str, values: Sequence[_T], n: int, default: _T) -> list[_T]:
    """One value per folder: ``values`` itself, one value repeated, or ``default`` everywhere."""
    if not values:
        return [default] * n
    if len(values) == 1:
        return [values[0]] * n
    if len(values) != n:
        raise UsageError(
            f"{len(values)} values of {option} for {n} input folders",
            hint=f"give {option} once (for all folders) or once per folder, in the same order",
        )
    return list(values)


# ---------------------------------------------------------------------------------------------
# The layout


def plan_layout(concepts: Sequence[ConceptInput], options: BuildOptions) -> Layout:
    """Plan every file of the output: concept folders, image operations, captions, skips."""
    check_template(options.caption_template)
    check_caption_extension(options.caption_extension)
    plans: list[ConceptPlan] = []
    ops: list[ImageOp] = []
    skipped: list[Skipped] = []
    notes: list[Finding] = []
    folders_seen: set[str] = set()
    for concept in concepts:
        plan, c_ops, c_skipped, c_notes = _plan_concept(concept, options)
        if plan.folder.casefold() in folders_seen:
            raise UsageError(f"two concepts map to the same folder '{plan.folder}'")
        folders_seen.add(plan.folder.casefold())
        plans.append(plan)
        ops += c_ops
        skipped += c_skipped
        notes += c_notes
    return Layout(tuple(plans), tuple(ops), tuple(skipped), tuple(notes))


def _plan_concept(
    concept: ConceptInput, options: BuildOptions
) -> tuple[ConceptPlan, list[ImageOp], list[Skipped], list[Finding]]:
    usable = [i for f in concept.sources for i in f.images if _usable(i)]
    skipped = _skipped(concept)
    name = (
        concept_name(concept.trigger, concept.class_word)
        if not concept.is_reg
        else concept.class_word
    )
    _check_name(name, "--class-word" if concept.is_reg else "--trigger")
    if not usable:
        raise UsageError(
            f"no usable images for '{name}' in {', '.join(str(f.path) for f in concept.sources)}",
            evidence=[f"{s.source.name}: {s.reason}" for s in skipped[:5]],
            hint="input folders must hold .jpg .jpeg .png .webp or .bmp images",
        )
    choice = choose_repeats(len(usable), options.model, concept.repeats, concept.is_reg)
    folder = f"{choice.repeats}_{name}"
    if concept.is_reg:
        folder = f"{REG_FOLDER}/{folder}"
    plan = ConceptPlan(folder, concept.trigger, concept.class_word, choice, concept.is_reg)
    ops, notes = _image_ops(usable, concept, folder, options)
    notes += [Finding("warning", "skipped", str(s.source), s.reason) for s in skipped]
    notes += _other_notes(concept)
    return plan, ops, skipped, notes


def _usable(image: SourceImage) -> bool:
    return image.header is not None and image.problem is None


def _skipped(concept: ConceptInput) -> list[Skipped]:
    """Unreadable images and images in formats we do not build from."""
    broken = [
        Skipped(i.path, i.problem or "unreadable")
        for f in concept.sources
        for i in f.images
        if not _usable(i)
    ]
    unsupported = [
        Skipped(f.path / name, "unsupported image format (convert it to JPEG or PNG)")
        for f in concept.sources
        for name, kind in f.others
        if kind == "unsupported image"
    ]
    return broken + unsupported


def concept_name(trigger: str, class_word: str) -> str:
    """``<trigger> <class>``, without repeating a class word the trigger already ends with."""
    trigger, class_word = trigger.strip(), class_word.strip()
    if not class_word:
        return trigger
    words, tail = trigger.casefold().split(), class_word.casefold().split()
    if words[-len(tail) :] == tail:
        return trigger
    return f"{trigger} {class_word}"


def _check_name(name: str, option: str) -> None:
    bad = [c for c in name if c in "/\\\0\r\n\t" or unicodedata.category(c) == "Cc"]
    if not name.strip() or bad or name.strip(" .") != name:
        raise UsageError(
            f"{option} {name!r} cannot be a folder name",
            hint="use words without slashes, control characters or leading/trailing dots/spaces",
        )
    if len(name.encode("utf-8")) > 200:
        raise UsageError(f"{option} is too long for a folder name ({len(name)} characters)")


# ---------------------------------------------------------------------------------------------
# Repeats


def choose_repeats(
    images: int, model: str, repeats: int | None, is_reg: bool = False
) -> RepeatsChoice:
    """The given repeats, or the published rule: images × repeats ≈ the model's per-epoch target."""
    if repeats is not None:
        if repeats < 1:
            raise UsageError(
                f"--repeats must be at least 1, not {repeats}",
                hint="sd-scripts skips folders with 0 repeats",
            )
        return RepeatsChoice(repeats, images, False, "given with --repeats")
    if is_reg:
        return RepeatsChoice(
            1, images, True, "reg images: 1 (sd-scripts repeats them to match the training images)"
        )
    if model not in PER_EPOCH_TARGET:
        raise UsageError(
            f"no repeats rule for model {model!r}",
            hint=f"give --repeats, or use one of {', '.join(PER_EPOCH_TARGET)}",
        )
    target, source = PER_EPOCH_TARGET[model]
    derived = max(1, round(target / images))
    return RepeatsChoice(
        derived, images, True, f"{source}: {images} images × {derived} = {images * derived}"
    )


# ---------------------------------------------------------------------------------------------
# Images


def _image_ops(
    images: list[SourceImage], concept: ConceptInput, folder: str, options: BuildOptions
) -> tuple[list[ImageOp], list[Finding]]:
    ops: list[ImageOp] = []
    notes: list[Finding] = []
    taken: set[str] = set()
    flags: dict[str, list[str]] = {}
    for image in images:
        assert image.header is not None  # only usable images get here
        action, size, fmt, ext, reasons = decide_action(image.header, options.max_side)
        stem = unique_stem(safe_stem(image.path.stem), taken)
        dest = f"{folder}/{stem}{ext}"
        caption, image_flags = make_caption(image, concept, options.caption_template)
        for flag in image_flags:
            flags.setdefault(flag, []).append(str(image.path))
        if stem != image.path.stem:
            flags.setdefault("renamed", []).append(f"{image.path.name} -> {stem}{ext}")
        cap_dest = f"{folder}/{stem}{options.caption_extension}"
        ops.append(ImageOp(image.path, dest, cap_dest, caption, action, size, fmt, reasons))
    notes += _caption_notes(flags, folder, concept)
    return ops, notes


def decide_action(
    header: Header, max_side: int | None
) -> tuple[Literal["copy", "convert"], tuple[int, int], str, str, tuple[str, ...]]:
    """Copy byte-for-byte when nothing needs changing, else convert; with the reasons."""
    upright = header.upright_size
    size = fit(upright, max_side)
    reasons: list[str] = []
    if header.orientation != 1:
        reasons.append(f"EXIF orientation {header.orientation} applied")
    if header.mode not in KEPT_MODES:
        reasons.append(
            f"{header.mode} converted to 8-bit {'L' if header.mode.startswith('I') else 'RGB'}"
        )
    if header.format not in _COPY_EXT:
        reasons.append(f"{header.format or 'unknown'} format re-encoded as PNG")
    if size != upright:
        reasons.append(f"downscaled {upright[0]}x{upright[1]} -> {size[0]}x{size[1]}")
    if not reasons:
        return "copy", size, header.format, _COPY_EXT[header.format], ()
    fmt, ext = _ENCODE.get(header.format, ("PNG", ".png"))
    return "convert", size, fmt, ext, tuple(reasons)


def fit(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` scaled down (never up) so its longer side is at most ``max_side``."""
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return size
    if width >= height:
        return max_side, max(1, round(height * max_side / width))
    return max(1, round(width * max_side / height)), max_side


def safe_stem(stem: str) -> str:
    """A file name stem safe on every OS and in every shell: letters (any script), digits,
    ``-``, ``_`` and ``.``; anything else (spaces, quotes, ``$()``...) becomes ``_``."""
    text = unicodedata.normalize("NFC", stem)
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    text = (
        re.sub(r"_+", "_", text).strip("._-")[:60].strip("._-")
    )  # no hidden files: sd-scripts skips them
    if not text:
        return "image"
    return f"_{text}" if text.upper() in WINDOWS_RESERVED else text


def unique_stem(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... if taken (case-insensitively, as on macOS/Windows).

    ``taken`` is updated.
    """
    candidate, n = stem, 1
    while candidate.casefold() in taken:
        n += 1
        candidate = f"{stem}-{n}"
    taken.add(candidate.casefold())
    return candidate


# ---------------------------------------------------------------------------------------------
# Captions


def check_template(template: str) -> None:
    """Raise UsageError unless ``template`` is a format string over {trigger} {class} {concept}."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise UsageError(
            f"--caption-template {template!r}: {err}", hint="use {trigger}, {class} and {concept}"
        ) from None
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown:
        raise UsageError(
            "--caption-template uses unknown field(s): "
            + ", ".join("{" + f + "}" for f in unknown),
            hint="available: {trigger}, {class}, {concept} (= trigger and class word)",
        )


def render_template(template: str, trigger: str, class_word: str) -> str:
    """The template filled in and tidied (no dangling commas when the class word is empty)."""
    text = template.format_map(
        {
            "trigger": trigger,
            "class": class_word,
            "concept": concept_name(trigger, class_word) if trigger else class_word,
        }
    )
    return tidy_caption(text)


def tidy_caption(text: str) -> str:
    """One line, single spaces, no empty comma-separated parts."""
    parts = [" ".join(p.split()) for p in " ".join(text.split()).split(",")]
    return ", ".join(p for p in parts if p)


def make_caption(image: SourceImage, concept: ConceptInput, template: str) -> tuple[str, list[str]]:
    """The caption written for ``image`` and flags saying what was done to it."""
    flags: list[str] = []
    lines = [line.strip() for line in (image.caption_text or "").splitlines() if line.strip()]
    if image.caption_note:
        flags.append("reencoded")
    if len(lines) > 1:
        flags.append("multiline")
    if image.caption_text is not None and not lines:
        flags.append("empty")
    if lines:
        caption = tidy_caption(lines[0])
    elif concept.is_reg:
        caption = concept.class_word
        flags.append("class_word")
    else:
        caption = render_template(template, concept.trigger, concept.class_word)
        flags.append("template")
    if not concept.is_reg and not has_trigger(caption, concept.trigger):
        caption = f"{concept.trigger}, {caption}" if caption else concept.trigger
        flags.append("trigger_added")
    return caption, flags


_FLAG_NOTES: dict[str, tuple[Literal["error", "warning", "note"], str]] = {
    "template": ("note", "caption made from the template (no caption file)"),
    "class_word": ("note", "caption is the class word (no caption file)"),
    "trigger_added": ("note", "trigger added in front of the caption"),
    "multiline": (
        "warning",
        "caption file has several lines: kept the first (sd-scripts reads only the first line)",
    ),
    "empty": ("warning", "caption file is empty: used the template instead"),
    "reencoded": ("note", "caption file was UTF-16/32 (byte-order mark): written as UTF-8"),
    "renamed": ("note", "file name made safe"),
}


def _caption_notes(
    flags: dict[str, list[str]], folder: str, concept: ConceptInput
) -> list[Finding]:
    notes = []
    for flag, items in flags.items():
        severity, text = _FLAG_NOTES.get(flag, ("note", flag))
        shown = ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
        notes.append(Finding(severity, flag, folder, f"{text}: {len(items)} file(s) ({shown})"))
    return notes


def _other_notes(concept: ConceptInput) -> Iterable[Finding]:
    for folder in concept.sources:
        for name, kind in folder.others:
            if kind == "folder":
                yield Finding(
                    "note",
                    "not_read",
                    str(folder.path / name),
                    "sub-folder not read (give it as its own input)",
                )
            elif kind == "caption without image":
                yield Finding(
                    "note",
                    "orphan_caption",
                    str(folder.path / name),
                    "caption file without an image: not used",
                )
            elif kind == "other":
                yield Finding("note", "not_read", str(folder.path / name), "not an image: not used")


def check_caption_extension(ext: str) -> None:
    """Raise UsageError unless ``ext`` is a caption extension (``.txt``, ``.caption``, ...)."""
    if (
        not ext.startswith(".")
        or len(ext) < 2
        or "/" in ext
        or ext.lower() in _COPY_EXT.values()
        or ext.lower() == ".jpeg"
    ):
        raise UsageError(
            f"--caption-extension {ext!r} is not usable",
            hint="use .txt (our default) or .caption (sd-scripts' default), as in the config",
        )
