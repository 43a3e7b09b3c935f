"""The host-side queue runner (kohyawrap/hostside/queuerunner.py) on real files and real processes:
each job a tiny ``run.sh`` that records the GPU it was given and ends when the test lets it; a fake
clock for the idle rule. The runner is what keeps a queue going when no laptop is there."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kohyawrap.hostside import queuerunner as hq

RUN_SH = """#!/usr/bin/env bash
echo $$ > run.pid
date +%s > started_at
printf '%s\\n' "${CUDA_VISIBLE_DEVICES:-none}" > gpu_seen
while [ ! -f release ]; do sleep 0.05; done
date +%s > ended_at
cat code > exit_code 2>/dev/null || echo 0 > exit_code
"""


@dataclass
class FakeClock:
    at: float

    def now(self) -> float:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.at += seconds


def make_queue(root: Path, names: list[str], *, slots: list[str], on_finish: str = "none",
               idle_minutes: float = 1.0) -> Path:  # fmt: skip
    folder = root / "queue"
    (folder / "jobs").mkdir(parents=True)
    config = {"queue_id": "q1", "slots": slots, "on_finish": on_finish,
              "idle_minutes": idle_minutes, "provider": "none", "poll_seconds": 0.1}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    for i, name in enumerate(names, start=1):
        run = root / "runs" / name
        (run / "output").mkdir(parents=True)
        (run / "run.sh").write_text(RUN_SH)
        job = {"name": name, "run_dir": str(run)}
        (folder / "jobs" / f"{i:04d}.json").write_text(json.dumps(job, ensure_ascii=False))
    return folder


def run_dir(folder: Path, name: str) -> Path:
    return folder.parent / "runs" / name


def wait_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def release(folder: Path, name: str, code: int = 0) -> None:
    run = run_dir(folder, name)
    (run / "code").write_text(f"{code}\n")
    (run / "release").touch()
    wait_file(run / "exit_code")


def runner(folder: Path, clock: FakeClock) -> hq.Runner:
    return hq.Runner(folder, hq.QueueConfig.load(folder / "config.json"), clock)


def states(folder: Path) -> dict[str, tuple[str, str]]:
    data = json.loads((folder / "state.json").read_text())
    return {j["name"]: (j["state"], j.get("gpu", "")) for j in data["jobs"].values()}


def test_one_job_per_gpu_in_order_and_a_failure_frees_its_slot(tmp_path: Path) -> None:
    folder = make_queue(tmp_path, ["一", "二", "三"], slots=["GPU-aaa", "GPU-bbb"])
    r = runner(folder, FakeClock(time.time()))
    try:
        assert r.look() is False
        assert wait_file(run_dir(folder, "一") / "gpu_seen") == "GPU-aaa"
        assert wait_file(run_dir(folder, "二") / "gpu_seen") == "GPU-bbb"
        assert states(folder) == {"一": ("running", "GPU-aaa"), "二": ("running", "GPU-bbb"),
                                  "三": ("waiting", "")}  # fmt: skip
        release(folder, "二", code=1)  # a failed job ends like any other
        assert r.look() is False
        assert wait_file(run_dir(folder, "三") / "gpu_seen") == "GPU-bbb", "the slot it freed"
        release(folder, "一")
        release(folder, "三")
        assert r.look() is True, "drained, and --on-finish none: nothing left to do"
        data = json.loads((folder / "state.json").read_text())
        assert data["drained"] is True
        assert {j["name"]: j["exit_code"] for j in data["jobs"].values()} == {
            "一": 0, "二": 1, "三": 0
        }  # fmt: skip
    finally:
        for name in ("一", "二", "三"):
            (run_dir(folder, name) / "release").touch()


def test_a_whole_machine_slot_leaves_cuda_alone_and_a_job_starts_once(tmp_path: Path) -> None:
    folder = make_queue(tmp_path, ["a", "b"], slots=[""])
    r = runner(folder, FakeClock(time.time()))
    try:
        r.look()
        assert wait_file(run_dir(folder, "a") / "gpu_seen") == "none"
        assert not (run_dir(folder, "b") / ".launched").exists(), "one slot: one job at a time"
        # A second runner (a restart) finds a running; it does not start it again.
        again = runner(folder, FakeClock(time.time()))
        assert again.holding == {"0001": 0}
        assert hq.start(hq.read_jobs(folder)[0], "") is None
        release(folder, "a")
        again.look()
        assert wait_file(run_dir(folder, "b") / "gpu_seen") == "none"
        release(folder, "b")
        assert again.look() is True
    finally:
        for name in ("a", "b"):
            (run_dir(folder, name) / "release").touch()


def _checkpoint(folder: Path, name: str, *, receipt: bool) -> None:
    run = run_dir(folder, name)
    data = f"lora {name}".encode()
    (run / "output" / f"{name}.safetensors").write_bytes(data)
    if receipt:
        (run / "receipts").mkdir(exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()
        (run / "receipts" / f"{name}.safetensors.sha256").write_text(f"{digest}  x\n")


def _drained(folder: Path, clock: FakeClock, names: list[str]) -> hq.Runner:
    r = runner(folder, clock)
    r.look()
    for name in names:
        wait_file(run_dir(folder, name) / "gpu_seen")
        release(folder, name)
    return r


def test_without_a_laptop_the_finish_waits_the_idle_time_then_runs_once(tmp_path: Path) -> None:
    folder = make_queue(tmp_path, ["a", "b"], slots=["0", "1"], on_finish="printf done > finished",
                        idle_minutes=1.0)  # fmt: skip
    for name in ("a", "b"):
        _checkpoint(folder, name, receipt=True)
    clock = FakeClock(time.time())
    r = _drained(folder, clock, ["a", "b"])
    assert r.look() is False, "drained, but a laptop may still come within the idle time"
    clock.at += 50
    (folder / "lease").touch()
    os.utime(folder / "lease", (clock.at, clock.at))  # a laptop was here 50 s later
    clock.at += 30
    assert r.look() is False, "80 s after the end, but only 30 s after the laptop"
    assert not (folder / "finished").exists()
    clock.at += 31
    assert r.look() is True
    finish = json.loads((folder / "watchdog" / "finish.json").read_text())
    assert (finish["by"], finish["action"], finish["result"]) == ("queue runner", "command", "ok")
    assert finish["safe"] is True and finish["jobs"] == 2
    assert "2 verified on a laptop" in finish["safe_by"]
    assert (folder / "finished").read_text() == "done"
    assert hq.decide(folder, r.cfg, "laptop", "again", clock)["by"] == "queue runner", "once"


def test_the_safety_rule_covers_every_job(tmp_path: Path) -> None:
    folder = make_queue(tmp_path, ["a", "狗"], slots=["0", "1"], on_finish="printf done > finished",
                        idle_minutes=0.0)  # fmt: skip
    _checkpoint(folder, "a", receipt=True)
    _checkpoint(folder, "狗", receipt=False)  # never reached a laptop
    clock = FakeClock(time.time())
    r = _drained(folder, clock, ["a", "狗"])
    clock.at += 1
    assert r.look() is True
    finish = json.loads((folder / "watchdog" / "finish.json").read_text())
    assert finish["action"] == "" and finish["safe"] is False
    assert finish["missing"] == ["狗: 狗.safetensors (not verified on a laptop or the Hub)"]
    assert "was not run" in finish["message"]
    assert not (folder / "finished").exists()


def test_the_laptop_decides_and_acts_through_the_program(tmp_path: Path) -> None:
    folder = make_queue(tmp_path, ["a"], slots=[""], on_finish="printf done > finished",
                        idle_minutes=30.0)  # fmt: skip
    _checkpoint(folder, "a", receipt=True)
    _drained(folder, FakeClock(time.time()), ["a"])
    (folder / "queuerunner.py").write_bytes(Path(hq.__file__).read_bytes())
    (folder / "watchdog.py").write_bytes(Path(hq.wd.__file__).read_bytes())

    def program(*args: str) -> dict[str, object]:
        # As the laptop runs it: the file itself, beside the uploaded watchdog.py.
        done = subprocess.run([sys.executable, "queuerunner.py", "finish", str(folder), *args],
                              cwd=folder, capture_output=True, text=True, check=True)  # fmt: skip
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("KW finish="))
        return json.loads(line.removeprefix("KW finish="))  # type: ignore[no-any-return]

    decided = program("--decide", "--by", "laptop")
    assert (decided["by"], decided["action"], decided["result"]) == ("laptop", "command", "pending")
    assert not (folder / "finished").exists()
    acted = program("--act")
    assert acted["result"] == "ok" and (folder / "finished").read_text() == "done"
    assert program("--act")["result"] == "ok", "carried out once"


def test_one_runner_per_queue(tmp_path: Path) -> None:
    folder = make_queue(tmp_path, ["a"], slots=[""])
    with hq.only_runner(folder) as mine:
        assert mine
        assert hq.run(folder, FakeClock(time.time())) == 0  # another runner holds it: returns
    assert not (run_dir(folder, "a") / ".launched").exists()


@pytest.mark.parametrize("text", ["{", "[]", '{"run_dir": 3}', '{"name": "x"}'])
def test_a_job_file_that_is_not_one_is_skipped(tmp_path: Path, text: str) -> None:
    folder = make_queue(tmp_path, [], slots=[""])
    (folder / "jobs" / "0001.json").write_text(text)
    assert hq.read_jobs(folder) == []


def test_a_waiting_job_taken_back_never_starts_and_a_started_one_stays(tmp_path: Path) -> None:
    # What a free host of a pool does to a busy one (kohyawrap.launcher.queuehost.withdraw_job),
    # through a real shell: the runner's own claim decides, so a job runs on one host only.
    from kohyawrap.hosts.local import LocalHost
    from kohyawrap.launcher.queuehost import withdraw_job

    folder = make_queue(tmp_path, ["一", "二", "三"], slots=[""])
    r = runner(folder, FakeClock(time.time()))
    host = LocalHost()
    try:
        r.look()
        assert withdraw_job(host, str(run_dir(folder, "一"))) is False, "it had started"
        assert withdraw_job(host, str(run_dir(folder, "二"))) is True
        assert withdraw_job(host, str(run_dir(folder, "二"))) is False, "taken back once"
        release(folder, "一")
        assert r.look() is False
        assert wait_file(run_dir(folder, "三") / "gpu_seen") == "none", "the slot goes on to 三"
        assert not (run_dir(folder, "二") / "gpu_seen").exists(), "二 never ran here"
        release(folder, "三")
        assert r.look() is True
        recorded = json.loads((folder / "state.json").read_text())["jobs"]
        jobs = {j["name"]: j for j in recorded.values()}
        assert (jobs["二"]["state"], jobs["二"]["exit_code"], jobs["二"].get("withdrawn")) == (
            "ended", None, True
        )  # fmt: skip
        assert [jobs[n]["exit_code"] for n in ("一", "三")] == [0, 0]
    finally:
        for name in ("一", "二", "三"):
            (run_dir(folder, name) / "release").touch()


def test_no_host_program_is_named_like_a_standard_module() -> None:
    # The host programs run as scripts side by side (the runner beside watchdog.py): one named
    # like a standard module (the runner was queue.py) is what `import queue` finds there, inside
    # huggingface_hub's upload too.
    names = {p.stem for p in Path(hq.__file__).parent.glob("*.py")} - {"__init__"}
    assert "watchdog" in names and not names & sys.stdlib_module_names
