"""Runs that go on after something went wrong, end to end through the CLI with the fake
sd-scripts: a host killed mid-run and the run resumed on a second sshd, a run crashed and resumed
twice (steps and epochs keep counting), a finished run extended, an out-of-memory run walked
down the OOM ladder, a NaN loss with its likely cause, a slow run flagged from nvidia-smi, and an
install that fails with its diagnosis."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kohyawrap.launcher.legs import leg_records
from kohyawrap.launcher.manifest import RunStatus, StopReason
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.logparse import parse
from kohyawrap.models import EpochStart, Progress
from kohyawrap.safetensors_header import read_header
from tests.fixtures.fakesds import FakeBehaviour, FakeSdScripts
from tests.fixtures.gpu import FakeGpu
from tests.fixtures.runs import (
    HOSTILE,
    Env,
    _wait_for,
    kohyawrap,
    manifest_of,
    only_run,
    ssh_args,
    train_args,
)
from tests.fixtures.sshd import Sshd, TcpRelay, running_sshd, sshd_available

pytestmark = pytest.mark.slow
STEPS_PER_EPOCH = 40  # the world's dataset: 4 images x 10 repeats, batch 1


def _start(env: Env, args: list[str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kohyawrap", *args, *extra],
        cwd=env.root,
        env=env.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_job(run_dir: Path) -> None:
    """Kill the detached job's process groups, the way a crash or a preemption would."""
    for name in ("train.pid", "run.pid"):
        pid = int((run_dir / name).read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate(timeout=30)


def _epochs_started(log: bytes) -> list[int]:
    return [e.epoch for e in parse(log) if isinstance(e, EpochStart)]


def _resume(env: Env, run: Path, *extra: str, command: str = "resume") -> list[str]:
    return [command, run.name, "--runs-dir", str(env.runs), "--poll", "0.2", "--force", "--yes",
            *extra]  # fmt: skip


def test_crashed_twice_and_resumed_twice_keeps_counting(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.04))
    proc = _start(world, train_args(world, fake_sdscripts, commit, epochs=4))
    _wait_for(lambda: _state_on_host(world, "", 1), 90, "the first state on the host")
    run = only_run(world)
    _kill(proc)
    _kill_job(Path(manifest_of(run).remote_run_dir))

    second = _start(world, _resume(world, run))
    _wait_for(lambda: _state_on_host(world, "-leg2", 3), 90, "a state of the second leg")
    _kill(second)
    m2 = manifest_of(run)
    assert m2.leg_number == 2 and m2.legs[1].kind == "resume"
    _kill_job(Path(m2.remote_run_dir))
    # sd-scripts wrote the second leg's step count from 0 again: resuming from it alone would
    # start over at an epoch already trained (the miscount kohyawrap corrects).
    leg2_state = Path(m2.remote_run_dir) / "output" / "demo-000003-state" / "train_state.json"
    saved = json.loads(leg2_state.read_text())
    assert saved["current_epoch"] == 3
    assert saved["current_step"] < 3 * STEPS_PER_EPOCH

    third = kohyawrap(world, *_resume(world, run))
    assert third.returncode == 0, third.stderr
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED
    assert [leg.kind for leg in m.legs] == ["train", "resume", "resume"]
    assert [leg.step_offset for leg in m.legs] == [0, m.legs[1].step_offset, 3 * STEPS_PER_EPOCH]
    assert m.legs[1].step_offset in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    assert m.legs[0].status == "lost" and m.legs[1].status == "lost"
    assert m.follow.last_step == 4 * STEPS_PER_EPOCH == m.follow.total_steps
    assert _epochs_started((run / "run.leg3.log").read_bytes()) == [4]
    steps = [e.step for e in parse((run / "run.leg3.log").read_bytes()) if isinstance(e, Progress)]
    assert steps[-1] == STEPS_PER_EPOCH, "sd-scripts itself counts the leg from 0"
    final = run / "checkpoints" / "leg3" / "demo.safetensors"
    assert read_header(final)[1]["ss_epoch"] == "4"
    config = (run / "config" / "leg3" / "training_config.toml").read_text()
    assert 'resume = "resume/demo-000003-state"' in config and "initial_epoch = 4" in config
    assert set(m.legs[2].changed) == {"resume", "initial_epoch"}
    legs = leg_records(m, m.finished_at or 0.0)
    assert [leg.status for leg in legs] == ["lost", "lost", "finished"]
    assert all(leg.dollars is not None and leg.dollars > 0 for leg in legs)
    assert m.cost is not None
    assert m.cost.actual == pytest.approx(sum(leg.dollars or 0 for leg in legs), abs=1e-3)
    assert legs[2].last_step == 4 * STEPS_PER_EPOCH
    again = kohyawrap(world, "reproduce", run.name, "--runs-dir", str(world.runs))
    assert again.returncode == 0, again.stderr  # the first leg's configs, byte for byte


def _state_on_host(env: Env, leg: str, epoch: int) -> bool:
    if not env.runs.exists() or not any(env.runs.iterdir()):
        return False
    try:
        m = RunDir(only_run(env)).load()
    except Exception:
        return False
    folder = Path(m.original_plan.layout.run_dir + leg)
    return (folder / "output" / f"demo-{epoch:06d}-state" / "train_state.json").is_file()


@pytest.fixture
def host_b(tmp_path: Path) -> Iterator[Sshd]:
    """A second sshd: the new host a run moves to (its own keys, port and work folder)."""
    if not sshd_available():
        pytest.skip("OpenSSH server not installed")
    with running_sshd(tmp_path / "host_b") as server:
        yield server


def _pulled_state(env: Env, folder: str) -> bool:
    if not env.runs.exists() or not any(env.runs.iterdir()):
        return False
    try:
        m = RunDir(only_run(env)).load()
    except Exception:
        return False
    return f"output/{folder}/train_state.json" in m.pulled


def test_host_killed_mid_run_resumes_on_a_second_host(
    world: Env, fake_sdscripts: FakeSdScripts, tmp_path: Path, host_b: Sshd
) -> None:
    # 4 s per epoch: the host dies early in epoch 2, right after the laptop has its state.
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.1))
    work_b = world.root / "host B work"
    with running_sshd(tmp_path / "host_a") as host_a, TcpRelay(host_a.port) as relay:
        args = train_args(world, fake_sdscripts, commit, target=host_a.target, epochs=4)
        proc = _start(
            world, args, *ssh_args(host_a, relay.port), "--pull-state", "--price", "3.6",
            "--reconnect", "1",
        )  # fmt: skip
        _wait_for(lambda: _pulled_state(world, "demo-000001-state"), 90, "the first state pulled")
        run = only_run(world)
        # The host dies: its address stops answering, its sshd and the training are gone.
        relay.close()
        _kill_job(Path(manifest_of(run).remote_run_dir))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    lost = manifest_of(run)
    assert lost.status is RunStatus.RUNNING

    result = kohyawrap(
        world, *_resume(world, run, "--host", host_b.target, *ssh_args(host_b),
                        "--work-dir", str(work_b), "--price", "1.8"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "does not answer" in result.stderr
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED
    first, second = leg_records(m, m.finished_at or 0.0)
    assert (first.connect["port"], second.connect["port"]) == (relay.port, host_b.port)
    assert first.status == "lost" and second.status == "finished"
    assert second.resumed_from.startswith("leg 1: demo-0000")
    assert second.remote_run_dir.startswith(str(work_b))
    assert (work_b / "sd-scripts").is_dir(), "the new host was set up from scratch"
    # At most one save interval (one epoch here) was lost with the host.
    assert first.last_step is not None
    assert 0 <= first.last_step - second.step_offset <= STEPS_PER_EPOCH, (first, second)
    assert second.last_step == 4 * STEPS_PER_EPOCH
    assert first.dollars is not None and second.dollars is not None
    assert (first.price_per_hour, second.price_per_hour) == (3.6, 1.8)
    # The state went up from the laptop; the new leg's config differs from the first leg's
    # only in the resume keys and the new host's paths.
    remote_state = Path(second.remote_run_dir) / "resume" / second.resumed_from.split(": ")[1]
    assert json.loads((remote_state / "train_state.json").read_text())["current_step"] > 0
    assert set(second.changed) <= {
        "resume", "initial_epoch", "pretrained_model_name_or_path", "tokenizer_cache_dir"
    }  # fmt: skip
    assert {"resume", "initial_epoch"} <= set(second.changed)
    final = run / "checkpoints" / "leg2" / "demo.safetensors"
    meta = read_header(final)[1]
    assert meta["ss_epoch"] == "4"
    shown = kohyawrap(world, "runs", "show", run.name, "--runs-dir", str(world.runs))
    assert shown.returncode == 0, shown.stderr
    assert "resume from leg 1" in shown.stdout


def test_extend_a_finished_run(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    first = kohyawrap(world, *train_args(world, fake_sdscripts, fake_sdscripts.head, epochs=2))
    assert first.returncode == 0, first.stderr
    run = only_run(world)
    final = run / "checkpoints" / "demo.safetensors"
    before = final.read_bytes()
    refused = kohyawrap(world, *_resume(world, run))
    assert refused.returncode == 2
    assert "kohyawrap extend" in refused.stderr

    result = kohyawrap(world, *_resume(world, run, "--epochs", "2", command="extend"))
    assert result.returncode == 0, result.stderr
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED
    assert [leg.kind for leg in m.legs] == ["train", "extend"]
    leg = m.legs[1]
    assert leg.resumed_from == "leg 1: demo-state"
    assert leg.step_offset == 2 * STEPS_PER_EPOCH
    assert leg.changed == {"initial_epoch": 3, "max_train_epochs": 4, "resume": "resume/demo-state"}
    assert _epochs_started((run / "run.leg2.log").read_bytes()) == [3, 4]
    assert m.follow.last_step == m.follow.total_steps == 4 * STEPS_PER_EPOCH
    names = sorted(p.name for p in (run / "checkpoints" / "leg2").iterdir() if p.is_file())
    assert names == ["demo-000003.safetensors", "demo.safetensors"]
    assert read_header(run / "checkpoints" / "leg2" / "demo.safetensors")[1]["ss_epoch"] == "4"
    assert final.read_bytes() == before, "the first leg's LoRA is kept as it was"
    assert "copied on the host" in result.stderr
    listed = kohyawrap(world, "runs", "list", "--runs-dir", str(world.runs), "--json")
    (row,) = json.loads(listed.stdout)
    assert (row["status"], row["legs"], row["checkpoints"]) == ("finished", 2, 4)


def _without_batch(args: list[str]) -> list[str]:
    i = args.index("train_batch_size=1")
    return args[: i - 1] + args[i + 1 :]


def test_out_of_memory_walks_down_the_ladder(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    # The "GPU" fits a batch of 2 at most: the tier's batch 4 fails, checkpointing alone does
    # not help, half the batch does.
    commit = fake_sdscripts.commit_behaviour(
        FakeBehaviour(fail="oom", fail_at_step=1, oom_max_batch=2)
    )
    args = _without_batch(train_args(world, fake_sdscripts, commit))
    result = kohyawrap(world, *args)
    assert result.returncode == 0, result.stderr
    err = " ".join(result.stderr.split())
    assert "out of memory: gradient checkpointing (--set gradient_checkpointing=true)" in err
    assert "out of memory: half the batch (--set train_batch_size=2" in err
    m = manifest_of(only_run(world))
    assert m.status is RunStatus.FINISHED
    legs = leg_records(m, m.finished_at or 0.0)
    assert [(leg.kind, leg.status) for leg in legs] == [
        ("train", "failed"), ("retry", "failed"), ("retry", "finished")
    ]  # fmt: skip
    assert legs[0].failure.startswith("oom:")
    assert legs[1].changed == {"gradient_checkpointing": True}
    scale = 0.5**0.5
    assert legs[2].changed == {
        "gradient_checkpointing": True,
        "train_batch_size": 2,
        "learning_rate": pytest.approx(float(f"{5e-4 * scale:.3g}")),
        "unet_lr": pytest.approx(float(f"{5e-4 * scale:.3g}")),
        "text_encoder_lr": pytest.approx(float(f"{1e-4 * scale:.3g}")),
    }
    assert "settings that fit this GPU: --set gradient_checkpointing=true" in err
    meta = read_header(only_run(world) / "checkpoints" / "leg3" / "demo.safetensors")[1]
    assert meta["ss_batch_size_per_device"] == "2"
    assert m.original_plan.rendered.settings["train_batch_size"] == 4


def test_nan_loss_stops_with_its_likely_cause(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    commit = fake_sdscripts.commit_behaviour(
        FakeBehaviour(fail="nan", fail_at_step=3, step_seconds=0.05)
    )
    args = [*train_args(world, fake_sdscripts, commit, epochs=3), "--set", "unet_lr=0.01"]
    result = kohyawrap(world, *args)
    assert result.returncode == 4, result.stderr
    err = " ".join(result.stderr.split())
    assert "likely cause: a learning rate too high for AdamW8bit (unet_lr=0.01" in err
    assert "--set unet_lr=0.001" in err
    m = manifest_of(only_run(world))
    assert m.status is RunStatus.FAILED and m.stop_reason is StopReason.NAN
    assert m.failure is not None and m.failure.kind == "nan"
    assert m.follow.last_step is not None and m.follow.last_step < 3 * STEPS_PER_EPOCH


def test_slow_run_is_flagged_from_nvidia_smi(
    world: Env, fake_sdscripts: FakeSdScripts, fake_gpu: FakeGpu
) -> None:
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        fake_gpu.set(utilization=4, memory_used=21000, apps=[[stranger.pid, 18000]])
        small = world.root / "small"
        (small / "1_sks dog").mkdir(parents=True)
        for photo in (world.dataset / HOSTILE).glob("photo *"):
            shutil.copy(photo, small / "1_sks dog" / photo.name)
        commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.6))
        args = train_args(world, fake_sdscripts, commit, epochs=3)
        args[args.index("--dataset") + 1] = str(small)
        path = f"{fake_gpu.bin_dir}{os.pathsep}{os.environ['PATH']}"
        result = kohyawrap(world, *args, extra_env={"PATH": path, **_FAST_SAMPLES})
    finally:
        stranger.kill()
        stranger.wait()
    assert result.returncode == 0, result.stderr
    m = manifest_of(only_run(world))
    codes = {f.code for f in m.follow.findings}
    assert {"slow-gpu-shared", "slow-dataloader"} <= codes, m.follow.findings
    assert "slow-cpu" not in codes and "slow-attention" not in codes
    assert f"another process uses the GPU (pid {stranger.pid}, 18000 MiB)" in " ".join(
        result.stderr.split()
    )
    # The fake sleeps 0.6 s a step; a loaded machine only adds to it.
    assert m.follow.sec_per_step is not None and 0.5 <= m.follow.sec_per_step < 3.0
    assert m.follow.measured["gpu_utilization_pct"] == 4
    assert m.follow.measured["s_per_step_estimated"] == m.plan.estimate.seconds_per_step > 0
    gpu_log = (Path(m.remote_run_dir) / "gpu.log").read_text().splitlines()
    assert any(line.split()[1:3] == ["app", str(stranger.pid)] for line in gpu_log)
    shown = kohyawrap(world, "runs", "show", only_run(world).name, "--runs-dir", str(world.runs))
    assert "preset estimate" in shown.stdout and "GPU busy 4 %" in shown.stdout


_FAST_SAMPLES = {"KOHYAWRAP_GPU_SAMPLE_SECONDS": "0.5"}


def test_failed_install_is_diagnosed(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    args[args.index("--torch-spec") + 1] = "torch==2.6.0 --no-index"
    no_wheels = world.root / "no wheels"
    no_wheels.mkdir()
    # pip as on a bare host: none of this machine's pip configuration (indexes, constraints).
    isolated = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(no_wheels)}
    result = kohyawrap(world, *args, "--installer", "pip", extra_env=isolated)
    assert result.returncode == 3, result.stderr
    err = " ".join(result.stderr.split())
    assert "No matching distribution found for torch==2.6.0" in err  # pip's own words
    assert "no torch wheel for this host" in err
    assert "--python python3.11" in err
    m = manifest_of(only_run(world))
    assert m.status is RunStatus.FAILED and m.error is not None and m.error.startswith("prepare:")
