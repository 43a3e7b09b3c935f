"""A run's results as they lie on the laptop: its verified checkpoints, its TensorBoard loss, its
sample images, and the words of its dataset. The grid and the report both read them from here."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kohyawrap.errors import KohyawrapError
from kohyawrap.evaluate.gridplan import Checkpoint, checkpoint_of, ordered
from kohyawrap.evaluate.loss import LossCurve
from kohyawrap.evaluate.prompts import (
    Concept,
    PromptDefaults,
    concept_prompts,
    concepts_from_folders,
    defaults_from,
)
from kohyawrap.launcher.fetch import SAMPLES, is_checkpoint
from kohyawrap.launcher.manifest import PulledFile, RunManifest
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.launcher.runstore import RunDir

# sd-scripts' sample names (train_util.sample_image_inference @ 48d368fa):
# <output_name>_e<epoch:06d>_<nn>_<YYYYmmddHHMMSS>[_<seed>].png at an epoch's end,
# <output_name>_<step:06d>_<nn>_<time>[_<seed>].png every N steps.
_SAMPLE = re.compile(
    r"_(?:e(?P<epoch>\d{6})|(?P<step>\d{6}))_(?P<n>\d{2})_\d{14}(?:_(?P<seed>\d+))?\.png$"
)


def checkpoints_of(run: RunDir, m: RunManifest) -> tuple[Checkpoint, ...]:
    """The run's LoRA files verified on the laptop, every leg's, with their epoch and the run's
    step, in training order.

    A resumed or extended run keeps its earlier legs' files as choices. sd-scripts names each
    leg's last file like the run's final one and counts each leg's steps from 0 (docs/runs.md):
    an earlier leg's last file is the checkpoint of its epoch (its host path prefixed with the
    leg, so that no two share one), its steps get the leg's offset, and an epoch that a later leg
    trained again is that leg's.
    """
    found: dict[str, Checkpoint] = {}
    earlier = m.legs[:-1] if m.legs else ()
    for leg in earlier:
        for checkpoint in _leg_checkpoints(run, m, leg.pulled, leg.step_offset):
            if checkpoint.kind == "final" and checkpoint.epoch is not None:
                checkpoint = replace(checkpoint, kind="epoch")
            found[checkpoint.key] = replace(checkpoint, rel=f"leg{leg.number}/{checkpoint.rel}")
    for checkpoint in _leg_checkpoints(run, m, m.pulled, m.step_offset):
        found[checkpoint.key] = checkpoint
    return ordered(list(found.values()))


def _leg_checkpoints(
    run: RunDir, m: RunManifest, pulled: Mapping[str, PulledFile], step_offset: int
) -> list[Checkpoint]:
    from kohyawrap.safetensors_header import read_header

    found = []
    for rel, file in pulled.items():
        local = run.path / file.path
        if not is_checkpoint(rel) or not local.is_file():
            continue
        try:
            _, metadata = read_header(local) if local.suffix == ".safetensors" else ({}, {})
        except KohyawrapError:
            continue
        checkpoint = checkpoint_of(rel, file.path, m.plan.output_name, metadata)
        if checkpoint is not None and checkpoint.step is not None:
            checkpoint = replace(checkpoint, step=checkpoint.step + step_offset)
        if checkpoint is not None:
            found.append(checkpoint)
    return found


def loss_curve_of(run: RunDir) -> LossCurve:
    """Every loss scalar of the run's pulled TensorBoard files (several after a resume)."""
    from kohyawrap.tensorboard import read_scalars

    merged: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((run.path / "tensorboard").rglob("events.out.tfevents.*")):
        try:
            scalars = read_scalars(path)
        except KohyawrapError:
            continue  # a damaged file: the report says what it can without it
        for tag, points in scalars.items():
            merged.setdefault(tag, []).extend(points)
    return LossCurve.from_scalars(merged)


@dataclass(frozen=True)
class Sample:
    """An in-training sample image on the laptop."""

    path: Path
    epoch: int | None
    step: int | None
    index: int
    seed: int | None


def samples_of(run: RunDir) -> tuple[Sample, ...]:
    """The pulled sample images, by epoch (or step), then prompt."""
    found = []
    for path in sorted((run.path / SAMPLES).glob("*.png")):
        match = _SAMPLE.search(path.name)
        if match is None:
            continue
        found.append(
            Sample(
                path,
                int(match["epoch"]) if match["epoch"] else None,
                int(match["step"]) if match["step"] else None,
                int(match["n"]),
                int(match["seed"]) if match["seed"] else None,
            )
        )
    return tuple(sorted(found, key=lambda s: (s.epoch or 0, s.step or 0, s.index, s.path.name)))


def concepts_of(plan: RunPlan) -> tuple[Concept, ...]:
    """The dataset's concepts, from its folder names (``10_sks dog``; ``reg/5_dog``)."""
    from kohyawrap.dataset.scan import REG_FOLDER, parse_concept_folder

    train: list[str] = []
    reg: list[str] = []
    for rel in sorted(plan.dataset_files):
        parts = rel.split("/")
        folder, into = (
            (parts[1], reg) if parts[0] == REG_FOLDER and len(parts) > 2 else (parts[0], train)
        )
        parsed = parse_concept_folder(folder) if len(parts) > 1 else None
        if parsed is not None and parsed[0] >= 1 and parsed[1] not in into:
            into.append(parsed[1])
    return concepts_from_folders(train, reg)


def grid_prompts_of(plan: RunPlan, options_prompts: tuple[str, ...]) -> tuple[str, ...]:
    """The grid's prompts: the user's, else two per concept, else the LoRA's name."""
    if options_prompts:
        return options_prompts
    prompts = concept_prompts(concepts_of(plan))
    return prompts or (f"a photo of {' '.join(plan.output_name.replace('--', ' ').split())}",)


def prompt_defaults_of(plan: RunPlan) -> PromptDefaults:
    """Size, steps, CFG and negative prompt of the run's samples (its rendered prompt file)."""
    from kohyawrap.render import SAMPLE_PROMPTS

    width, height = resolution(plan.rendered.settings)
    return defaults_from(plan.rendered.files.get(SAMPLE_PROMPTS, ""), width, height)


def resolution(settings: dict[str, Any]) -> tuple[int, int]:
    """The training resolution (``"512"``, ``"768,512"`` or a list)."""
    value = settings.get("resolution", 512)
    if isinstance(value, list) and len(value) == 2:
        return int(value[0]), int(value[1])
    width, _, height = str(value).partition(",")
    try:
        return int(width), int(height or width)
    except ValueError:
        return 512, 512


def captions_with_trigger(plan: RunPlan, trigger: str) -> tuple[int, int] | None:
    """(captions holding ``trigger``, captions) of the dataset files still on the laptop."""
    extension = plan.spec.caption_extension
    if not trigger:
        return None
    having = total = 0
    for rel, local in plan.dataset_files.items():
        if not rel.endswith(extension) or rel.startswith("reg/"):
            continue
        try:
            text = Path(local).read_text(encoding="utf-8", errors="replace")[:10_000]
        except OSError:
            return None
        total += 1
        having += trigger.casefold() in text.casefold()
    return (having, total) if total else None
