"""The plan for FLUX.1, Chroma and SD3.5: steps as sd-scripts counts them, fp8 and block swap in the
VRAM and time estimates, companion files in the download, and notes saying what is estimated."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohyawrap.dataset.scan import read_training_dir
from kohyawrap.forecast import build_forecast, compare_forecasts
from kohyawrap.models import RunSpec
from kohyawrap.models_fetch import render_paths
from kohyawrap.presets import load_catalog
from tests.fixtures.images import write_jpeg

CATALOG = load_catalog(user_dir=Path("/nonexistent-kohyawrap-user-dir"))
NEW = ("flux-dev", "flux-schnell", "chroma", "sd35-large", "sd35-medium")


@pytest.fixture(scope="module")
def tdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("families") / "data"
    for i in range(3):
        write_jpeg(root / "10_sks 狗" / f"照片 {i}.jpg", (1024, 1024), seed=i)
        (root / "10_sks 狗" / f"照片 {i}.txt").write_text("sks 狗", encoding="utf-8")
    return read_training_dir(root)


def spec(gpu: str, model: str, catalog=CATALOG, **kw) -> RunSpec:
    base, companions = render_paths(catalog.model(model), {})
    return RunSpec(
        gpu=gpu, model=model, base_model=base, companions=companions, output_name="my_lora", **kw
    )


@pytest.mark.parametrize("model", NEW)
def test_every_gpu_preset_fits_and_is_priced(tdir, model):
    plans = compare_forecasts(spec("rtx4090", model), tdir, catalog=CATALOG)
    assert [p.estimate.gpu for p in plans] == sorted(
        CATALOG.gpus, key=lambda g: (CATALOG.gpus[g].vram_gb, CATALOG.gpus[g].price_per_hour, g)
    )
    for plan in plans:
        est = plan.estimate
        assert est.fits, (plan.estimate.gpu, est.vram_needed_gb)
        assert est.steps > 0 and est.dollars > 0 and plan.seconds_per_step > 0
        assert any("estimate" in n for n in est.notes)


def test_flux_steps_follow_the_tier_batch(tdir):
    # 3 square images x 10 repeats = 30 in the 1024x1024 bucket; 10 epochs.
    big = build_forecast(spec("rtx4090", "flux-dev"), tdir, catalog=CATALOG).steps
    assert (big.batch_size, big.batches_per_epoch, big.total_steps) == (2, 15, 150)
    small = build_forecast(spec("rtx3060-12gb", "flux-dev"), tdir, catalog=CATALOG).steps
    assert (small.batch_size, small.batches_per_epoch, small.total_steps) == (1, 30, 300)
    assert dict(big.buckets) == {(1024, 1024): 30}


def test_fp8_and_swapped_blocks_shrink_vram_and_cost_time(tdir):
    plan = build_forecast(spec("rtx3060-12gb", "flux-dev"), tdir, catalog=CATALOG)
    vram = {p.name: p for p in plan.vram}
    weights = vram["transformer weights"]
    assert weights.seconds == pytest.approx(23.8 * 0.5 * 22 / 38)  # fp8, 16 of 38 swapped
    assert "fp8_base" in weights.basis and "16 swapped" in weights.basis
    assert "text encoders" not in vram  # their outputs are cached
    speed = CATALOG.gpus["rtx3060-12gb"].speed["flux"]
    swap = 2 * 16 * (23.8 * 0.5 / 38) / CATALOG.rules.number("swap_gb_s")
    per_image = speed.s_per_image * CATALOG.rules.number("checkpointing_slowdown")
    assert plan.seconds_per_step == pytest.approx(speed.step_overhead_s + swap + per_image)
    bf16 = build_forecast(
        spec("rtx3060-12gb", "flux-dev", overrides=(("fp8_base", False), ("blocks_to_swap", 0))),
        tdir,
        catalog=CATALOG,
    )
    assert not bf16.estimate.fits and bf16.estimate.vram_needed_gb > 23.8


def test_cpu_offload_costs_fifteen_percent(tdir):
    base = spec("rtx4090", "flux-dev")
    plain = build_forecast(base, tdir, catalog=CATALOG).seconds_per_step
    from dataclasses import replace

    offload = build_forecast(
        replace(base, overrides=(("cpu_offload_checkpointing", True),)), tdir, catalog=CATALOG
    ).seconds_per_step
    speed = CATALOG.gpus["rtx4090"].speed["flux"]
    assert offload - plain == pytest.approx(
        2 * speed.s_per_image * CATALOG.rules.number("checkpointing_slowdown") * 0.15
    )


def test_the_download_counts_the_companion_files_and_the_preset_load_time(tdir):
    stages = {
        p.name: p for p in build_forecast(spec("rtx4090", "flux-dev"), tdir, catalog=CATALOG).stages
    }
    host = CATALOG.rules.number("host_download_mb_s")
    assert stages["model download"].seconds == pytest.approx(
        (23.8 + 0.246 + 9.79 + 0.335) * 1000 / host
    )
    assert stages["model load"].seconds == 180
    assert "x 20 steps" in stages["sampling"].basis  # flux_train_utils.py's default 20 steps
    chroma = {
        p.name: p for p in build_forecast(spec("rtx4090", "chroma"), tdir, catalog=CATALOG).stages
    }
    assert chroma["model download"].seconds == pytest.approx((17.8 + 9.79 + 0.335) * 1000 / host)


def test_a_user_preset_extending_flux_dev_plans_like_it(tdir, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "我的-flux.toml").write_text(
        'extends = "flux-dev"\n[model]\ntitle = "mine"\n[train]\nnetwork_dim = 32  # mine\n',
        encoding="utf-8",
    )
    catalog = load_catalog(user_dir=tmp_path)
    mine = build_forecast(spec("rtx4090", "我的-flux", catalog), tdir, catalog=catalog)
    theirs = build_forecast(spec("rtx4090", "flux-dev"), tdir, catalog=CATALOG)
    assert mine.steps == theirs.steps and mine.rendered.settings["network_dim"] == 32
