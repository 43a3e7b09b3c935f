"""The run record as a type: RunPlan and RunManifest round trips, the first release's manifests,
corrupt records, and the limits and polling that read an injected clock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kohyawrap.clock import SystemClock
from kohyawrap.errors import UsageError
from kohyawrap.hosts.local import LocalHost
from kohyawrap.launcher import job
from kohyawrap.launcher.budget import Budget, dollars
from kohyawrap.launcher.fetch import Puller
from kohyawrap.launcher.follow import Follower
from kohyawrap.launcher.manifest import (
    Cost,
    EnvironmentRecord,
    FollowState,
    HostRecord,
    Provenance,
    PulledFile,
    RunManifest,
    RunStatus,
    SdScriptsRecord,
    StopReason,
    UploadRecord,
)
from kohyawrap.launcher.reconnect import Reconnector
from kohyawrap.launcher.report import SilentReporter
from kohyawrap.launcher.request import TrainRequest, build_run_plan
from kohyawrap.launcher.runplan import MoneyOptions, RunPlan
from kohyawrap.launcher.runstore import RunDir, RunStore
from kohyawrap.models import Failure, RunSpec
from kohyawrap.presets import load_catalog
from tests.fixtures.cli import run_cli
from tests.fixtures.clock import FakeClock
from tests.test_forecast import make_dataset

NOW = datetime(2026, 11, 28, 10, 15, 0, tzinfo=timezone.utc)
LEGACY = Path(__file__).parent / "data" / "runs-v0.1.0"
CATALOG = load_catalog()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("record") / "data", reg=True)


def plan_for(data: Path, gpu: str = "rtx4090", model: str = "sdxl", **money: float) -> RunPlan:
    spec = RunSpec(
        gpu=gpu,
        model=model,
        base_model="acme/some-model/model v2.safetensors",
        output_name="柴犬 o'neil (v2)",
    )
    request = TrainRequest(
        spec=spec, dataset=data, money=MoneyOptions(**money), force=True, pull_state=True
    )
    return build_run_plan(request, target="root@1.2.3.4", home="/root", now=NOW)


@pytest.mark.parametrize("model", sorted(CATALOG.models))
@pytest.mark.parametrize("gpu", sorted(CATALOG.gpus))
def test_run_plan_round_trips_through_json(data: Path, gpu: str, model: str) -> None:
    plan = plan_for(data, gpu, model, max_dollars=3.5)
    again = RunPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan


def full_manifest(plan: RunPlan) -> RunManifest:
    return RunManifest(
        run_id=plan.run_id,
        plan=plan,
        host=HostRecord("root@1.2.3.4", "root@1.2.3.4:22", {"port": 22}, {"gpus": []}),
        status=RunStatus.STOPPED,
        sd_scripts=SdScriptsRecord("repo", "main", "c" * 40, "/root/kohyawrap/sd-scripts/c", False),
        environment=EnvironmentRecord("/v/bin/python", "f" * 16, "2.6.0", True, "uv", ("a==1",)),
        model_how="downloaded",
        files_how={f.key: "cached" for f in plan.model_files},
        upload=UploadRecord(3, 100, 4, 120),
        pid=123,
        started_at=1.5,
        launched_at=2.5,
        finished_at=3.5,
        exit_code=143,
        follow=FollowState(10, ("output/a.safetensors",), {"output/b": 5}, {"x": "why"}, 3, 9, 0.1),
        pulled={"output/a.safetensors": PulledFile("d" * 64, 10, "checkpoints/a.safetensors", "")},
        timings={"setup": 1.0},
        cost=Cost(0.5, 0.25, 0.7),
        failure=Failure("oom", "CUDA out of memory", "lower the batch"),
        error="note",
        stop_reason=StopReason.BUDGET,
        provenance=(Provenance("/data", "e" * 40, True),),
    )


def test_manifest_round_trips_through_json(data: Path) -> None:
    for model in ("sdxl", "flux-dev"):
        manifest = full_manifest(plan_for(data, model=model))
        assert RunManifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest


def test_a_recorded_flux_run_is_requested_again_with_the_same_files(
    data: Path, tmp_path: Path
) -> None:
    from kohyawrap.launcher.reproduce import request_from_manifest

    clip = tmp_path / "我的 clip_l.safetensors"
    clip.write_bytes(b"clip")
    spec = RunSpec(
        gpu="rtx4090",
        model="flux-dev",
        base_model="",  # the preset's
        companions=(("clip_l", str(clip)), ("t5xxl", "https://example.com/t5 fp8.safetensors")),
        output_name="flux",
    )
    request = TrainRequest(spec=spec, dataset=data, force=True)
    plan = build_run_plan(request, target="root@1.2.3.4", home="/root", now=NOW)
    again = build_run_plan(
        request_from_manifest(full_manifest(plan)), target="root@1.2.3.4", home="/root", now=NOW
    )
    assert again.model_files == plan.model_files
    assert [f.kind for f in plan.model_files] == ["hf", "upload", "url", "hf"]


def legacy_run(tmp_path: Path) -> RunDir:
    runs = tmp_path / "runs"
    shutil.copytree(LEGACY, runs)
    return RunDir(next(p for p in runs.iterdir()))


def test_a_manifest_of_the_first_release_still_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = legacy_run(tmp_path)
    m = run.load()
    assert m.status is RunStatus.FINISHED and m.exit_code == 0
    assert sorted(p.path for p in m.pulled.values()) == [
        "checkpoints/demo-000001.safetensors",
        "checkpoints/demo.safetensors",
        next(p.path for p in m.pulled.values() if p.path.startswith("tensorboard/")),
    ]
    assert m.plan.rendered.files == {p.name: p.read_text() for p in (run.path / "config").iterdir()}
    assert m.plan.money.price_per_hour == m.plan.estimate.price_per_hour
    assert m.environment is not None and m.environment.packages == ()
    assert m.host.target == "local"
    # One base model, uploaded, became the run's only model file.
    (base,) = m.plan.model_files
    assert (base.key, base.kind, base.in_place) == (
        "pretrained_model_name_or_path",
        "upload",
        False,
    )
    assert m.plan.base_file.remote_path.endswith("-base-model.safetensors")
    assert m.files_how == {"pretrained_model_name_or_path": "uploaded"}
    code, out = run_cli(["runs", "list", "--runs-dir", str(run.path.parent), "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["status"] == "finished"


def test_reproduce_of_a_first_release_run_names_the_version_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = legacy_run(tmp_path)
    code, out = run_cli(["reproduce", str(run.path), "-o", str(tmp_path / "again")], capsys)
    assert code == 2, out
    assert "rendered by kohyawrap 0.1.0" in out and "pip install kohyawrap==0.1.0" in out
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[1, 2, 3]", "a JSON list, not an object"),
        ("{}", "missing"),
        (
            '{"schema": 2, "run_id": 5, "status": "finished", "plan": 7}',
            "not a kohyawrap run record",
        ),
        ("{not json", "not valid JSON"),
        ('{"schema": 99}', "schema 99"),
    ],
)
def test_a_corrupt_record_is_one_clear_line_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    good = legacy_run(tmp_path)
    broken = good.path.parent / "20261130-000000-broken-abcdef"
    broken.mkdir()
    (broken / "manifest.json").write_text(text)
    with pytest.raises(UsageError, match=words.split(",")[0]):
        RunDir(broken).load()
    code, out = run_cli(["runs", "list", "--runs-dir", str(good.path.parent), "--json"], capsys)
    assert code == 0
    rows = {r["run_id"]: r for r in json.loads(out)}
    assert rows[good.run_id]["status"] == "finished", "one broken record hides no other run"
    assert rows[broken.name]["status"] == "broken"
    for verb in (["attach"], ["pull"], ["stop"], ["reproduce"], ["runs", "show"]):
        code, out = run_cli([*verb, broken.name, "--runs-dir", str(good.path.parent)], capsys)
        assert code == 2, (verb, out)
        assert "Traceback" not in out and "manifest" in out


def test_a_run_name_used_twice_picks_the_newest_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = legacy_run(tmp_path)
    newer = run.path.parent / run.run_id.replace("201441", "235959")
    shutil.copytree(run.path, newer)
    store = RunStore(run.path.parent)
    found = store.find("demo")
    assert found.run.path == newer and [r.path for r in found.others] == [run.path]
    code, out = run_cli(["runs", "show", "demo", "--runs-dir", str(run.path.parent)], capsys)
    assert code == 0
    assert "using the newest" in out and newer.name in out
    assert "finished" in out and "demo.safetensors" in out and "pip" not in out


def test_runs_list_has_a_header_dates_and_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    run = legacy_run(tmp_path)
    stopped = RunDir(run.path.parent / "20261201-101010-budget-123abc")
    stopped.path.mkdir()
    plan = replace(plan_for(data), run_id=stopped.run_id)
    stopped.save(replace(full_manifest(plan), run_id=stopped.run_id, failure=None))
    code, out = run_cli(["runs", "list", "--runs-dir", str(run.path.parent)], capsys)
    assert code == 0
    assert "date" in out and "status" in out and "cost" in out
    assert "2026-11-28 10:15" in out
    assert "stopped (budget)" in out


# ---------------------------------------------------------------------------------------------
# Limits on the injected clock


def test_dollars_show_enough_digits() -> None:
    assert dollars(0) == "$0.00"
    assert dollars(0.0012) == "$0.0012"
    assert dollars(0.26) == "$0.26"
    assert dollars(0.05) == "$0.050"
    assert dollars(12.345) == "$12.35"
    budget = Budget(price_per_hour=0.36, started_at=0, launched_at=0, max_dollars=0.001)
    assert budget.over(60.0) is None, "the laptop is a minute behind the host's own watchdog"
    reason, message = budget.over(71.0) or (None, "")
    assert reason is StopReason.BUDGET
    assert "$0.0071" in message and "$0.0010" in message


def test_max_hours_counts_from_the_launch_and_lets_the_host_stop_first() -> None:
    budget = Budget(price_per_hour=1, started_at=0, launched_at=100, max_hours=1 / 60)
    assert budget.over(100 + 60 + 59) is None, "within the grace the host's own timer acts"
    reason, message = budget.over(100 + 60 + 61) or (None, "")
    assert reason is StopReason.DEADLINE and "did not stop it" in message
    assert budget.spent(3700) == pytest.approx(3700 / 3600), "money counts from the connect"


WRAPPER = """#!/usr/bin/env bash
cd "$(dirname "$0")"
echo $$ >run.pid
date +%s >started_at
trap 'date +%s >ended_at; echo 143 >exit_code; exit 0' TERM
while :; do sleep 0.05; done
"""


def test_the_follower_polls_and_stops_for_the_budget_on_a_fake_clock(tmp_path: Path) -> None:
    run_dir = tmp_path / "host run"
    run_dir.mkdir()
    (run_dir / "run.sh").write_text(WRAPPER)
    sample = Path(__file__).parent / "data" / "sdscripts" / "sample_run_stdout.log"
    (run_dir / "run.log").write_bytes(sample.read_bytes())
    clock = FakeClock()
    host = LocalHost()
    job.launch(host, str(run_dir), clock)
    clock.sleeps.clear()
    local = RunDir(tmp_path / "laptop")
    local.path.mkdir()
    price, poll, limit = 36.0, 2.0, 0.05  # $36/h: one poll costs $0.02
    budget = Budget(price, clock.now(), clock.now(), max_dollars=limit)
    reporter = SilentReporter()
    follower = Follower(
        host=host,
        run=local,
        run_dir=str(run_dir),
        reporter=reporter,
        clock=clock,
        settings={},
        budget=budget,
        puller=Puller(host, local, str(run_dir), reporter, {}, {}),
        reconnector=Reconnector(host, reporter, clock, 3),
        state=FollowState(),
        poll_seconds=poll,
    )
    saves: list[int] = []
    started = time.monotonic()
    ended = follower.run_until_exit(lambda: saves.append(follower.log_offset))
    assert time.monotonic() - started < 20, "fake time: no real sleeping"
    assert ended.code == 143 and ended.stop_requested
    assert follower.stop_reason is StopReason.BUDGET
    assert set(clock.sleeps) == {poll}
    assert follower.stop_asked_at is not None
    # The laptop is the backup: it acts a grace period after the host would have, then at once.
    behind = budget.spent(follower.stop_asked_at - budget.grace_seconds)
    assert limit < behind <= limit + price * poll / 3600, "at most one poll after the grace"
    assert follower.state().log_offset == sample.stat().st_size
    assert local.log.read_bytes() == sample.read_bytes()
    assert saves, "the state is saved after every poll"


def test_a_launch_is_not_repeated_after_a_lost_answer(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.sh").write_text(WRAPPER)
    host, clock = LocalHost(), FakeClock()
    first = job.launch(host, str(run_dir), clock)
    again = job.launch(host, str(run_dir), clock)
    assert first == again
    job.request_stop(host, str(run_dir))
    deadline = time.monotonic() + 10
    while job.exit_status(host, str(run_dir)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.exit_status(host, str(run_dir)) is not None


def test_launch_and_stop_survive_a_process_group_of_their_own(tmp_path: Path) -> None:
    # The wrapper outlives the process that started it (setsid): a dropped laptop leaves it running.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.sh").write_text(WRAPPER)
    starter = (
        "from kohyawrap.hosts.local import LocalHost; from kohyawrap.launcher import job; "
        "from kohyawrap.clock import SystemClock, SystemClock; import sys; "
        "print(job.launch(LocalHost(), sys.argv[1], SystemClock()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", starter, str(run_dir)], capture_output=True, text=True, check=True
    )
    pid = int(out.stdout.strip())
    assert job.alive(LocalHost(), str(run_dir))
    # A real process ends in real time: the real clock, so a loaded machine only makes it slower.
    ended = job.stop(LocalHost(), str(run_dir), SystemClock(), wait_seconds=30)
    assert ended is not None and ended.code == 143 and pid > 0


def test_steps_sharing_a_dropped_host_each_say_they_start_again() -> None:
    """PREPARE runs three steps on one host: one drop fails them all, one reconnects, and every
    step says what it does again (whichever got there first)."""
    import threading

    from kohyawrap.errors import ConnectionLost

    class Heard(SilentReporter):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, message: str) -> None:
            self.lines.append(message)

    class CountingHost(LocalHost):
        reopened = 0

        def reconnect(self) -> None:
            CountingHost.reopened += 1

    heard, clock = Heard(), FakeClock()
    reconnector = Reconnector(CountingHost(), heard, clock, 3)
    all_failed = threading.Barrier(3)

    def step(name: str) -> str:
        tries = 0

        def action() -> str:
            nonlocal tries
            tries += 1
            if tries == 1:
                all_failed.wait(10)
                raise ConnectionLost("the connection dropped")
            return name

        return reconnector.call(action, f"{name} again")

    results: dict[str, str] = {}
    threads = [
        threading.Thread(target=lambda n=n: results.__setitem__(n, step(n)))  # type: ignore[misc]
        for n in ("setting up", "fetching the model files", "uploading the rest")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == {n: n for n in results} and len(results) == 3
    assert CountingHost.reopened == 1 and reconnector.recoveries == 1
    again = sorted(line for line in heard.lines if line.startswith("reconnected; "))
    assert again == [
        "reconnected; fetching the model files again",
        "reconnected; setting up again",
        "reconnected; uploading the rest again",
    ]
