"""The loss verdict on synthetic curves of each shape, on a recorded sd-scripts TensorBoard file,
and the checkpoint it points at."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from kohyawrap.evaluate.gridplan import Checkpoint
from kohyawrap.evaluate.loss import LossCurve, LossVerdict, judge, suggest
from kohyawrap.tensorboard import read_scalars, write_scalars

RECORDED = (
    Path(__file__).parent / "data" / "sdscripts" / "events.out.tfevents.1795819978.vm.29038.0"
)
STEPS_PER_EPOCH = 40


def curve_of(shape: Callable[[float], float], epochs: int = 10, noise: float = 0.03) -> LossCurve:
    """A run of ``epochs`` epochs whose loss at fraction t of the run is shape(t), plus noise;
    its epoch averages as sd-scripts logs them (the mean of each epoch's steps)."""
    rng = random.Random(7)
    total = epochs * STEPS_PER_EPOCH
    current = [(s, shape(s / total) + rng.uniform(-noise, noise)) for s in range(1, total + 1)]
    per_epoch = [
        (e, sum(v for _, v in current[(e - 1) * STEPS_PER_EPOCH : e * STEPS_PER_EPOCH]) / STEPS_PER_EPOCH)
        for e in range(1, epochs + 1)
    ]  # fmt: skip
    return LossCurve(current=tuple(current), epochs=tuple(per_epoch))


def test_flat_from_the_start_points_at_learning_rate_and_captions() -> None:
    verdict = judge(curve_of(lambda t: 0.12))
    assert verdict.kind == "flat"
    assert any("learning rate" in r for r in verdict.remedies)
    assert any("caption_extension" in r for r in verdict.remedies)


def test_still_falling_suggests_training_longer() -> None:
    verdict = judge(curve_of(lambda t: 0.16 - 0.06 * t, noise=0.01))
    assert verdict.kind == "still_falling"
    assert verdict.best_epoch == 10
    assert any("kohyawrap extend" in r for r in verdict.remedies)


def test_fell_and_levelled_off_is_converged() -> None:
    verdict = judge(curve_of(lambda t: 0.09 + 0.06 * math.exp(-t * 20), noise=0.005))
    assert verdict.kind == "converged"
    assert verdict.good


def test_falling_then_rising_is_overfitting_from_the_epoch_after_the_lowest() -> None:
    # Lowest in epoch 5 (t = 0.45), rising after.
    verdict = judge(curve_of(lambda t: 0.1 + 0.2 * (t - 0.45) ** 2, noise=0.002))
    assert verdict.kind == "overfitting"
    assert verdict.best_epoch == 5
    assert verdict.from_epoch == 6
    assert "epoch 6" in verdict.title


def test_rising_from_the_start_points_at_a_learning_rate_too_high() -> None:
    verdict = judge(curve_of(lambda t: 0.1 + 0.05 * t, noise=0.001))
    assert verdict.kind == "rising"


def test_validation_loss_decides_when_the_run_has_one() -> None:
    falling = curve_of(lambda t: 0.15 - 0.05 * t, noise=0.002)
    validation = tuple(
        (e, 0.2 - 0.02 * e if e <= 4 else 0.12 + 0.02 * (e - 4)) for e in range(1, 11)
    )
    verdict = judge(LossCurve(falling.current, falling.average, falling.epochs, validation))
    assert verdict.kind == "overfitting"
    assert verdict.best_epoch == 4
    assert "validation" in verdict.detail


def test_nan_names_the_step_and_the_last_good_epoch() -> None:
    good = curve_of(lambda t: 0.12)
    current = tuple((s, math.nan if s >= 250 else v) for s, v in good.current)
    verdict = judge(LossCurve(current, epochs=good.epochs))
    assert verdict.kind == "nan"
    assert "step 250" in verdict.title
    assert verdict.from_epoch == 7 and verdict.best_epoch == 6


def test_too_short_and_no_data() -> None:
    assert judge(LossCurve(current=tuple((s, 1.0) for s in range(1, 9)))).kind == "too_short"
    assert judge(LossCurve()).kind == "no_data"


def test_recorded_sd_scripts_run_fell_and_levelled_off(tmp_path: Path) -> None:
    # The real CPU run (random-weight SD1.5, 80 steps, 2 epochs at lr 1e-4) falls from 1.157 to
    # 0.996 (-14%); over its last third it moves 3% by a fitted line, less than the step-to-step
    # noise of its 8-step stretches can make (~4.5%): levelled off, not provably still falling.
    curve = LossCurve.from_scalars(read_scalars(RECORDED))
    assert curve.steps_per_epoch == 40
    verdict = judge(curve)
    assert verdict.kind == "converged" and verdict.best_epoch == 2
    assert "1.157" in verdict.detail and "0.996" in verdict.detail
    # The same scalars written by our writer and read back say the same.
    copy = tmp_path / "events.out.tfevents.1.host.1.0"
    write_scalars(copy, read_scalars(RECORDED))
    assert judge(LossCurve.from_scalars(read_scalars(copy))) == verdict


def checkpoints(*epochs: int) -> list[Checkpoint]:
    last = max(epochs)
    return [
        Checkpoint(f"output/x-{e:06d}.safetensors", f"checkpoints/x-{e:06d}.safetensors", e,
                   e * STEPS_PER_EPOCH, "final" if e == last else "epoch")
        for e in epochs
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("verdict", "saved", "epoch", "says"),
    [
        (LossVerdict("overfitting", "t", "d", best_epoch=5), (2, 4, 6, 8, 10), 4, "nearest before"),
        (LossVerdict("overfitting", "t", "d", best_epoch=6), (2, 4, 6, 8, 10), 6, "lowest loss"),
        (LossVerdict("still_falling", "t", "d", best_epoch=10), (5, 10), 10, "still falling"),
        (LossVerdict("nan", "t", "d", best_epoch=6), (2, 4, 6, 8, 10), 6, "before the loss became NaN"),
        (LossVerdict("flat", "t", "d"), (5, 10), 10, "the last checkpoint"),
    ],
)  # fmt: skip
def test_suggest_picks_a_saved_checkpoint_with_a_reason(
    verdict: LossVerdict, saved: tuple[int, ...], epoch: int, says: str
) -> None:
    chosen = suggest(verdict, checkpoints(*saved))
    assert chosen is not None
    assert chosen[0].epoch == epoch
    assert says in chosen[1]
    assert suggest(verdict, []) is None


def test_recorded_short_run_is_too_short_to_judge() -> None:
    # A real 8-step run (2 epochs of 4 steps): the verdict says it cannot read so few values.
    path = RECORDED.parent / "short_run" / "events.out.tfevents.1795983492.vm.10042.0"
    curve = LossCurve.from_scalars(read_scalars(path))
    assert len(curve.current) == 8 and len(curve.epochs) == 2
    assert curve.steps_per_epoch == 4
    verdict = judge(curve)
    assert verdict.kind == "too_short" and "8 steps, 2 epoch(s)" in verdict.detail
    chosen = suggest(verdict, checkpoints(1, 2))
    assert chosen is not None and chosen[0].epoch == 2
