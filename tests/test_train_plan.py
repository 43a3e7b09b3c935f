"""``train --dry-run --json``: the whole plan of one fixed request as a golden file, and the CLI
printing exactly what the library plans."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from kohyawrap.evaluate.options import GridOptions
from kohyawrap.hosts.connect import ConnectOptions
from kohyawrap.launcher.report import SilentReporter
from kohyawrap.launcher.request import TrainRequest
from kohyawrap.launcher.runplan import MoneyOptions, RunPlan
from kohyawrap.launcher.runstore import RunStore
from kohyawrap.launcher.verbs import Launcher
from kohyawrap.models import RunSpec
from tests.fixtures.cli import run_cli
from tests.test_forecast import make_dataset

GOLDEN = Path(__file__).parent / "golden" / "train-dry-run.json"
UPDATE = os.environ.get("KOHYAWRAP_UPDATE_GOLDEN") == "1"
NOW = datetime(2026, 11, 28, 10, 15, 0, tzinfo=timezone.utc)


def normalised(data: dict[str, Any], dataset: Path) -> str:
    """The plan's JSON with this test's temporary folder replaced by a fixed name."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return text.replace(str(dataset.resolve()), "/data/training_data")


def dry_run(dataset: Path, tmp_path: Path) -> RunPlan:
    request = TrainRequest(
        spec=RunSpec(
            gpu="rtx4090",
            model="sdxl",
            base_model="stabilityai/stable-diffusion-xl-base-1.0",
            output_name="柴犬",
            overrides=(("max_train_epochs", 4),),
        ),
        dataset=dataset,
        money=MoneyOptions(price_per_hour=0.59, max_dollars=2.0, on_finish="none"),
        grid=GridOptions(),  # the CLI's default: the grid after training
    )
    planned: list[RunPlan] = []
    launcher = Launcher(RunStore(tmp_path / "runs"), SilentReporter(), now=lambda: NOW)
    result = launcher.train(
        request, "root@gpu.example", ConnectOptions(), dry_run=True, on_plan=planned.append
    )
    assert planned == [result.plan]
    assert not (tmp_path / "runs").exists(), "a dry run records nothing"
    return result.plan


def test_the_plan_of_a_fixed_request_is_its_golden_file(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "data", reg=True)
    text = normalised(dry_run(dataset, tmp_path).to_json(), dataset)
    if UPDATE:
        GOLDEN.write_text(text, encoding="utf-8")
    assert GOLDEN.exists(), (
        f"no golden file {GOLDEN}; run with KOHYAWRAP_UPDATE_GOLDEN=1 and review it"
    )
    assert text == GOLDEN.read_text(encoding="utf-8"), "the plan differs from its golden file"


def test_the_cli_prints_what_the_library_plans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path / "data", reg=True)
    library = json.loads(json.dumps(dry_run(dataset, tmp_path).to_json()))
    code, out = run_cli(
        [
            "train", "--host", "root@gpu.example", "--gpu", "rtx4090", "--model", "sdxl",
            "--dataset", str(dataset), "--base-model", "stabilityai/stable-diffusion-xl-base-1.0",
            "--name", "柴犬", "--set", "max_train_epochs=4", "--price", "0.59",
            "--max-dollars", "2", "--runs-dir", str(tmp_path / "runs"), "--dry-run", "--json",
        ],
        capsys,
        flatten_stderr=False,
    )  # fmt: skip
    assert code == 0, out
    printed = json.loads(out[: out.rindex("}") + 1])
    for key in ("run_id", "created_at", "remote_run_dir"):  # the CLI plans at the real time
        printed.pop(key)
        library.pop(key)
    assert printed == library
