"""`kohyawrap train --gpus ...` end to end on this machine, with a fake nvidia-smi on PATH that
reports two GPUs (the hardware cannot exist here) and the fake sd-scripts: the job pinned to the
free GPU really gets it in its environment, and a job across both is launched multi-GPU with the
step count the plan announced."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from kohyawrap.launcher.manifest import RunStatus
from tests.fixtures.fakesds import FakeSdScripts
from tests.fixtures.runs import Env, kohyawrap, manifest_of, only_run, train_args
from tests.test_scale_gpus import UUID1, fake_nvidia_smi

pytestmark = pytest.mark.slow


def with_fake_gpus(world: Env, *, busy: bool) -> dict[str, str]:
    bin_dir = fake_nvidia_smi(world.root / "fake-bin", busy=busy)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def launched(world: Env) -> dict:
    """What the (fake) accelerate launcher saw: its arguments and GPU variables."""
    runs = list((world.work / "runs").iterdir())
    assert len(runs) == 1
    return json.loads((runs[0] / "fake_accelerate_launch.json").read_text())


def test_a_job_pinned_to_the_free_gpu(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    result = kohyawrap(world, *args, "--gpus", "1", extra_env=with_fake_gpus(world, busy=True))
    assert result.returncode == 0, result.stderr
    m = manifest_of(only_run(world))
    assert m.status is RunStatus.FINISHED
    assert m.plan.gpus.devices == (1,)
    seen = launched(world)
    assert seen["CUDA_VISIBLE_DEVICES"] == UUID1 and seen["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "--multi_gpu" not in seen["argv"]
    assert re.search(r"gpus\s+1\s+\(the 1 free GPU\(s\) with the most free memory", result.stderr)


def test_a_job_across_both_gpus(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    extra = with_fake_gpus(world, busy=False)
    result = kohyawrap(world, *args, "--gpus", "all", "--multi-gpu", extra_env=extra)
    assert result.returncode == 0, result.stderr
    m = manifest_of(only_run(world))
    assert m.status is RunStatus.FINISHED and m.plan.spec.processes == 2
    seen = launched(world)
    assert seen["argv"][:3] == ["--multi_gpu", "--num_processes", "2"]
    assert seen["CUDA_VISIBLE_DEVICES"].count("GPU-") == 2
    log = (only_run(world) / "run.log").read_text("utf-8")
    # 4 images x 10 repeats at batch 1 = 40 batches; 2 processes take 20 each; 2 epochs.
    assert "num batches per epoch / 1epochのバッチ数: 20" in log
    assert f"学習ステップ数: {m.plan.estimate.steps}" in log and m.plan.estimate.steps == 40
    assert "multi-gpu" in result.stderr and "effective batch 2" in result.stderr


def test_several_gpus_without_multi_gpu_are_refused_before_anything_runs(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    result = kohyawrap(world, *args, "--gpus", "2", extra_env=with_fake_gpus(world, busy=False))
    assert result.returncode != 0
    assert "without --multi-gpu trains on one GPU" in result.stderr
    assert "Traceback" not in result.stderr
    assert not Path(world.runs).exists() or not any(Path(world.runs).iterdir())
