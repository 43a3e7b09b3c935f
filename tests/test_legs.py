"""Legs of a run in its record: JSON round trip, older records, starting a leg, dollars, and the
leg's own folders (kohyawrap/launcher/legs.py, manifest.py, runplan.py, runstore.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from kohyawrap.launcher.layout import RemoteLayout
from kohyawrap.launcher.legs import begin_leg, first_leg, leg_dollars, leg_records
from kohyawrap.launcher.manifest import (
    Cost,
    FollowState,
    HostRecord,
    Leg,
    PulledFile,
    RunManifest,
    RunStatus,
)
from kohyawrap.launcher.request import TrainRequest, build_run_plan
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.models import Finding, RunSpec

NOW = datetime(2026, 11, 28, 10, 15, 0, tzinfo=timezone.utc)
T0 = 1_800_000_000.0


@pytest.fixture
def plan(tmp_path: Path) -> RunPlan:
    concept = tmp_path / "data" / "10_柴犬"
    concept.mkdir(parents=True)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(concept / "a.png")
    (concept / "a.txt").write_text("柴犬\n")
    spec = RunSpec(gpu="rtx4090", model="sd15", base_model="runwayml/stable-diffusion-v1-5",
                   output_name="柴犬", overrides=(("max_train_epochs", 4),))  # fmt: skip
    request = TrainRequest(spec=spec, dataset=tmp_path / "data", work_dir="/w")
    return build_run_plan(request, target="root@gpu", home="/root", now=NOW)


def _manifest(plan: RunPlan) -> RunManifest:
    host = HostRecord("root@gpu", "gpu", {"port": 2222}, {})
    return RunManifest(
        run_id=plan.run_id,
        plan=plan,
        host=host,
        status=RunStatus.RUNNING,
        started_at=T0,
        launched_at=T0 + 60,
        follow=FollowState(log_offset=10, last_step=55, total_steps=160, sec_per_step=0.5,
                           measured={"gpu_utilization_pct": 91.0},
                           findings=(Finding("warning", "slow-cpu", None, "m", "h"),)),
        pulled={"output/a/train_state.json": PulledFile("ab", 10, "checkpoints/a/train_state.json")},
        legs=(first_leg(plan, host, T0),),
    )  # fmt: skip


def test_runs_save_states_by_default(plan: RunPlan) -> None:
    settings = plan.rendered.settings
    assert (settings["save_state"], settings["save_last_n_epochs_state"]) == (True, 2)
    assert "save_state = true" in plan.rendered.files["training_config.toml"]


def test_a_second_leg_round_trips_and_keeps_the_first_plan(plan: RunPlan) -> None:
    m = _manifest(plan)
    leg_plan = replace(plan, layout=RemoteLayout("/other", f"{plan.run_id}-leg2"))
    assert RunPlan.from_json(leg_plan.to_json()) == leg_plan  # the leg's own folder survives
    leg = Leg(2, "resume", "root@other", {"port": 22}, leg_plan.layout.run_dir, T0 + 900,
              step_offset=40, resumed_from="leg 1: 柴犬-000001-state",
              changed={"resume": "resume/柴犬-000001-state", "initial_epoch": 2})  # fmt: skip
    moved = begin_leg(m, leg, leg_plan, HostRecord("root@other"), now=T0 + 900)
    assert moved.original_plan == plan and moved.plan == leg_plan
    assert (moved.leg_number, moved.step_offset, moved.status) == (2, 40, RunStatus.PLANNED)
    assert moved.pulled == {} and moved.follow == FollowState() and moved.exit_code is None
    closed = moved.legs[0]
    assert (closed.status, closed.last_step, closed.ended_at) == ("lost", 55, T0 + 900)
    assert closed.dollars == pytest.approx(0.45 * 900 / 3600)  # paid until it was given up
    assert closed.pulled == m.pulled and closed.measured["s_per_step"] == 0.5
    assert moved.cost is not None and moved.cost.actual == closed.dollars
    assert moved.earlier_dollars == closed.dollars
    data = json.loads(json.dumps(moved.to_json()))
    assert RunManifest.from_json(data) == moved


def test_a_record_without_legs_still_loads_and_has_one(plan: RunPlan) -> None:
    m = replace(_manifest(plan), legs=())
    data = m.to_json()
    for key in ("legs", "origin"):
        del data[key]
    for key in ("sec_per_step", "measured", "findings"):
        del data["follow"][key]
    del data["plan"]["estimate"]["seconds_per_step"]
    old = RunManifest.from_json(data)
    assert old.legs == () and old.leg_number == 1 and old.original_plan == old.plan
    assert old.plan.estimate.seconds_per_step == 0.0
    (only,) = leg_records(old, T0 + 100)
    assert (only.number, only.kind, only.target) == (1, "train", "root@gpu")


def test_an_ended_leg_costs_its_share_of_the_recorded_cost(plan: RunPlan) -> None:
    m = _manifest(plan)
    second = begin_leg(m, Leg(2, "retry", "root@gpu", started_at=T0 + 100), plan, m.host, T0 + 100)
    ended = second.with_changes(
        status=RunStatus.FINISHED, exit_code=0, finished_at=T0 + 500,
        cost=Cost(0.1, round(second.earlier_dollars + 0.05, 4), 0.45),
    )  # fmt: skip
    assert leg_dollars(ended, T0 + 9999) == pytest.approx(0.05)
    assert [leg.status for leg in leg_records(ended, T0 + 600)] == ["lost", "finished"]


def test_leg_folders_on_the_laptop(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert (run.log.name, run.checkpoints.name, run.leg_config.name) == (
        "run.log", "checkpoints", "config"
    )  # fmt: skip
    leg = run.for_leg(3)
    assert leg.log == run.path / "run.leg3.log"
    assert leg.checkpoints == run.path / "checkpoints" / "leg3"
    assert leg.leg_config == run.path / "config" / "leg3"
    assert leg.manifest_path == run.manifest_path


def test_a_state_from_a_leg_with_another_network_is_refused(plan: RunPlan) -> None:
    from kohyawrap.errors import UsageError
    from kohyawrap.launcher.continuing import check_state_fits, leg_settings
    from kohyawrap.launcher.states import StateRef, TrainState
    from kohyawrap.render import render_run

    m = _manifest(plan)
    smaller = replace(plan.spec, overrides=(*plan.spec.overrides, ("network_dim", 8)))
    retry_plan = replace(plan, rendered=render_run(smaller))
    leg2 = Leg(2, "retry", "root@gpu", changed={"network_dim": 8, "network_alpha": None})
    m = begin_leg(m, leg2, retry_plan, m.host, now=T0 + 100)
    assert leg_settings(m, 2)["network_dim"] == 8 and "network_alpha" not in leg_settings(m, 2)
    assert leg_settings(m, 1)["network_dim"] == 16
    old = StateRef(1, "柴犬-000001-state", "epoch", TrainState(1, 10))
    with pytest.raises(UsageError, match="network_dim 16 there, 8 now"):
        check_state_fits(m, old, retry_plan)
    check_state_fits(m, replace(old, leg=2), retry_plan)  # the retry's own state fits
