"""The loss verdict: what the training loss says about the run, and which checkpoint to try first.

The tutorial reads the curve by eye: flat from the start means the learning rate is too low or the
captions were not read; falling then rising means over-fitting; still falling at the end means it
could train longer; NaN means it broke. Here the same reading is made on a coarse profile of the
curve, so one noisy step decides nothing:

- the validation loss per epoch when the run has one (``loss/validation/epoch_average``), else
- the training loss per epoch (``loss/epoch_average``) when there are 3 epochs or more, else
- ``loss/current`` averaged over ten equal stretches of steps.

Thresholds (estimates, documented in docs/evaluate.md): ``FLAT`` a change under 3% from the
first to the last point, and a range under 6%; ``RISE`` the last point 5% above the lowest one
after a fall of at least 3%; ``FALLING`` a fall of 3% or more over the last third (a straight line
fitted through its points). A diffusion loss is noisy from step to step (it depends on the random
timestep), so each threshold is raised to what the noise alone could produce: the standard error
of a profile point, estimated from the step-to-step differences of ``loss/current``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kohyawrap.evaluate.gridplan import Checkpoint, ordered

FLAT = 0.03
FLAT_RANGE = 0.06
RISE = 0.05
FELL = 0.03
FALLING = 0.03
BINS = 10

Series = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class LossCurve:
    """The loss scalars sd-scripts logs to TensorBoard (tag -> (step, value) pairs)."""

    current: Series = ()  # loss/current, per step
    average: Series = ()  # loss/average: the mean of the last epoch's worth of steps
    epochs: Series = ()  # loss/epoch_average, per epoch (the step is the epoch number)
    validation: Series = ()  # loss/validation/epoch_average, per epoch

    @classmethod
    def from_scalars(cls, scalars: Mapping[str, Sequence[tuple[int, float]]]) -> LossCurve:
        def get(tag: str) -> Series:
            return tuple(sorted((int(s), float(v)) for s, v in scalars.get(tag, ())))

        return cls(
            current=get("loss/current"),
            average=get("loss/average"),
            epochs=get("loss/epoch_average"),
            validation=get("loss/validation/epoch_average"),
        )

    @property
    def empty(self) -> bool:
        return not (self.current or self.epochs)

    @property
    def steps_per_epoch(self) -> float | None:
        """Optimizer steps per epoch, from the last step and the last epoch logged."""
        if not self.current or not self.epochs:
            return None
        return self.current[-1][0] / max(1, self.epochs[-1][0])

    def epoch_of(self, step: int) -> int | None:
        """The epoch (1-based) a step belongs to."""
        per = self.steps_per_epoch
        return max(1, math.ceil(step / per)) if per else None


@dataclass(frozen=True)
class LossVerdict:
    """One reading of the curve: what it shows, what to do, and the epoch to try first."""

    kind: str  # no_data | nan | too_short | flat | rising | overfitting | still_falling | converged
    title: str
    detail: str
    remedies: tuple[str, ...] = ()
    best_epoch: int | None = None  # the epoch the curve points at (None: the last one)
    from_epoch: int | None = None  # over-fitting: the first epoch after the lowest; NaN: where

    @property
    def good(self) -> bool:
        return self.kind in ("converged", "still_falling")


@dataclass(frozen=True)
class _Point:
    x: int  # epoch number, or the last step of a stretch
    value: float
    epoch: int | None


def _rel(a: float, b: float) -> float:
    """How much ``b`` is below ``a``, as a fraction of ``a`` (negative when above)."""
    return (a - b) / abs(a) if a else 0.0


def _step_noise(curve: LossCurve) -> float:
    """The standard deviation of one step's loss around the curve (from successive differences,
    which a trend barely touches)."""
    values = [v for _, v in curve.current]
    diffs = [b - a for a, b in itertools.pairwise(values)]
    if len(diffs) < 2:
        return 0.0
    return math.sqrt(sum(d * d for d in diffs) / len(diffs) / 2)


def _profile(curve: LossCurve) -> tuple[list[_Point], str, float]:
    """The points to judge, what they are, and the standard error of one point."""
    noise = _step_noise(curve)
    if len(curve.validation) >= 3:
        return [_Point(e, v, e) for e, v in curve.validation], "validation loss per epoch", 0.0
    if len(curve.epochs) >= 3:
        per = curve.steps_per_epoch or 1.0
        points = [_Point(e, v, e) for e, v in curve.epochs]
        return points, "loss per epoch", noise / math.sqrt(max(1.0, per))
    values = curve.current
    bins = min(BINS, len(values) // 5)
    if bins < 3:
        return [], "loss", 0.0
    points = []
    for i in range(bins):
        part = values[i * len(values) // bins : (i + 1) * len(values) // bins]
        last = part[-1][0]
        points.append(_Point(last, sum(v for _, v in part) / len(part), curve.epoch_of(last)))
    return points, "loss (10 stretches of steps)", noise / math.sqrt(len(values) / bins)


def _where(point: _Point) -> str:
    return f"epoch {point.epoch}" if point.epoch is not None else f"step {point.x}"


def judge(curve: LossCurve) -> LossVerdict:
    """Read the curve: NaN, too short, flat, rising, over-fitting, still falling or converged."""
    if curve.empty:
        return LossVerdict(
            "no_data",
            "no loss was logged",
            "the run has no TensorBoard loss (log_with / logging_dir off, or nothing pulled)",
            ("`kohyawrap pull RUN` fetches the TensorBoard files",),
        )
    bad = next(((s, v) for s, v in curve.current if not math.isfinite(v)), None)
    if bad is not None:
        epoch = curve.epoch_of(bad[0])
        before = epoch - 1 if epoch and epoch > 1 else None
        return LossVerdict(
            "nan",
            f"the loss became NaN at step {bad[0]}",
            "every step after it trained nothing; checkpoints saved after it are broken",
            (
                "lower the learning rate (--set learning_rate=...)",
                "use bf16 instead of fp16 on cards that have it (--set mixed_precision=bf16)",
                "with SDXL in fp16, --set no_half_vae=true",
            ),
            best_epoch=before,
            from_epoch=epoch,
        )
    points, what, error = _profile(curve)
    if len(points) < 3:
        return LossVerdict(
            "too_short",
            "too few loss values to judge the curve",
            f"{len(curve.current)} steps, {len(curve.epochs)} epoch(s) logged",
        )
    level = sum(p.value for p in points) / len(points)
    return _shape(points, what, error / abs(level) if level else 0.0)


def _slope_drop(points: list[_Point]) -> float:
    """How much lower the end of ``points`` is than their start, by a fitted straight line, as a
    fraction of their mean."""
    n = len(points)
    mean_x = (n - 1) / 2
    mean_y = sum(p.value for p in points) / n
    spread = sum((i - mean_x) ** 2 for i in range(n))
    slope = sum((i - mean_x) * (p.value - mean_y) for i, p in enumerate(points)) / spread
    return -slope * (n - 1) / abs(mean_y) if mean_y else 0.0


def _shape(points: list[_Point], what: str, noise: float) -> LossVerdict:
    """``noise``: the standard error of one point as a fraction of the level."""
    between = 3 * noise * math.sqrt(2)  # what noise alone makes of the difference of two points
    first, last = points[0], points[-1]
    low_i = min(range(len(points)), key=lambda i: points[i].value)
    low = points[low_i]
    values = [p.value for p in points]
    change = _rel(first.value, last.value)
    span = (max(values) - min(values)) / abs(first.value) if first.value else 0.0
    numbers = f"{what}: {first.value:.4g} at {_where(first)} -> {last.value:.4g} at {_where(last)}"
    if abs(change) < max(FLAT, between) and span < max(FLAT_RANGE, 2 * between):
        return LossVerdict(
            "flat",
            "the loss stayed flat from the start",
            f"{numbers} ({-change:+.1%})",
            (
                "the learning rate may be too low (--set learning_rate=1e-4 / unet_lr=1e-4 are "
                "common for LoRAs)",
                "the captions may not have been read: check that caption_extension matches the "
                "caption files (`kohyawrap dataset lint`)",
            ),
        )
    rise = -_rel(low.value, last.value)
    fell = _rel(first.value, low.value)
    if low_i < len(points) - 1 and rise > max(RISE, between):
        after = points[low_i + 1]
        if fell < max(FELL, between):
            return LossVerdict(
                "rising",
                "the loss rose from the start",
                f"{numbers} ({-change:+.1%})",
                ("the learning rate may be too high: try half of it",),
                best_epoch=low.epoch,
            )
        return LossVerdict(
            "overfitting",
            f"falling then rising: over-fitting from {_where(after)}",
            f"{numbers}; lowest {low.value:.4g} at {_where(low)}, then up {rise:.1%}",
            (
                f"use the checkpoint of {_where(low)} or the one before",
                "train fewer epochs, or lower the learning rate",
            ),
            best_epoch=low.epoch,
            from_epoch=after.epoch,
        )
    tail = points[-max(3, len(points) // 3) :]
    tail_drop = _slope_drop(tail)
    if tail_drop > max(FALLING, 3 * noise):
        return LossVerdict(
            "still_falling",
            "the loss was still falling at the end: maybe under-trained",
            f"{numbers}; {tail_drop:.1%} lower over the last third",
            (
                "train longer from the last checkpoint (`kohyawrap extend RUN`)",
                "or compare the last epochs in the grid: the image decides",
            ),
            best_epoch=last.epoch,
        )
    return LossVerdict(
        "converged",
        "the loss fell and levelled off",
        f"{numbers} ({-change:+.1%})",
        ("compare the last epochs in the grid: a later epoch is not always better",),
        best_epoch=last.epoch,
    )


def suggest(
    verdict: LossVerdict, checkpoints: Sequence[Checkpoint]
) -> tuple[Checkpoint, str] | None:
    """The checkpoint to try first, and why (None when the run has no checkpoint)."""
    usable = [c for c in ordered(checkpoints) if c.kind != "step" or c.epoch is not None]
    if not usable:
        return None
    last = usable[-1]
    target = verdict.best_epoch
    if verdict.kind == "nan":
        before = [c for c in usable if c.epoch is not None and target and c.epoch <= target]
        if not before:
            return last, "the loss became NaN before any checkpoint: none of them is good"
        return before[-1], f"the last checkpoint saved before the loss became NaN ({verdict.title})"
    if target is None or verdict.kind in ("flat", "too_short", "no_data"):
        return last, f"the last checkpoint ({verdict.title})"
    at_or_before = [c for c in usable if c.epoch is not None and c.epoch <= target]
    chosen = at_or_before[-1] if at_or_before else last
    why = {
        "overfitting": f"the lowest loss was at epoch {target}, before it rose",
        "rising": f"the lowest loss was at epoch {target}",
        "still_falling": "the loss was still falling: the latest checkpoint learned the most",
        "converged": "the loss levelled off: the last checkpoint",
    }.get(verdict.kind, verdict.title)
    if chosen.epoch != target and verdict.kind in ("overfitting", "rising"):
        why += f"; epoch {target} has no checkpoint, {chosen.label} is the nearest before it"
    return chosen, why
