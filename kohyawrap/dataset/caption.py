"""Captions made for you: which photos need one, and how a tagger's scores or a captioner's
sentence become the caption sd-scripts reads.

Pure: the folder arrives already scanned (``scan.scan_sources``), scores arrive as numbers, and
the result is data. The adapters that talk to the world are ``dataset.tagger`` (the WD14 ONNX
model on this machine), ``launcher.caption`` (a captioner on the GPU host) and
``dataset.captioning`` (the one writer of caption files).

The WD14 facts this module relies on (SmilingWolf's model cards and kohya-ss/sd-scripts
``finetune/tag_images_by_wd14_tagger.py``): the model outputs one probability per row of
``selected_tags.csv`` (columns ``tag_id,name,category,count``), in the same order; category 9 is
a rating, 4 a character, 0 a general tag.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from kohyawrap.dataset.layout import tidy_caption
from kohyawrap.dataset.lint import has_trigger
from kohyawrap.errors import DatasetError

if TYPE_CHECKING:
    from kohyawrap.dataset.scan import SourceFolder, SourceImage

CATEGORY_GENERAL = 0
CATEGORY_CHARACTER = 4
CATEGORY_RATING = 9
# kohya's tagger script and SmilingWolf's own demo both default to 0.35 for general tags; the
# demo asks 0.85 for characters, since a wrong name teaches the LoRA the wrong identity.
DEFAULT_GENERAL_THRESHOLD = 0.35
DEFAULT_CHARACTER_THRESHOLD = 0.85
# A caption longer than this is not a caption (CLIP reads 75 tokens; T5 for FLUX 512): a
# captioner that runs away, or a hostile host, gets cut here.
MAX_CAPTION_CHARS = 4000
_MAX_TAGS = 100_000  # rows of selected_tags.csv we accept (the v3 list has 10,861)
# "^_^", "o_o", "(o)_(o)": an underscore between symbols is part of the face, not a space.
_WORDLIKE = re.compile(r"[^\W_]{2}")

Action = Literal["write", "replace", "keep", "skip"]
Progress = Callable[[int, int], None]  # (images done, images in all)


# ---------------------------------------------------------------------------------------------
# The WD14 tag list and tag selection


@dataclass(frozen=True)
class TagVocabulary:
    """The rows of ``selected_tags.csv``: output ``i`` of the model scores ``names[i]``."""

    names: tuple[str, ...]
    categories: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.names)


def parse_selected_tags(text: str, source: str = "selected_tags.csv") -> TagVocabulary:
    """Read a WD14 ``selected_tags.csv``; raise DatasetError naming ``source`` when it is not one."""
    rows = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(rows, None)
    if header is None or [h.strip() for h in header[:3]] != ["tag_id", "name", "category"]:
        raise DatasetError(
            "not a WD14 tag list: the header must start with tag_id,name,category",
            where=source,
            evidence=[f"header: {','.join(header or [])[:200]}"],
            hint="--tagger-repo must name a WD14 tagger repo (model.onnx + selected_tags.csv)",
        )
    names: list[str] = []
    categories: list[int] = []
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) < 3 or not row[2].strip().lstrip("-").isdigit():
            raise DatasetError(f"line {line}: expected tag_id,name,category,...", where=source)
        if len(names) >= _MAX_TAGS:
            raise DatasetError(f"more than {_MAX_TAGS} tags: not a WD14 tag list", where=source)
        names.append(row[1].strip())
        categories.append(int(row[2]))
    if not names:
        raise DatasetError("the tag list is empty", where=source)
    return TagVocabulary(tuple(names), tuple(categories))


def tag_key(tag: str) -> str:
    """How tags are compared: case-insensitive, underscores and spaces alike."""
    return " ".join(tag.replace("_", " ").casefold().split())


def parse_tag_list(text: str | None) -> tuple[str, ...]:
    """``"watermark, text,  signature"`` -> the tags, comparable with :func:`tag_key`."""
    if not text:
        return ()
    return tuple(dict.fromkeys(tag_key(t) for t in text.split(",") if t.strip()))


def display_tag(name: str, keep_underscores: bool) -> str:
    """``long_hair`` -> ``long hair`` (what CLIP was trained on), faces like ``^_^`` kept."""
    if keep_underscores or not _WORDLIKE.search(name):
        return name
    return " ".join(name.replace("_", " ").split())


@dataclass(frozen=True)
class TagOptions:
    """How scores become tags: thresholds per category, tags to drop, underscores."""

    general_threshold: float = DEFAULT_GENERAL_THRESHOLD
    character_threshold: float = DEFAULT_CHARACTER_THRESHOLD
    exclude: tuple[str, ...] = ()  # tag_key() forms
    keep_underscores: bool = False

    def __post_init__(self) -> None:
        for label, value in (
            ("--general-threshold", self.general_threshold),
            ("--character-threshold", self.character_threshold),
        ):
            if not 0.0 < value <= 1.0:
                raise DatasetError(f"{label} must be above 0 and at most 1, not {value}")


def select_tags(
    scores: Sequence[float], vocab: TagVocabulary, options: TagOptions
) -> tuple[str, ...]:
    """The tags of one image: characters first, then general tags, each by falling score.

    Ratings (category 9) never become tags: "general"/"sensitive" describe nothing a LoRA
    should learn. Ties keep the tag list's order, so the same scores give the same caption.
    """
    if len(scores) != len(vocab):
        raise DatasetError(
            f"the model scores {len(scores)} tags but the tag list has {len(vocab)}",
            hint="model.onnx and selected_tags.csv must come from the same tagger repo",
        )
    ranked: list[tuple[int, float, int]] = []
    for index, (category, score) in enumerate(zip(vocab.categories, scores, strict=True)):
        if category == CATEGORY_CHARACTER and score >= options.character_threshold:
            ranked.append((0, -float(score), index))
        elif category == CATEGORY_GENERAL and score >= options.general_threshold:
            ranked.append((1, -float(score), index))
    excluded = set(options.exclude)
    tags: dict[str, str] = {}
    for _, _, index in sorted(ranked):
        name = vocab.names[index]
        key = tag_key(name)
        if key and key not in excluded and key not in tags:
            tags[key] = display_tag(name, options.keep_underscores)
    return tuple(tags.values())


# ---------------------------------------------------------------------------------------------
# From a tagger's tags or a captioner's sentence to the caption file's line


@dataclass(frozen=True)
class RawCaption:
    """What a tagger or captioner made of one image: tags, a sentence, or an error."""

    tags: tuple[str, ...] = ()
    text: str | None = None
    error: str | None = None


def compose_caption(raw: RawCaption, trigger: str | None) -> str:
    """One line for the caption file, the trigger first.

    Tags: joined with ", ", any tag equal to the trigger dropped (it leads). A sentence: one
    line (sd-scripts reads only the first), at most ``MAX_CAPTION_CHARS``, ``trigger, `` in
    front unless it already starts with the trigger.
    """
    trigger = " ".join((trigger or "").split())
    if raw.text is None:
        key = tag_key(trigger)
        body = ", ".join(t for t in raw.tags if tag_key(t) != key or not key)
    else:
        body = tidy_caption(raw.text)[:MAX_CAPTION_CHARS].strip()
        if trigger and _starts_with(body, trigger):
            return body
    if not trigger:
        return body
    return f"{trigger}, {body}" if body else trigger


def _starts_with(text: str, trigger: str) -> bool:
    head = text[: len(trigger) + 1]
    return has_trigger(head, trigger) and head.casefold().startswith(trigger.casefold())


# ---------------------------------------------------------------------------------------------
# Which photos need a caption


@dataclass(frozen=True)
class CaptionTask:
    """One photo and what ``dataset caption`` will do for it."""

    image: Path
    caption_path: Path  # the file written (write/replace) or the one found (keep)
    action: Action
    reason: str
    existing: str | None = None  # the caption kept (first line)


@dataclass(frozen=True)
class CaptionPlan:
    """Every photo of the folder, each with its action."""

    folder: Path
    caption_extension: str
    tasks: tuple[CaptionTask, ...]

    @property
    def todo(self) -> tuple[CaptionTask, ...]:
        """The photos a caption will be made for."""
        return tuple(t for t in self.tasks if t.action in ("write", "replace"))


def plan_captions(source: SourceFolder, caption_extension: str, overwrite: bool) -> CaptionPlan:
    """Decide, for each photo: write a new caption, replace one, keep the user's, or skip.

    A caption the user wrote is kept unless ``overwrite``; an empty caption file holds nothing
    to lose and is filled. A caption under the other extension (``.caption`` beside ``.txt``)
    counts as the user's: ``dataset build`` would read it.
    """
    tasks = [_task(image, caption_extension, overwrite) for image in source.images]
    return CaptionPlan(source.path, caption_extension, tuple(tasks))


def _task(image: SourceImage, ext: str, overwrite: bool) -> CaptionTask:
    target = image.path.with_name(image.path.stem + ext)
    if image.problem is not None:
        return CaptionTask(image.path, target, "skip", image.problem)
    if image.caption_path is None:
        return CaptionTask(image.path, target, "write", "no caption yet")
    first = _first_line(image.caption_text)
    if not first:
        action: Action = "replace" if image.caption_path == target else "write"
        return CaptionTask(image.path, target, action, f"{image.caption_path.name} is empty")
    if not overwrite:
        return CaptionTask(
            image.path,
            image.caption_path,
            "keep",
            f"has {image.caption_path.name} (--overwrite replaces it)",
            first,
        )
    if image.caption_path == target:
        return CaptionTask(image.path, target, "replace", "--overwrite", first)
    return CaptionTask(
        image.path,
        target,
        "write",
        f"--overwrite: {target.name} is read before {image.caption_path.name}",
        first,
    )


def _first_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else ""


# ---------------------------------------------------------------------------------------------
# Results


class Captioner(Protocol):
    """Something that makes captions: the WD14 tagger here, or a captioner on the GPU host."""

    label: str  # "wd14 SmilingWolf/wd-swinv2-tagger-v3", for reports

    def caption(
        self, images: Sequence[Path], progress: Progress | None = None
    ) -> Iterator[RawCaption]:
        """One RawCaption per image, in order, as soon as each is known."""
        ...


@dataclass(frozen=True)
class CaptionOutcome:
    """What happened to one photo."""

    task: CaptionTask
    caption: str | None = None  # the caption written (or kept)
    error: str | None = None
    written: bool = False


@dataclass(frozen=True)
class CaptionResult:
    """What ``dataset caption`` did (or, with ``dry_run``, would do)."""

    folder: Path
    captioner: str
    trigger: str | None
    dry_run: bool
    outcomes: tuple[CaptionOutcome, ...]
    others: tuple[tuple[str, str], ...] = field(default=())  # (name, what): not photos we read

    def count(self, action: Action) -> int:
        """How many photos had ``action`` planned."""
        return sum(o.task.action == action for o in self.outcomes)

    @property
    def written(self) -> int:
        return sum(o.written for o in self.outcomes)

    @property
    def failed(self) -> tuple[CaptionOutcome, ...]:
        return tuple(o for o in self.outcomes if o.error is not None)

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON data (``--json``)."""
        return {
            "folder": str(self.folder),
            "captioner": self.captioner,
            "trigger": self.trigger,
            "dry_run": self.dry_run,
            "counts": {
                "images": len(self.outcomes),
                "written": self.written,
                "kept": self.count("keep"),
                "skipped": self.count("skip"),
                "failed": len(self.failed),
            },
            "images": [
                {
                    "image": o.task.image.name,
                    "caption_file": o.task.caption_path.name,
                    "action": o.task.action,
                    "reason": o.task.reason,
                    "caption": o.caption,
                    "written": o.written,
                    "error": o.error,
                }
                for o in self.outcomes
            ],
            "not_captioned": [{"name": n, "what": w} for n, w in self.others],
        }


# ---------------------------------------------------------------------------------------------
# Review: what the captions say, before training on them


@dataclass(frozen=True)
class CaptionReview:
    """Tag frequencies, captions without the trigger, photos without a caption."""

    folder: Path
    images: int
    trigger: str | None
    tag_counts: tuple[tuple[str, int], ...]
    without_trigger: tuple[tuple[str, str], ...]  # (photo, caption)
    missing: tuple[str, ...]
    empty: tuple[str, ...]

    @property
    def captioned(self) -> int:
        return self.images - len(self.missing) - len(self.empty)

    def to_json(self) -> dict[str, Any]:
        """The review as plain JSON data (``--json``)."""
        return {
            "folder": str(self.folder),
            "images": self.images,
            "captioned": self.captioned,
            "trigger": self.trigger,
            "tags": [{"tag": t, "count": n} for t, n in self.tag_counts],
            "without_trigger": [{"image": i, "caption": c} for i, c in self.without_trigger],
            "missing": list(self.missing),
            "empty": list(self.empty),
        }


def review_captions(source: SourceFolder, trigger: str | None) -> CaptionReview:
    """Count the comma-separated parts of every caption (most frequent first) and list the
    captions that lack ``trigger`` (as whole words, like sd-scripts' tokenizer sees it)."""
    counts: dict[str, int] = {}
    shown: dict[str, str] = {}
    without: list[tuple[str, str]] = []
    missing: list[str] = []
    empty: list[str] = []
    for image in source.images:
        name = image.path.name
        if image.caption_path is None:
            missing.append(name)
            continue
        caption = _first_line(image.caption_text)
        if not caption:
            empty.append(name)
            continue
        parts = {tag_key(p): p.strip() for p in caption.split(",") if p.strip()}
        for key, text in parts.items():  # a tag twice in one caption counts once
            counts[key] = counts.get(key, 0) + 1
            shown.setdefault(key, text)
        if trigger and not has_trigger(caption, trigger):
            without.append((name, caption))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return CaptionReview(
        folder=source.path,
        images=len(source.images),
        trigger=trigger,
        tag_counts=tuple((shown[k], n) for k, n in ranked),
        without_trigger=tuple(without),
        missing=tuple(missing),
        empty=tuple(empty),
    )
