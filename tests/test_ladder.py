"""The out-of-memory ladder (presets/ladders.toml, kohyawrap/ladder.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohyawrap.errors import ConfigError
from kohyawrap.ladder import Ladder, apply_rung, as_sets, load_ladder, next_step
from kohyawrap.models import RunSpec
from kohyawrap.presets import load_catalog, parse_override
from kohyawrap.render import render_run


def _settings(gpu: str, model: str, *overrides: tuple[str, object]) -> dict[str, object]:
    spec = RunSpec(gpu=gpu, model=model, base_model="/m.safetensors", output_name="n",
                   overrides=tuple(overrides))  # fmt: skip
    return dict(render_run(spec).settings)


def _walk(ladder: Ladder, settings: dict[str, object]) -> list[str]:
    """Apply rungs one after another, as the retries do; the rung names in order."""
    tried: list[str] = []
    while (step := next_step(ladder, settings, tried)) is not None:
        tried.append(step.rung.name)
        settings = {**settings, **dict(step.changes)}
    return tried


def test_every_family_has_a_ladder_with_sources() -> None:
    for family in {m.family for m in load_catalog().models.values()}:
        ladder = load_ladder(family)
        assert ladder.rungs, family
        for rung in ladder.rungs:
            assert rung.source and len(rung.source) > 20, rung


def test_sdxl_walks_every_rung_from_a_large_card_tier() -> None:
    settings = _settings("a100-80gb", "sdxl", ("cache_text_encoder_outputs", False),
                         ("network_train_unet_only", False), ("optimizer_type", "AdamW"))  # fmt: skip
    assert settings["train_batch_size"] == 8 and settings["gradient_checkpointing"] is False
    assert _walk(load_ladder("sdxl"), settings) == [
        "gradient checkpointing",
        "half the batch",
        "cached text encoder outputs, U-Net only",
        "8-bit AdamW",
        "lower network_dim",
    ]


def test_half_the_batch_scales_the_learning_rates_by_the_square_root() -> None:
    settings = _settings("rtx4090", "sd15")
    ladder = load_ladder("sd15")
    step = apply_rung(ladder.rungs[1], settings, ladder)
    assert step is not None
    changes = dict(step.changes)
    assert changes["train_batch_size"] == 2  # from the 24 GB tier's 4
    assert changes["unet_lr"] == pytest.approx(3.54e-4)  # 5e-4 x sqrt(1/2), 3 digits
    assert changes["text_encoder_lr"] == pytest.approx(7.07e-5)
    assert "learning_rate" in changes


def test_rungs_that_change_nothing_are_skipped() -> None:
    ladder = load_ladder("sd15")
    small = _settings("rtx3060-12gb", "sd15", ("train_batch_size", 1), ("network_dim", 4),
                      ("gradient_checkpointing", True))  # fmt: skip
    assert small["optimizer_type"] == "AdamW8bit"
    assert next_step(ladder, small, []) is None  # nothing left: a larger GPU is the answer


def test_adaptive_optimizers_keep_their_learning_rate_and_their_optimizer() -> None:
    ladder = load_ladder("sd15")
    prodigy = _settings("rtx4090", "sd15", ("optimizer_type", "Prodigy"), ("learning_rate", 1.0),
                        ("unet_lr", 1.0), ("text_encoder_lr", 1.0))  # fmt: skip
    step = apply_rung(ladder.rungs[1], prodigy, ladder)
    assert step is not None and dict(step.changes) == {"train_batch_size": 2}
    assert apply_rung(ladder.rungs[2], prodigy, ladder) is None  # no switch to AdamW8bit


def test_dim_and_alpha_halve_together_down_to_the_minimum() -> None:
    ladder = load_ladder("sdxl")
    rung = ladder.rungs[-1]
    step = apply_rung(rung, {"network_dim": 32, "network_alpha": 16}, ladder)
    assert step is not None and dict(step.changes) == {"network_dim": 16, "network_alpha": 8}
    assert apply_rung(rung, {"network_dim": 6, "network_alpha": 3}, ladder) is None


def test_suggested_sets_read_back_as_the_same_values() -> None:
    changes = (("gradient_checkpointing", True), ("train_batch_size", 2), ("unet_lr", 3.54e-4),
               ("text_encoder_lr", [7.07e-5]), ("optimizer_type", "AdamW8bit"))  # fmt: skip
    text = as_sets(changes)
    assert text.startswith("--set gradient_checkpointing=true --set train_batch_size=2")
    parsed = [parse_override(part.strip()) for part in text.split("--set") if part.strip()]
    assert tuple(parsed) == changes


def test_a_broken_ladder_is_refused_with_its_place(tmp_path: Path) -> None:
    bad = tmp_path / "ladders.toml"
    bad.write_text('[[sd15]]\nname = "x"\nsource = "y"\nlr_scaling = "cube"\nhalve = ["a"]\n')
    with pytest.raises(ConfigError, match="lr_scaling"):
        load_ladder("sd15", bad)
    bad.write_text('[[sd15]]\nname = "x"\nsource = "y"\n')
    with pytest.raises(ConfigError, match="needs `set` or `halve`"):
        load_ladder("sd15", bad)
    assert load_ladder("flux", bad).rungs == ()  # no family, no default: nothing to try
