"""Every GPU of the box in a queue: one job per GPU. The host's facts come from the real probe with
a fake ``nvidia-smi`` first on PATH reporting two RTX 4090s (tests/test_scale_gpus.py): the only
stand-in, for hardware that cannot exist here. The plan says which job goes where; the runner
gives each job its GPU as a slot frees up."""

from __future__ import annotations

import itertools
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kohyawrap.errors import HostError
from kohyawrap.hosts.local import LocalHost
from kohyawrap.launcher.gpus import GpuAssignment, GpuRequest
from kohyawrap.launcher.manifest import RunStatus
from kohyawrap.launcher.queuefile import read_queue_file
from kohyawrap.launcher.queueplanning import QueueOptions, plan_host, plan_queue
from kohyawrap.launcher.queuerecord import QueueStore
from tests.fixtures.cli import run_cli
from tests.fixtures.fakesds import FakeBehaviour, FakeSdScripts
from tests.fixtures.runs import Env, kohyawrap
from tests.test_forecast import make_dataset
from tests.test_queue_e2e import queue_file, run_args
from tests.test_scale_gpus import UUID0, UUID1, fake_nvidia_smi

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)


def three_jobs(root: Path) -> Path:
    make_dataset(root / "数据")
    path = root / "jobs.toml"
    path.write_text(
        '[defaults]\nmodel = "sd15"\nbase_model = "org/model"\ndataset = "数据"\ngrid = false\n'
        'set = { max_train_epochs = 2 }\n'
        '[[job]]\nname = "柴犬"\n[[job]]\nname = "two"\n[[job]]\nname = "three"\n',
        encoding="utf-8",
    )  # fmt: skip
    return path


def planned(root: Path, gpus: GpuRequest | None = None):  # type: ignore[no-untyped-def]
    queue = read_queue_file(three_jobs(root))
    options = QueueOptions(targets=("local",), gpus=gpus or GpuRequest())
    host, _ = plan_host(LocalHost(), "local", queue, options, "q1", 0)
    return plan_queue(queue, options, [host], NOW, "q1")


@pytest.fixture
def nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def put(*, busy: bool) -> None:
        folder = fake_nvidia_smi(tmp_path / ("busy" if busy else "idle"), busy=busy)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    return put


def test_three_jobs_on_two_free_gpus_take_turns(tmp_path: Path, nvidia_smi) -> None:  # type: ignore[no-untyped-def]
    nvidia_smi(busy=False)
    plan = planned(tmp_path)
    (host,) = plan.hosts
    assert [s.visible for s in host.slots] == [UUID0, UUID1]
    assert [plan.where(i) for i in range(3)] == ["local GPU 0", "local GPU 1", "local GPU 0"]
    # The plan does not pin a job (the runner gives it the GPU that frees up); --gpu auto is
    # read from the cards; the box is priced for both of them.
    assert all(p.gpus == GpuAssignment() and p.spec.gpu == "rtx4090" for p in plan.plans)
    assert host.price_per_hour == pytest.approx(2 * plan.plans[0].estimate.price_per_hour)
    first, second, third = plan.estimate.placements
    assert first.start == second.start and third.start == first.end
    assert plan.estimate.seconds < plan.estimate.separate_seconds


def test_a_busy_gpu_is_left_alone(tmp_path: Path, nvidia_smi) -> None:  # type: ignore[no-untyped-def]
    nvidia_smi(busy=True)  # GPU 0 runs another user's python
    plan = planned(tmp_path)
    assert [s.visible for s in plan.hosts[0].slots] == [UUID1]
    assert {plan.where(i) for i in range(3)} == {"local GPU 1"}
    with pytest.raises(HostError, match="in use by other processes"):
        planned(tmp_path / "again", GpuRequest(devices=(0,)))


def test_the_dry_run_says_where_each_job_goes(tmp_path: Path, nvidia_smi, capsys) -> None:  # type: ignore[no-untyped-def]
    nvidia_smi(busy=False)
    path = three_jobs(tmp_path)
    code, out = run_cli(["queue", "run", str(path), "--host", "local", "--dry-run", "--json",
                         "--runs-dir", str(tmp_path / "runs")], capsys)  # fmt: skip
    assert code == 0, out
    data, _ = json.JSONDecoder().raw_decode(out[out.index("{") :])  # stderr follows stdout
    assert [j["where"] for j in data["jobs"]] == ["local GPU 0", "local GPU 1", "local GPU 0"]
    assert data["hosts"][0]["slots"] == ["GPU 0", "GPU 1"]
    assert data["estimate"]["saving_dollars"] >= 0
    assert not (tmp_path / "runs").exists(), "a dry run records nothing"


def test_the_printed_plan_says_the_saving_and_when_two_gpus_cost_more(  # type: ignore[no-untyped-def]
    tmp_path: Path, nvidia_smi, capsys
) -> None:  # fmt: skip
    nvidia_smi(busy=False)
    make_dataset(tmp_path / "数据")
    path = tmp_path / "three sdxl.toml"
    path.write_text(
        '[defaults]\nmodel = "sdxl"\nbase_model = "stabilityai/stable-diffusion-xl-base-1.0"\n'
        'dataset = "数据"\ngrid = false\nset = { max_train_epochs = 10 }\n'
        '[[job]]\nname = "柴犬"\n[[job]]\nname = "two"\n[[job]]\nname = "three"\n',
        encoding="utf-8",
    )  # fmt: skip
    runs = ["--runs-dir", str(tmp_path / "runs")]

    def plan(*extra: str) -> str:
        code, out = run_cli(["queue", "run", str(path), "--host", "local", "--dry-run", *runs,
                             *extra], capsys)  # fmt: skip
        assert code == 0 and "Traceback" not in out, out
        return out

    # One GPU: the second and third jobs skip the install and the download, in time and dollars.
    out = plan("--gpus", "1")
    saved = re.search(r"saving: ~(\d+) min, ~\$(\d+\.\d+) \(set-up and model downloads", out)
    assert saved and int(saved[1]) > 0 and float(saved[2]) > 0, out
    assert "more than separate sessions" not in out
    # Two GPUs: sooner, but the box is paid for both while one idles under the third job.
    out = plan()
    raw = plan("--json")
    est = json.JSONDecoder().raw_decode(raw[raw.index("{") :])[0]["estimate"]
    assert est["seconds"] < est["separate_seconds"] and est["saving_dollars"] < 0
    assert "saving: ~" in out and "no dollars" in out
    assert "the queue costs ~$" in out and "more than separate sessions: GPUs idle" in out


@pytest.mark.slow
def test_two_jobs_train_at_once_one_on_each_gpu(
    world: Env, fake_sdscripts: FakeSdScripts, tmp_path: Path
) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", busy=False)
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.05))
    path = queue_file(world, fake_sdscripts, commit, [{"name": "左"}, {"name": "右"}])
    result = kohyawrap(world, *run_args(world, path, "local"), timeout=300,
                       extra_env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    store = QueueStore(world.runs)
    record = store.load(store.ids()[0])
    state = json.loads((Path(record.hosts[0].queue_dir) / "state.json").read_text())
    jobs = sorted(state["jobs"].values(), key=lambda j: j["name"])
    assert sorted(j["gpu"] for j in jobs) == sorted([UUID0, UUID1])
    # They ran at the same time: each started before the other ended.
    for a, b in itertools.permutations(jobs, 2):
        assert a["started_at"] < b["ended_at"], jobs
    for job in record.jobs:
        assert store.run(job).load().status is RunStatus.FINISHED
