"""Slow-run verdicts (kohyawrap/slowrun.py) and the host-side GPU sampler that feeds them
(templates/remote/gpu_sample.sh.j2, run with a fake nvidia-smi on PATH)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from kohyawrap.launcher.scripts import render_script
from kohyawrap.slowrun import (
    GpuLog,
    Speed,
    enough_evidence,
    measured,
    parse_gpu_log,
    slow_run_findings,
)
from tests.fixtures.gpu import FakeGpu

SETTINGS = {"sdpa": True, "cache_latents": True, "max_data_loader_n_workers": 2}


def _log(util: float, *apps: tuple[int, int, int], times: int = 4) -> GpuLog:
    lines = []
    for t in range(times):
        lines.append(f"{100 + t} gpu 0 {util} 20000 24564")
        lines += [f"{100 + t} app {pid} {mem} {ours}" for pid, mem, ours in apps]
    return parse_gpu_log("\n".join(lines))


def _codes(
    speed: Speed, gpu: GpuLog, settings: dict[str, object] = SETTINGS, **kw: object
) -> list[str]:
    return [f.code for f in slow_run_findings(speed, gpu, settings, **kw)]  # type: ignore[arg-type]


SLOW = Speed(measured=1.2, estimated=0.4, steps=10)
FINE = Speed(measured=0.45, estimated=0.4, steps=10)


def test_a_busy_gpu_at_the_planned_speed_is_fine() -> None:
    assert _codes(FINE, _log(97, (10, 19000, 1))) == []


def test_slow_with_another_process_and_an_idle_gpu() -> None:
    gpu = _log(12, (10, 9000, 1), (77, 14000, 0))
    found = slow_run_findings(SLOW, gpu, SETTINGS)
    assert [f.code for f in found] == ["slow-gpu-shared", "slow-dataloader"]
    assert found[0].message.startswith("slow run (1.2 s/step, 3.0x the preset's 0.4; GPU busy 12 %")
    assert "pid 77, 14000 MiB" in found[0].message
    assert "max_data_loader_n_workers=4 (now 2)" in (found[1].hint or "")


def test_training_on_the_cpu() -> None:
    assert _codes(SLOW, _log(0), device="cpu") == ["slow-cpu"]
    # nvidia-smi lists processes, none of them the trainer, and the GPU does nothing.
    assert _codes(SLOW, _log(0, (77, 300, 0))) == ["slow-cpu"]
    assert _codes(SLOW, _log(0), device="cpu", planned_cpu=True) == []  # a smoke run on a CPU


def test_no_efficient_attention() -> None:
    settings = {**SETTINGS, "sdpa": False}
    assert _codes(SLOW, _log(95, (10, 19000, 1)), settings) == ["slow-attention"]
    assert _codes(SLOW, _log(95, (10, 19000, 1)), {**settings, "xformers": True}) == [
        "slow-unexplained"
    ]


def test_other_processes_are_judged_only_when_pids_are_visible() -> None:
    # In a container nvidia-smi may list host pids that are never ours: no claim then.
    assert "slow-gpu-shared" not in _codes(SLOW, _log(90, (77, 14000, 0), (78, 9000, 0)))


def test_evidence_and_the_record() -> None:
    gpu = _log(40, times=2)
    assert not enough_evidence(SLOW, gpu, sampled=True)
    assert enough_evidence(SLOW, gpu, sampled=False)
    assert not enough_evidence(Speed(1.2, 0.4, 2), _log(40), sampled=True)
    assert measured(_log(40, (10, 1, 1))) == {
        "gpu_utilization_pct": 40.0,
        "gpu_memory_peak_mib": 20000.0,
        "gpu_samples": 4.0,
    }
    assert measured(GpuLog()) == {}


def test_torn_and_unknown_lines_are_skipped() -> None:
    gpu = parse_gpu_log(
        "100 gpu 0 [N/A] 1 2\n100 gpu 0 50 1 2\n100 app 5 7\n100 app 5 7 1\nrubbish"
    )
    assert [s.utilization for s in gpu.samples] == [50.0]
    assert [(a.pid, a.ours) for a in gpu.apps] == [(5, True)]


def test_the_sampler_writes_what_nvidia_smi_says(tmp_path: Path, fake_gpu: FakeGpu) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    run_dir = tmp_path / "run dir"
    run_dir.mkdir()
    (run_dir / "gpu_sample.sh").write_text(render_script("gpu_sample"))
    trainer = subprocess.Popen(["sleep", "60"], cwd=run_dir, start_new_session=True)
    (run_dir / "train.pid").write_text(str(trainer.pid))
    fake_gpu.set(utilization=33, apps=[[stranger.pid, 5000]])
    env = {**os.environ, "PATH": f"{fake_gpu.bin_dir}{os.pathsep}{os.environ['PATH']}",
           "KOHYAWRAP_GPU_SAMPLE_SECONDS": "0.2"}  # fmt: skip
    sampler = subprocess.Popen(["bash", "gpu_sample.sh", str(trainer.pid)], cwd=run_dir, env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            log = run_dir / "gpu.log"
            if log.exists() and len(parse_gpu_log(log.read_text()).samples) >= 2:
                break
            time.sleep(0.1)
        trainer.kill()
        trainer.wait()
        assert sampler.wait(timeout=10) == 0, "the sampler ends with the trainer"
    finally:
        stranger.kill()
        stranger.wait()
    gpu = parse_gpu_log((run_dir / "gpu.log").read_text())
    assert gpu.samples and all(s.utilization == 33 for s in gpu.samples)
    assert {(a.pid, a.ours) for a in gpu.apps} == {(trainer.pid, True), (stranger.pid, False)}


def test_the_sampler_waits_for_the_trainers_process_group(
    tmp_path: Path, fake_gpu: FakeGpu
) -> None:
    # run.sh starts the sampler right after forking `setsid python ...`: the trainer's process
    # group may not exist yet. Here it appears a second later, as on a host slow to exec setsid.
    run_dir = tmp_path / "run dir"
    run_dir.mkdir()
    (run_dir / "gpu_sample.sh").write_text(render_script("gpu_sample"))
    trainer = subprocess.Popen(["bash", "-c", "sleep 1; exec setsid sleep 60"], cwd=run_dir)
    fake_gpu.set(utilization=12)
    env = {**os.environ, "PATH": f"{fake_gpu.bin_dir}{os.pathsep}{os.environ['PATH']}",
           "KOHYAWRAP_GPU_SAMPLE_SECONDS": "0.2"}  # fmt: skip
    sampler = subprocess.Popen(["bash", "gpu_sample.sh", str(trainer.pid)], cwd=run_dir, env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sampler.poll() is None:
            log = run_dir / "gpu.log"
            if log.exists() and parse_gpu_log(log.read_text()).samples:
                break
            time.sleep(0.1)
    finally:
        trainer.kill()
        trainer.wait()
    assert sampler.wait(timeout=10) == 0, "the sampler ends with the trainer"
    gpu = parse_gpu_log((run_dir / "gpu.log").read_text())
    assert gpu.samples and all(s.utilization == 12 for s in gpu.samples)


def test_the_sampler_of_a_trainer_that_never_started_ends(
    tmp_path: Path, fake_gpu: FakeGpu
) -> None:
    run_dir = tmp_path / "run dir"
    run_dir.mkdir()
    (run_dir / "gpu_sample.sh").write_text(render_script("gpu_sample"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    env = {**os.environ, "PATH": f"{fake_gpu.bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "gpu_sample.sh", str(gone.pid)], cwd=run_dir, env=env,
                          timeout=10, check=False)  # fmt: skip
    assert done.returncode == 0
    assert not (run_dir / "gpu.log").exists() or not (run_dir / "gpu.log").read_text()
