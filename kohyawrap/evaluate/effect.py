"""The effect check: does the LoRA change the image at all?

For each checkpoint and each (prompt, seed), the image at strength 0 (the base model) is compared
with the image at strength 1 (or the highest strength drawn). Same seed, same sampler, same prompt:
the only difference is the LoRA, so the distance between the two images is its effect.

The distance is the mean absolute difference of the two images' 64 x 64 grayscale thumbnails, as a
fraction of full scale: 0 for identical images, 1 for black against white. Small enough to ignore
GPU noise and resampling, large enough to see a changed face, pose or style. A LoRA whose images
move less than ``BARELY`` (2%, an estimate) "barely changes the image"; a trained LoRA at strength 1
moves typical images by 10% or more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

THUMB_SIZE = 64
BARELY = 0.02


def distance(a: bytes, b: bytes) -> float:
    """Mean absolute difference of two grayscale thumbnails (bytes of equal length), 0..1."""
    if len(a) != len(b) or not a:
        raise ValueError("thumbnails must have the same, non-zero size")
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / (255 * len(a))


@dataclass(frozen=True)
class Pair:
    """One comparison: a prompt and seed, and how far strength 0 and strength ``s`` are apart."""

    prompt: int
    seed: int
    distance: float


@dataclass(frozen=True)
class EffectRow:
    """The effect of one checkpoint, per (prompt, seed)."""

    checkpoint: str  # key
    label: str
    pairs: tuple[Pair, ...]

    @property
    def mean(self) -> float:
        return sum(p.distance for p in self.pairs) / len(self.pairs) if self.pairs else 0.0

    @property
    def barely(self) -> bool:
        return bool(self.pairs) and self.mean < BARELY


@dataclass(frozen=True)
class EffectCheck:
    """The effect of every checkpoint drawn, and what it amounts to."""

    strength: float | None  # the strength compared with 0 (None: the check was not possible)
    rows: tuple[EffectRow, ...]
    finding: str | None = None  # a problem worth the top of the report
    remedies: tuple[str, ...] = ()
    note: str = ""  # why the check could not be made, or a softer observation

    def to_json(self) -> dict[str, object]:
        return {
            "strength": self.strength,
            "threshold": BARELY,
            "finding": self.finding,
            "remedies": list(self.remedies),
            "note": self.note,
            "rows": [
                {
                    "checkpoint": r.checkpoint,
                    "label": r.label,
                    "mean": round(r.mean, 4),
                    "pairs": [
                        {"prompt": p.prompt + 1, "seed": p.seed, "distance": round(p.distance, 4)}
                        for p in r.pairs
                    ],
                }
                for r in self.rows
            ],
        }


def compared_strength(strengths: Sequence[float]) -> float | None:
    """1.0 when drawn, else the highest strength above 0; None without strength 0 in the grid."""
    if 0 not in strengths:
        return None
    above = [s for s in strengths if s > 0]
    if not above:
        return None
    return 1.0 if 1.0 in above else max(above)


def judge_effect(
    rows: Sequence[EffectRow],
    strength: float | None,
    *,
    trigger: str = "",
    captions_with_trigger: tuple[int, int] | None = None,
) -> EffectCheck:
    """What the distances amount to, with the tutorial's remedies when the LoRA does nothing.

    ``captions_with_trigger``: (captions holding the trigger word, captions) in the dataset.
    """
    if strength is None:
        return EffectCheck(
            None, (), note="the grid has no strength 0 (or nothing above it) to compare against"
        )
    measured = tuple(r for r in rows if r.pairs)
    if not measured:
        return EffectCheck(strength, (), note="no pair of images to compare was drawn")
    if all(r.barely for r in measured):
        return EffectCheck(
            strength,
            tuple(rows),
            finding=(
                f"this LoRA barely changes the image: strength {strength:g} moves it "
                f"{max(r.mean for r in measured):.1%} at most (under {BARELY:.0%})"
            ),
            remedies=_remedies(trigger, captions_with_trigger),
        )
    weak = [r.label for r in measured if r.barely]
    note = f"barely any effect at {', '.join(weak)}" if weak else ""
    return EffectCheck(strength, tuple(rows), note=note)


def _remedies(trigger: str, captions: tuple[int, int] | None) -> tuple[str, ...]:
    found = []
    if captions is not None and trigger:
        having, total = captions
        if total and having < total:
            found.append(
                f"only {having} of {total} captions contain the trigger {trigger!r}: put it in "
                "every caption (`kohyawrap dataset build --trigger`)"
            )
        else:
            found.append(f"the trigger {trigger!r} is in the captions: use it in your prompts")
    elif trigger:
        found.append(f"check that the captions contain the trigger {trigger!r}")
    found += [
        "try a higher strength (1.2-1.5) in your WebUI",
        "try a later epoch, or train longer / with a higher learning rate",
        "check that the LoRA was trained for this base model",
    ]
    return tuple(found)
