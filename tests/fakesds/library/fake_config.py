"""Options and dataset, read the way sd-scripts reads them (docs/sources.md [1], [2], [8]).

- ``--config_file X``: ``.toml`` appended when missing; top-level tables flattened one level
  (section names mean nothing), a later key wins; unknown keys silently kept; values NOT
  converted; the command line overrides the file.
- ``train_data_dir`` holds ``<repeats>_<class>`` folders: ``int()`` of the part before the first
  ``_`` (ValueError: ignored with a warning; < 1: skipped silently); images by case-sensitive
  extension; caption = ``<stem><caption_extension>`` (default ``.caption``), first line.
- Batches per epoch are simplified to ceil(images x repeats / train_batch_size) (no buckets).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".PNG",
    ".JPG",
    ".JPEG",
    ".WEBP",
    ".BMP",
)


def _load_toml(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib.loads(text)
    import tomlkit  # the test interpreter has it (a kohyawrap dependency); no tomllib on 3.10

    return tomlkit.parse(text).unwrap()


def parse_command_line(argv: list[str]) -> dict[str, Any]:
    """``--key value`` pairs and bare ``--flag``s (values stay strings, as argparse gets them)."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        name = argv[i].removeprefix("--")
        if "=" in name:
            name, value = name.split("=", 1)
            options[name] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            options[name] = argv[i + 1]
            i += 1
        else:
            options[name] = True
        i += 1
    return options


def flatten(document: dict[str, Any]) -> dict[str, Any]:
    """One level of tables merged into one namespace; the later key wins."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def config_path(value: str) -> Path:
    """The ``--config_file`` value with ``.toml`` appended when missing."""
    return Path(value if value.endswith(".toml") else value + ".toml")


def merged_options(argv: list[str], path: Path | None) -> dict[str, Any]:
    """File options under command-line options (command line wins)."""
    cli = parse_command_line(argv)
    options = flatten(_load_toml(path)) if path is not None else {}
    options.update({k: v for k, v in cli.items() if k != "config_file"})
    if "caption_extention" in options and "caption_extension" not in options:
        options["caption_extension"] = options["caption_extention"]
    return options


def number(options: dict[str, Any], key: str, default: Any = None) -> Any:
    """An option as a number (command-line values arrive as strings)."""
    value = options.get(key, default)
    if isinstance(value, str):
        return float(value) if any(c in value for c in ".eE") else int(value)
    return value


@dataclass
class Subset:
    """One concept folder: its repeats, images and their captions."""

    folder: Path
    repeats: int
    class_tokens: str
    images: list[Path]
    captions: dict[str, str] = field(default_factory=dict)
    missing_captions: list[Path] = field(default_factory=list)
    is_reg: bool = False

    @property
    def count(self) -> int:
        return len(self.images) * self.repeats


def _read_subset(folder: Path, repeats: int, tokens: str, extension: str, is_reg: bool) -> Subset:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_EXTENSIONS)
    subset = Subset(folder, repeats, tokens, images, is_reg=is_reg)
    for image in images:
        caption = image.with_name(image.stem + extension)
        if caption.is_file():
            text = caption.read_text(encoding="utf-8")
            assert text, f"caption file is empty / キャプションファイルが空です: {caption}"
            subset.captions[image.name] = text.splitlines()[0].strip() if text.strip() else ""
        else:
            subset.missing_captions.append(image)
            subset.captions[image.name] = tokens
    return subset


def read_concept_folders(
    parent: Path, extension: str, is_reg: bool
) -> tuple[list[Subset], list[str]]:
    """Subsets from ``<repeats>_<class>`` folders, and the names ignored with a warning."""
    subsets, ignored = [], []
    for folder in sorted(p for p in parent.iterdir() if p.is_dir()):
        head, _, tokens = folder.name.partition("_")
        try:
            repeats = int(head)
        except ValueError:
            ignored.append(folder.name)
            continue
        if repeats >= 1:
            subsets.append(_read_subset(folder, repeats, tokens, extension, is_reg))
    return subsets, ignored


def _size(value: Any) -> tuple[int, int]:
    """A dataset_config resolution: ``512`` or ``[512, 768]``."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def read_dataset_config(
    path: Path, options: dict[str, Any]
) -> tuple[list[Subset], tuple[int, int] | None, int | None]:
    """Subsets of a ``--dataset_config`` (TOML or JSON), its resolution and batch size.

    Only the keys a step count needs; values fall back dataset -> general -> training option.
    """
    document = (
        json.loads(path.read_text(encoding="utf-8")) if path.suffix == ".json" else _load_toml(path)
    )
    general = document.get("general", {})
    subsets = []
    size: tuple[int, int] | None = None
    batch: int | None = None
    for dataset in document.get("datasets", []):
        merged_dataset = {**general, **dataset}
        if "resolution" in merged_dataset and size is None:
            size = _size(merged_dataset["resolution"])
        batch = batch or merged_dataset.get("batch_size")
        for sub in dataset.get("subsets", []):
            merged = {**general, **dataset, **sub}
            extension = merged.get(
                "caption_extension", options.get("caption_extension", ".caption")
            )
            subsets.append(
                _read_subset(
                    Path(sub["image_dir"]),
                    int(merged.get("num_repeats", 1)),
                    str(merged.get("class_tokens", "")),
                    extension,
                    bool(merged.get("is_reg", False)),
                )
            )
    return subsets, size, batch


def resolution(options: dict[str, Any]) -> tuple[int, int]:
    """``"512"`` or ``"512,768"``; an int crashes exactly like sd-scripts (``.split`` on an int)."""
    value = options.get("resolution")
    assert value is not None, "resolution is required / resolution（解像度）指定は必須です"
    sizes = tuple(int(r) for r in value.split(","))
    return (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])


@dataclass(frozen=True)
class Schedule:
    """Steps and epochs as sd-scripts derives them."""

    num_images: int
    batches_per_epoch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    from_epochs: bool


def schedule(num_images: int, options: dict[str, Any], processes: int = 1) -> Schedule:
    """max_train_epochs wins over max_train_steps (default 1600). With several processes
    (WORLD_SIZE, as torchrun sets it) each sees ceil(batches / processes) batches an epoch, and
    that is the "num batches per epoch" sd-scripts prints."""
    batch = number(options, "train_batch_size", 1)
    accumulation = number(options, "gradient_accumulation_steps", 1)
    batches = math.ceil(num_images / batch)
    mine = math.ceil(batches / processes)
    per_epoch = max(1, math.ceil(mine / accumulation))
    epochs = number(options, "max_train_epochs")
    if epochs:
        total = epochs * math.ceil(batches / processes / accumulation)
        return Schedule(num_images, mine, per_epoch, epochs, total, True)
    total = number(options, "max_train_steps", 1600)
    return Schedule(num_images, mine, per_epoch, math.ceil(total / per_epoch), total, False)
