"""`kohyawrap train` end to end through the CLI: this machine as a LocalHost and through a real
sshd on loopback, with the fake sd-scripts repository (the only stand-in) built by the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.manifest import RunManifest, RunStatus, StopReason
from kohyawrap.safetensors_header import read_header
from kohyawrap.tensorboard import read_scalars
from tests.fixtures.fakesds import FakeBehaviour, FakeSdScripts
from tests.fixtures.hub import FakeHub
from tests.fixtures.runs import (
    HOSTILE,
    Env,
    _started_steps,
    _wait_for,
    kohyawrap,
    manifest_of,
    only_run,
    ssh_args,
    train_args,
)
from tests.fixtures.sshd import Sshd, TcpRelay

# Whole training flows (a minute or two together): out of the fast tier, `scripts/test -m "not slow"`.
pytestmark = pytest.mark.slow


def assert_finished_run(run: Path, name: str = "demo") -> RunManifest:
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED, m.failure
    assert m.exit_code == 0
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [f"{name}-000001.safetensors", f"{name}.safetensors"]
    for rel, info in m.pulled.items():
        local = run / info.path
        assert file_sha256(local) == info.sha256, rel
    assert set(m.follow.announced) == {f"output/{n}" for n in names}
    assert not m.missing()
    _, meta = read_header(run / "checkpoints" / f"{name}.safetensors")
    assert meta["ss_output_name"] == name
    assert meta["ss_network_module"] == "networks.lora"
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    assert "loss/current" in read_scalars(events[0])
    assert (run / "run.log").read_bytes().count(b"saving checkpoint:") == 2
    for key in ("connect", "setup", "model", "upload", "train", "pull"):
        assert key in m.timings
    assert m.sd_scripts is not None and m.sd_scripts.commit == m.plan.setup.ref
    assert launch_checkout(run / "config" / "launch.sh") == m.sd_scripts.path
    assert not any(p.name == "pwned" for p in run.parents[2].rglob("pwned"))
    return m


def launch_checkout(launch_sh: Path) -> str:
    """The sd-scripts checkout a recorded launch.sh runs when SD_SCRIPTS is not set."""
    line = next(ln for ln in launch_sh.read_text().splitlines() if ln.startswith("SD_SCRIPTS="))
    return subprocess.run(
        ["bash", "-c", f'unset SD_SCRIPTS; {line}; printf %s "$SD_SCRIPTS"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_local_run_then_second_run_skips_setup(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    first = kohyawrap(world, *train_args(world, fake_sdscripts, fake_sdscripts.head))
    assert first.returncode == 0, first.stderr
    m1 = assert_finished_run(only_run(world))
    assert m1.environment is not None and m1.environment.reused is False
    assert m1.environment.packages, "the environment's packages are recorded"
    assert m1.upload is not None and m1.upload.files_sent == 8
    assert not (world.root / "pwned").exists()
    assert "pulled demo.safetensors" in first.stderr

    second = kohyawrap(world, *train_args(world, fake_sdscripts, fake_sdscripts.head))
    assert second.returncode == 0, second.stderr
    m2 = assert_finished_run(only_run(world))
    assert m2.run_id != m1.run_id
    assert m2.environment is not None and m2.environment.reused is True
    assert m2.upload is not None and m2.upload.files_sent == 0
    assert m2.model_how == "in place"
    assert "(cached)" in second.stderr


def test_ssh_run_with_hostile_names(world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd) -> None:
    result = kohyawrap(
        world,
        *train_args(world, fake_sdscripts, fake_sdscripts.head, target=sshd.target, name="my lora"),
        *ssh_args(sshd),
    )
    assert result.returncode == 0, result.stderr
    run = only_run(world)
    m = assert_finished_run(run, name="my lora")
    assert m.host.facts["python_version"], m.host.facts
    remote_dataset = Path(m.remote_run_dir) / "dataset" / HOSTILE
    assert sorted(p.name for p in remote_dataset.iterdir()) == sorted(
        p.name for p in (world.dataset / HOSTILE).iterdir()
    )
    assert not list(world.root.rglob("pwned")) and not (world.home / "pwned").exists()


def test_reproduce_is_byte_identical_and_detects_tampering(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    assert kohyawrap(world, *train_args(world, fake_sdscripts, fake_sdscripts.head)).returncode == 0
    run = only_run(world)
    out = world.root / "again"
    result = kohyawrap(world, "reproduce", str(run), "-o", str(out))
    assert result.returncode == 0, result.stderr
    for name in ("training_config.toml", "sample_prompts.txt", "launch.sh"):
        assert (out / name).read_bytes() == (run / "config" / name).read_bytes()
    remote = Path(manifest_of(run).remote_run_dir)
    assert (remote / "training_config.toml").read_bytes() == (
        run / "config" / "training_config.toml"
    ).read_bytes()
    listed = json.loads(
        kohyawrap(world, "runs", "list", "--runs-dir", str(world.runs), "--json").stdout
    )
    assert [(r["run_id"], r["status"], r["checkpoints"]) for r in listed] == [
        (run.name, "finished", 2)
    ]
    shown = json.loads(
        kohyawrap(
            world, "runs", "show", run.name[:20], "--runs-dir", str(world.runs), "--json"
        ).stdout
    )
    assert shown["run_id"] == run.name
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")}
    again = kohyawrap(world, "pull", run.name, "--runs-dir", str(world.runs))
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")} == before, (
        "pull re-wrote files"
    )
    rerun = kohyawrap(
        world, "reproduce", run.name, "--runs-dir", str(world.runs), "--run", "local", "--yes"
    )
    assert rerun.returncode == 0, rerun.stderr
    second = only_run(world)
    assert second != run
    m2 = assert_finished_run(second)
    first = manifest_of(run)
    assert m2.plan.rendered.files == first.plan.rendered.files, "same configs, byte for byte"
    assert m2.sd_scripts is not None and first.sd_scripts is not None
    assert m2.sd_scripts.commit == first.sd_scripts.commit
    assert m2.plan.money.price_per_hour == first.plan.money.price_per_hour
    config = run / "config" / "training_config.toml"
    config.write_text(config.read_text().replace("networks.lora", "networks.other"))
    tampered = kohyawrap(world, "reproduce", str(run))
    assert tampered.returncode == 2
    assert "differ" in tampered.stderr


def test_failing_run_is_diagnosed_and_partial_checkpoints_pulled(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(fail="oom", fail_at_step=45))
    result = kohyawrap(world, *train_args(world, fake_sdscripts, commit), "--retry-oom", "0")
    assert result.returncode == 4, result.stderr
    assert "out of memory" in result.stderr.lower()
    assert "train_batch_size" in result.stderr or "gradient_checkpointing" in result.stderr
    run = only_run(world)
    m = manifest_of(run)
    assert m.status is RunStatus.FAILED
    assert m.failure is not None and m.failure.kind == "oom"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["demo-000001.safetensors"]


def test_on_finish_command_runs_after_pull_and_states_come_on_request(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    marker = world.root / "finished marker"
    args = [
        *train_args(world, fake_sdscripts, fake_sdscripts.head),
        "--set",
        "save_state=true",
        "--pull-state",
    ]
    result = kohyawrap(
        world, *args, "--on-finish", f"ls {str(world.runs)!r}/*/checkpoints > {str(marker)!r}"
    )
    assert result.returncode == 0, result.stderr
    assert "demo.safetensors" in marker.read_text()
    state = only_run(world) / "checkpoints" / "demo-000001-state" / "train_state.json"
    assert json.loads(state.read_text())["current_epoch"] == 1


def test_budget_stops_the_run_and_pulls(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.25))
    args = train_args(world, fake_sdscripts, commit, epochs=20)
    result = kohyawrap(world, *args, "--price", "7200", "--max-dollars", "3")
    assert result.returncode == 5, result.stderr
    assert "budget" in result.stderr
    m = manifest_of(only_run(world))
    assert m.status is RunStatus.STOPPED and m.stop_reason is StopReason.BUDGET
    assert m.exit_code is not None and m.exit_code != 0
    # The host's watchdog stopped it (the laptop is only the backup): tests/test_money_e2e.py
    assert m.host_stop is not None and m.host_stop.reason is StopReason.BUDGET
    assert m.cost is not None and m.cost.price_per_hour == 7200


def test_unknown_host_key_is_refused_through_the_cli(
    world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    empty = world.root / "empty_known_hosts"
    empty.write_text("")
    args = train_args(world, fake_sdscripts, fake_sdscripts.head, target=sshd.target)
    result = kohyawrap(
        world, *args, "-p", str(sshd.port), "-i", str(sshd.key_path), "--known-hosts", str(empty)
    )
    assert result.returncode == 3
    assert "SHA256:" in result.stderr
    assert "--trust-new-host" in result.stderr
    assert not world.runs.exists() or not any(world.runs.iterdir())


def _start_over_relay(
    world: Env, fake: FakeSdScripts, sshd: Sshd, relay: TcpRelay, *extra: str
) -> subprocess.Popen[str]:
    commit = fake.commit_behaviour(FakeBehaviour(step_seconds=0.15))
    args = train_args(world, fake, commit, target=sshd.target, epochs=3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kohyawrap", *args, *ssh_args(sshd, relay.port), *extra],
        cwd=world.root,
        env=world.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: _started_steps(world), 60, "training to start")
    return proc


def assert_each_checkpoint_once(run: Path) -> None:
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["demo-000001.safetensors", "demo-000002.safetensors", "demo.safetensors"]
    remote_log = Path(m.remote_run_dir) / "run.log"
    assert (run / "run.log").read_bytes() == remote_log.read_bytes()


def test_dropped_connection_is_reconnected_by_itself(
    world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    with TcpRelay(sshd.port) as relay:
        proc = _start_over_relay(world, fake_sdscripts, sshd, relay)
        assert relay.cut() >= 1
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "reconnected" in err
    assert_each_checkpoint_once(only_run(world))


def test_host_gone_then_attach_pulls_each_checkpoint_once(
    world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    with TcpRelay(sshd.port) as relay:
        proc = _start_over_relay(world, fake_sdscripts, sshd, relay, "--reconnect", "1")
        relay.close()  # the address stops answering: the one reconnect fails
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "kohyawrap attach" in err
    run = only_run(world)
    assert manifest_of(run).status is RunStatus.RUNNING

    result = kohyawrap(
        world, "attach", run.name, "--runs-dir", str(world.runs), "--poll", "0.2", *ssh_args(sshd)
    )
    assert result.returncode == 0, result.stderr
    assert_each_checkpoint_once(run)


def test_stop_after_the_laptop_went_away(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.2))
    args = train_args(world, fake_sdscripts, commit, epochs=50)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kohyawrap", *args],
        cwd=world.root,
        env=world.environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(lambda: _started_steps(world), 60, "training to start")
    _wait_for(lambda: manifest_of(only_run(world)).pulled, 60, "a first checkpoint pull")
    proc.kill()
    proc.wait()
    run = only_run(world)
    result = kohyawrap(world, "stop", run.name, "--runs-dir", str(world.runs))
    assert result.returncode == 0, result.stderr
    m = manifest_of(run)
    assert m.status is RunStatus.STOPPED and m.stop_reason is StopReason.MANUAL
    assert m.exit_code == 143
    assert (run / "checkpoints" / "demo-000001.safetensors").is_file()
    remote = Path(m.remote_run_dir)
    assert (remote / "exit_code").read_text().strip() == "143"


def test_hf_token_reaches_the_hub_and_nowhere_else(
    world: Env, fake_sdscripts: FakeSdScripts, fake_hub: FakeHub, token_watch: list[str]
) -> None:
    token = "hf_" + "Qw3rtyUi0pAsdfGhjkLzxcvbnm" * 2
    fake_hub.files["acme/tiny-sd15/model.safetensors"] = b"\x00" * 2048
    clone = fake_sdscripts.clone(world.root / "preinstalled sd-scripts")
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    args[args.index("--base-model") + 1] = "acme/tiny-sd15"
    result = kohyawrap(
        world,
        *args,
        "--base-model-file",
        "model.safetensors",
        "--sd-scripts-path",
        str(clone),
        "--python",
        sys.executable,
        extra_env={"HF_TOKEN": token, "HF_ENDPOINT": fake_hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert f"Bearer {token}" in fake_hub.auth_seen
    run = only_run(world)
    m = assert_finished_run(run)
    assert m.plan.base_file.kind == "hf" and m.files_how == {
        "pretrained_model_name_or_path": "downloaded"
    }
    assert token not in result.stdout + result.stderr
    assert not [line for line in token_watch if token in line], "token seen in a process's argv"
    for path in [*run.rglob("*"), *world.work.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert token.encode() not in path.read_bytes(), path
    assert not list(world.work.glob(".hf-token-*")), "token file left on the host"


def test_full_disk_on_the_host_is_diagnosed(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(fail="disk", fail_at_step=45))
    result = kohyawrap(world, *train_args(world, fake_sdscripts, commit))
    assert result.returncode == 4, result.stderr
    m = manifest_of(only_run(world))
    assert m.failure is not None and m.failure.kind == "disk"
    assert "space" in result.stderr.lower()
    pulled = sorted(p.name for p in (only_run(world) / "checkpoints").iterdir())
    assert pulled == ["demo-000001.safetensors"], (
        "the complete checkpoint is kept, the broken one is not"
    )
    assert list(m.follow.rejected) == ["output/demo.safetensors"]
    assert "not kept: demo.safetensors is incomplete" in result.stderr


def test_host_without_gpu_is_refused_unless_forced_or_smoke(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    args = [a for a in train_args(world, fake_sdscripts, fake_sdscripts.head) if a != "--force"]
    result = kohyawrap(world, *args)
    assert result.returncode == 3
    assert "no NVIDIA GPU" in result.stderr and "--smoke" in result.stderr
    assert not world.runs.exists() or not any(world.runs.iterdir())
    smoke = kohyawrap(world, *args, "--smoke")
    assert smoke.returncode == 0, smoke.stderr
    m = manifest_of(only_run(world))
    assert "--cpu" in m.plan.rendered.accelerate_args
    assert m.status is RunStatus.FINISHED


def test_unknown_sd_scripts_ref_fails_setup_clearly(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    result = kohyawrap(world, *train_args(world, fake_sdscripts, "no-such-branch"))
    assert result.returncode == 3
    assert "no-such-branch" in result.stderr
    assert "--sd-scripts-ref" in result.stderr
    m = manifest_of(only_run(world))
    assert m.status is RunStatus.FAILED
    assert m.error is not None and "sdscripts.sh" in m.error


def test_max_hours_holds_on_the_host_without_the_laptop(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.2))
    args = [*train_args(world, fake_sdscripts, commit, epochs=50), "--max-hours", "0.002"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kohyawrap", *args],
        cwd=world.root,
        env=world.environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(lambda: _started_steps(world), 60, "training to start")
    proc.kill()  # the laptop is gone; nobody watches the budget but the host
    proc.wait()
    remote = Path(manifest_of(only_run(world)).remote_run_dir)
    _wait_for(lambda: (remote / "exit_code").exists(), 30, "the host-side deadline")
    assert (remote / "exit_code").read_text().strip() == "143"
    assert (remote / "deadline").read_text().strip() == "7"
    run = only_run(world)
    result = kohyawrap(world, "attach", run.name, "--runs-dir", str(world.runs))
    assert result.returncode == 5, result.stderr
    assert "deadline" in result.stderr
    m = manifest_of(run)
    assert m.status is RunStatus.STOPPED and m.stop_reason is StopReason.DEADLINE


def test_prepare_overlaps_and_rides_out_a_cut(
    world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    """Install, base-model upload and dataset upload run at once; a connection cut in the middle
    of the model's upload is reconnected, and only what had not arrived travels again."""
    with world.base_model.open("wb") as fh:
        for _ in range(10):
            fh.write(os.urandom(8 << 20))  # 80 MiB: a large file, sent in parts
    old = time.time() - 60
    os.utime(world.base_model, (old, old))
    uploads = world.work / "models" / "uploads"
    with TcpRelay(sshd.port) as relay:
        args = train_args(world, fake_sdscripts, fake_sdscripts.head, target=sshd.target)
        proc = subprocess.Popen(
            [sys.executable, "-m", "kohyawrap", *args, *ssh_args(sshd, relay.port)],
            cwd=world.root,
            env=world.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(
            lambda: uploads.is_dir() and any(uploads.glob(".*.upload/*.part")),
            60,
            "a first part of the base model on the host",
        )
        assert relay.cut() >= 1
        _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "reconnected" in err
    lines = err.splitlines()
    started = {
        name: next(i for i, line in enumerate(lines) if f"==> {name}" in line)
        for name in ("setup", "model", "upload")
    }
    installed = next(i for i, line in enumerate(lines) if "setup: environment" in line)
    assert max(started.values()) < installed, "model and upload began before the install ended"
    m = assert_finished_run(only_run(world))
    for phase in ("connect", "plan", "prepare", "setup", "model", "upload", "train", "pull"):
        assert phase in m.timings, phase
    assert m.model_how == "uploaded"
    there = Path(m.plan.base_file.remote_path)
    assert file_sha256(there) == file_sha256(world.base_model)
    assert Path(f"{there}.sha256").read_text().split()[0] == file_sha256(world.base_model)
    assert not list(uploads.glob(".*.upload")), "no staging folder left behind"


def test_a_branch_ref_points_launch_sh_at_its_commit(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    result = kohyawrap(world, *train_args(world, fake_sdscripts, "main"))
    assert result.returncode == 0, result.stderr
    run = only_run(world)
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED
    assert m.sd_scripts is not None and m.sd_scripts.commit == fake_sdscripts.head
    assert launch_checkout(run / "config" / "launch.sh") == m.sd_scripts.path
    assert m.sd_scripts.path.endswith(f"/sd-scripts/{fake_sdscripts.head}")
    remote = Path(m.remote_run_dir) / "launch.sh"
    assert remote.read_text() == (run / "config" / "launch.sh").read_text()
    again = kohyawrap(world, "reproduce", str(run), "-o", str(world.root / "again"))
    assert again.returncode == 0, again.stderr
