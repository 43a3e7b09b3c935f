"""The grid in the run plan: its images, minutes and dollars, --sample-prompts in the samples
sd-scripts draws, refusals before renting, and the plan and manifest JSON round trips."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kohyawrap.errors import UsageError
from kohyawrap.evaluate.gridplan import Checkpoint
from kohyawrap.evaluate.options import GridOptions, parse_grid
from kohyawrap.evaluate.prompts import PromptDefaults, with_sample_prompts
from kohyawrap.evaluate.record import GridRecord
from kohyawrap.launcher.manifest import HostRecord, RunManifest
from kohyawrap.launcher.request import TrainRequest, build_run_plan, checkout_dir
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.models import RunSpec
from kohyawrap.render import SAMPLE_PROMPTS, relaunch, render_run
from tests.fixtures.images import write_jpeg

NOW = datetime(2026, 11, 28, 10, 15, 0, tzinfo=timezone.utc)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    concept = tmp_path / "data" / "10_sks 柴犬"
    for i in range(4):
        write_jpeg(concept / f"{i}.jpg", size=(96, 64), seed=i)
        (concept / f"{i}.txt").write_text("sks 柴犬\n", encoding="utf-8")
    return tmp_path / "data"


def request(dataset: Path, grid: GridOptions, *sets: tuple[str, object]) -> TrainRequest:
    base = dataset.parent / "base.safetensors"
    base.write_bytes(b"\x00" * 64)
    spec = RunSpec(gpu="rtx4090", model="sd15", base_model=str(base), output_name="柴犬",
                   overrides=(("max_train_epochs", 10), ("save_every_n_epochs", 2), *sets))  # fmt: skip
    return TrainRequest(spec=spec, dataset=dataset, grid=grid, force=True)


def plan_of(req: TrainRequest) -> RunPlan:
    return build_run_plan(req, target="gpu-box", home="/root", now=NOW)


def test_the_grid_adds_its_images_minutes_and_dollars(dataset: Path) -> None:
    without = plan_of(request(dataset, GridOptions(enabled=False)))
    with_grid = plan_of(request(dataset, GridOptions()))
    est = with_grid.estimate
    # 4 of the 5 saved checkpoints (auto), 4 strengths above 0, 5 seeds, 2 prompts; the base 5 x 2.
    assert est.grid_images == 4 * 4 * 5 * 2 + 5 * 2
    assert est.grid_seconds > 0 and without.estimate.grid_seconds == 0
    grid_dollars = est.price_per_hour * est.grid_seconds / 3600
    assert est.dollars == pytest.approx(without.estimate.dollars + grid_dollars, abs=2e-4)
    assert est.train_seconds == without.estimate.train_seconds
    fewer = plan_of(request(dataset, parse_grid("epochs=10,strengths=0,1,seeds=1")))
    assert fewer.estimate.grid_images == 1 * 1 * 1 * 2 + 1 * 2
    assert fewer.estimate.grid_seconds < est.grid_seconds


def test_listed_epochs_without_a_checkpoint_are_refused_before_renting(dataset: Path) -> None:
    with pytest.raises(UsageError, match=r"epoch\(s\) 3"):
        plan_of(request(dataset, parse_grid("epochs=3,10")))
    assert plan_of(request(dataset, parse_grid("epochs=4,10"))).grid.epochs == (4, 10)


def test_sample_prompts_reach_the_samples_sd_scripts_draws(dataset: Path) -> None:
    mine = ("一只 sks 柴犬 在雪地里 --n 模糊", "sks 柴犬 portrait --w 384 --d 77")
    plan = plan_of(request(dataset, GridOptions(prompts=mine)))
    text = plan.rendered.files[SAMPLE_PROMPTS]
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0].startswith("一只 sks 柴犬 在雪地里 --n 模糊 --w ") and lines[0].endswith(
        "--d 1"
    )
    assert "--w 384" in lines[1] and " --d 77 " in lines[1] and "--d 2" not in lines[1]
    # reproduce re-renders the same bytes: the overlay comes from the recorded plan alone.
    checkout = checkout_dir(plan.setup, plan.layout)
    again = with_sample_prompts(relaunch(render_run(plan.spec), checkout), plan.grid.prompts)
    assert again.files == plan.rendered.files
    # Without the user's prompts the rendered file is left as render made it.
    plain = plan_of(request(dataset, GridOptions()))
    assert plain.rendered.files[SAMPLE_PROMPTS] == render_run(plain.spec).files[SAMPLE_PROMPTS]


def test_no_sampling_on_the_card_keeps_the_prompts_for_the_grid(dataset: Path) -> None:
    plan = plan_of(request(dataset, GridOptions(prompts=("a cat",)), ("sample_every_n_epochs", 0)))
    assert SAMPLE_PROMPTS not in plan.rendered.files
    assert any("drawn by the grid only" in note for note in plan.notes)


def test_plan_and_manifest_round_trip_with_a_grid(dataset: Path) -> None:
    plan = plan_of(request(dataset, parse_grid("epochs=4,10,seeds=3")))
    assert RunPlan.from_json(plan.to_json()) == plan
    checkpoint = Checkpoint(
        "output/柴犬.safetensors", "checkpoints/柴犬.safetensors", 10, 40, "final"
    )
    record = GridRecord("01", "done", plan.grid, host="gpu-box", remote_dir="/r/grid/01",
                        run_dir="/r", checkpoints=(checkpoint,), prompts=("a",),
                        defaults=PromptDefaults("", 512, 512, 28, 7.0), images=4, pulled=4,
                        done=("base", "final"), seconds=12.5, dollars=0.01)  # fmt: skip
    manifest = RunManifest(plan.run_id, plan, HostRecord("gpu-box"), grid=record)
    assert RunManifest.from_json(manifest.to_json()) == manifest
    # A record written before grids existed has neither: the run simply had none.
    old = manifest.to_json()
    del old["grid"]
    del old["plan"]["grid"]
    loaded = RunManifest.from_json(old)
    assert loaded.grid is None and loaded.plan.grid == GridOptions(enabled=False)
    assert loaded == replace(
        manifest, grid=None, plan=replace(plan, grid=GridOptions(enabled=False))
    )


def test_a_grid_too_large_to_be_meant_is_refused(dataset: Path) -> None:
    huge = parse_grid("epochs=all,strengths=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1,1.1,seeds=20")
    prompts = tuple(f"prompt {i}" for i in range(20))
    with pytest.raises(UsageError, match="at most 5000"):
        plan_of(request(dataset, replace(huge, prompts=prompts)))
