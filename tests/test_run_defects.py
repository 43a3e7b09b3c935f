"""Defects found by trying the tool as a user would (issue "Defects found by trying it"), each
reproduced through the CLI against this machine or a real sshd with a relay that cuts connections.

The rule behind all of them: anything the user can type either works end to end or is refused
before anything is rented, uploaded or started; a run never reports success while a LoRA is
missing on the laptop; nothing secret outlives its use; no input produces a traceback.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kohyawrap.errors import HostError
from kohyawrap.hosts.connect import ConnectOptions
from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.manifest import RunStatus, StopReason
from kohyawrap.launcher.report import SilentReporter
from kohyawrap.launcher.runstore import RunDir, RunStore
from kohyawrap.launcher.stages import FollowOptions
from kohyawrap.launcher.verbs import Launcher
from tests.fixtures.fakesds import FakeBehaviour, FakeSdScripts
from tests.fixtures.hub import FakeHub
from tests.fixtures.runs import (
    Env,
    _started_steps,
    _wait_for,
    kohyawrap,
    manifest_of,
    only_run,
    ssh_args,
    train_args,
)
from tests.fixtures.sshd import Sshd, TcpRelay, free_port, running_sshd

LIBRARY_NOISE = ("Traceback", "Error reading SSH protocol banner", "paramiko")


def assert_no_noise(stderr: str) -> None:
    for noise in LIBRARY_NOISE:
        assert noise not in stderr, f"{noise!r} reached the terminal:\n{stderr}"


def checkpoint_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


# ---------------------------------------------------------------------------------------------
# 1. Names, and LoRAs that never came home


NAMES = ["Hündin_v2", "dog(v2)", "o'neil", "柴犬"]


@pytest.mark.slow
def test_any_file_name_a_user_types_trains_and_comes_home_through_a_cut(
    world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    name = " ".join(NAMES)  # every troublesome character at once
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.15))
    args = train_args(world, fake_sdscripts, commit, target=sshd.target, name=name, epochs=3)
    with TcpRelay(sshd.port) as relay:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kohyawrap", *args, *ssh_args(sshd, relay.port)],
            cwd=world.root,
            env=world.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda: _started_steps(world), 60, "training to start")
        assert relay.cut() >= 1
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "reconnected" in err
    assert_no_noise(err)
    run = only_run(world)
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED and not m.missing()
    expected = [f"{name}-000001.safetensors", f"{name}-000002.safetensors", f"{name}.safetensors"]
    assert checkpoint_names(run) == sorted(expected)
    assert sorted(m.follow.announced) == sorted(f"output/{n}" for n in expected)
    listed = kohyawrap(world, "runs", "list", "--runs-dir", str(world.runs), "--json")
    assert '"finished"' in listed.stdout
    again = kohyawrap(world, "pull", run.name, "--runs-dir", str(world.runs), *ssh_args(sshd))
    assert again.returncode == 0 and "pulled" not in again.stderr, "nothing left to pull"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../x", "path separator"),
        ("a/b", "path separator"),
        ("", "empty"),
        ("   ", "empty"),
        ("tab\there", "control characters"),
        (".hidden", "starts with a dot"),
    ],
)
def test_names_that_cannot_name_a_file_are_refused_before_connecting(
    world: Env, fake_sdscripts: FakeSdScripts, name: str, words: str
) -> None:
    # Nothing listens on the port: a refusal that came after connecting would say so instead.
    args = train_args(
        world, fake_sdscripts, fake_sdscripts.head, target="root@127.0.0.1", name=name
    )
    result = kohyawrap(world, *args, "-p", str(free_port()))
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and "refused the connection" not in result.stderr
    assert not world.runs.exists()


@pytest.mark.parametrize(
    "setting",
    ["output_dir=/tmp/elsewhere", "output_name=other", "logging_dir=x", "train_data_dir=x",
     "reg_data_dir=x", "dataset_config=x.toml"],
)  # fmt: skip
def test_run_managed_keys_are_refused_in_set(
    world: Env, fake_sdscripts: FakeSdScripts, setting: str
) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    result = kohyawrap(world, *args, "--set", setting)
    assert result.returncode == 2, result.stderr
    assert "managed by the run" in result.stderr and setting.split("=")[0] in result.stderr
    assert not world.runs.exists()


@pytest.mark.slow
def test_a_run_missing_an_announced_checkpoint_is_incomplete_and_does_not_finish(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    marker = world.root / "finish action ran"
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(fail="vanish", fail_at_step=45))
    args = train_args(world, fake_sdscripts, commit)
    result = kohyawrap(world, *args, "--on-finish", f"touch {str(marker)!r}")
    assert result.returncode == 4, result.stderr
    assert "not on the laptop" in result.stderr and "kohyawrap pull" in result.stderr
    assert "finished" not in result.stderr.split("error:")[-1]
    m = manifest_of(only_run(world))
    assert m.status is RunStatus.INCOMPLETE
    assert m.missing() == ("output/demo.safetensors",)
    assert not marker.exists(), "the finish action must wait for every checkpoint"


# ---------------------------------------------------------------------------------------------
# 2. Dropped connections


@pytest.mark.slow
def test_the_reconnect_budget_counts_drops_in_a_row_not_in_a_run(
    world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.15))
    args = train_args(world, fake_sdscripts, commit, target=sshd.target, epochs=4)
    with TcpRelay(sshd.port) as relay:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kohyawrap",
                *args,
                *ssh_args(sshd, relay.port),
                "--reconnect",
                "1",
            ],
            cwd=world.root,
            env=world.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda: _started_steps(world), 60, "training to start")
        cuts = 0
        for _ in range(3):  # three drops, each followed by a good reconnect
            time.sleep(2.0)
            if proc.poll() is not None:
                break
            cuts += relay.cut() > 0
        _, err = proc.communicate(timeout=180)
    assert cuts >= 2
    assert proc.returncode == 0, err
    assert err.count("reconnected;") >= 2
    assert_no_noise(err)
    assert manifest_of(only_run(world)).status is RunStatus.FINISHED


@pytest.mark.slow
def test_a_drop_during_set_up_is_retried(
    world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head, target=sshd.target)
    venvs = world.work / "venvs"
    with TcpRelay(sshd.port) as relay:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kohyawrap", *args, *ssh_args(sshd, relay.port)],
            cwd=world.root,
            env=world.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The venv is being built (its folder exists, its ready-marker does not): cut now.
        _wait_for(
            lambda: venvs.is_dir() and any(venvs.iterdir())
            and not list(venvs.glob("*/.kohyawrap-ready")),
            60,
            "the environment build to start",
        )  # fmt: skip
        assert relay.cut() >= 1
        _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    # Set-up, the model download and the upload run at once (PREPARE): whichever of them meets the
    # drop first reconnects and says what it does again; the others retry on that connection.
    assert re.search(r"reconnected; (setting up|fetching the model files|uploading the rest)", err)
    assert_no_noise(err)
    assert manifest_of(only_run(world)).status is RunStatus.FINISHED


@pytest.mark.slow
def test_a_drop_during_the_model_download_leaves_no_token_anywhere(
    world: Env,
    fake_sdscripts: FakeSdScripts,
    fake_hub: FakeHub,
    tmp_path: Path,
    token_watch: list[str],
) -> None:
    token = "hf_" + "Dr0pp3dT0k3n" * 3
    fake_hub.files["acme/tiny-sd15/model.safetensors"] = b"\x00" * (1 << 20)
    fake_hub.hold = True
    clone = fake_sdscripts.clone(world.root / "preinstalled sd-scripts")
    # The host's sessions reach the fake Hub (its image sets HF_ENDPOINT, as a provider's might).
    hub_env = f"SetEnv HF_ENDPOINT={fake_hub.url} HF_HUB_DISABLE_TELEMETRY=1\n"
    with running_sshd(tmp_path / "sshd-hub", extra_config=hub_env) as sshd:
        _drop_during_download(world, fake_sdscripts, fake_hub, sshd, clone, token, token_watch)


def _drop_during_download(
    world: Env,
    fake_sdscripts: FakeSdScripts,
    fake_hub: FakeHub,
    sshd: Sshd,
    clone: Path,
    token: str,
    token_watch: list[str],
) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head, target=sshd.target)
    args[args.index("--base-model") + 1] = "acme/tiny-sd15"
    env = world.environ(HF_TOKEN=token)
    extra = ["--base-model-file", "model.safetensors", "--sd-scripts-path", str(clone),
             "--python", sys.executable]  # fmt: skip
    with TcpRelay(sshd.port) as relay:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kohyawrap", *args, *extra, *ssh_args(sshd, relay.port)],
            cwd=world.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert fake_hub.holding.wait(60), "the download did not start"
        assert relay.cut() >= 1
        threading.Timer(1.0, fake_hub.release.set).start()
        _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "reconnected; fetching the model files again" in err
    assert_no_noise(err)
    assert f"Bearer {token}" in fake_hub.auth_seen
    assert token not in err
    assert not [line for line in token_watch if token in line], "token seen in a process's argv"
    for path in [*world.work.rglob("*"), *world.runs.rglob("*"), *world.home.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert token.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_stop_on_an_ended_run_changes_nothing(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    assert kohyawrap(world, *train_args(world, fake_sdscripts, fake_sdscripts.head)).returncode == 0
    run = only_run(world)
    before = (run / "manifest.json").read_bytes()
    result = kohyawrap(world, "stop", run.name, "--runs-dir", str(world.runs))
    assert result.returncode == 0, result.stderr
    assert "already ended (finished); nothing was changed" in " ".join(result.stderr.split())
    assert (run / "manifest.json").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# 3. Bad input: one clear line


def test_a_missing_token_file_is_one_line(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    result = kohyawrap(world, *args, "--hf-token-file", "/nonexistent/token")
    assert result.returncode == 2
    assert "--hf-token-file /nonexistent/token refused" in result.stderr
    assert "No such file" in result.stderr
    assert_no_noise(result.stderr)


def test_a_proxy_command_that_does_not_exist_is_one_line(
    world: Env, fake_sdscripts: FakeSdScripts, tmp_path: Path
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host far\n  HostName 127.0.0.1\n  ProxyCommand /no/such/proxy %h %p\n")
    args = train_args(world, fake_sdscripts, fake_sdscripts.head, target="root@far")
    result = kohyawrap(world, *args, "--ssh-config", str(config))
    assert result.returncode in (2, 3), result.stderr
    assert "/no/such/proxy" in result.stderr
    assert_no_noise(result.stderr)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--price", "-3"), ("--max-dollars", "-1"), ("--max-hours", "0"), ("--poll", "0"),
     ("--vram", "-5")],
)  # fmt: skip
def test_impossible_numbers_are_refused(
    world: Env, fake_sdscripts: FakeSdScripts, option: str, value: str
) -> None:
    result = kohyawrap(
        world, *train_args(world, fake_sdscripts, fake_sdscripts.head), option, value
    )
    assert result.returncode == 2, result.stderr
    assert option in result.stderr and "vram--5" not in result.stderr
    assert not world.runs.exists()


# ---------------------------------------------------------------------------------------------
# 4. Failures that would come late


def test_a_bad_python_is_refused_before_anything_is_uploaded(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    result = kohyawrap(world, *args, "--python", "/no/such/python3")
    assert result.returncode == 2, result.stderr
    assert "--python '/no/such/python3' does not run" in " ".join(result.stderr.split())
    assert not (world.work / "datasets").exists(), "nothing uploaded"
    assert not world.runs.exists()


# ---------------------------------------------------------------------------------------------
# 5. One follower at a time; the README's own paths


@pytest.mark.slow
def test_train_and_attach_at_once_the_second_says_so(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.2))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kohyawrap", *train_args(world, fake_sdscripts, commit, epochs=3)],
        cwd=world.root,
        env=world.environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: _started_steps(world), 60, "training to start")
    second = kohyawrap(world, "attach", only_run(world).name, "--runs-dir", str(world.runs))
    assert second.returncode == 2, second.stderr
    assert "is being followed by another kohyawrap (pid" in " ".join(second.stderr.split())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


@pytest.mark.slow
def test_train_without_a_terminal_asks_for_yes(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    args = [a for a in train_args(world, fake_sdscripts, fake_sdscripts.head) if a != "--yes"]
    result = subprocess.run(
        [sys.executable, "-m", "kohyawrap", *args],
        cwd=world.root,
        env=world.environ(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "no terminal to confirm" in result.stderr and "--yes" in result.stderr
    assert "Aborted" not in result.stderr
    assert not world.runs.exists()


def test_shutdown_of_this_machine_is_refused(world: Env, fake_sdscripts: FakeSdScripts) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    result = kohyawrap(world, *args, "--on-finish", "shutdown")
    assert result.returncode == 2
    assert "would power off 'local'" in result.stderr
    assert not world.runs.exists()


@pytest.mark.slow
def test_gpu_auto_smoke_runs_on_a_host_without_a_gpu(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    args = [a for a in args if a != "--force"]
    args[args.index("--gpu") + 1] = "auto"
    result = kohyawrap(world, *args, "--smoke")
    assert result.returncode == 0, result.stderr
    m = manifest_of(only_run(world))
    assert m.status is RunStatus.FINISHED
    assert "--cpu" in m.plan.rendered.accelerate_args
    without = kohyawrap(world, *[a for a in args if a != "--smoke"])
    assert without.returncode == 3
    assert "no NVIDIA GPU" in without.stderr and "--smoke" in without.stderr


@pytest.mark.slow
def test_pulled_files_match_the_host_byte_for_byte(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    assert kohyawrap(world, *train_args(world, fake_sdscripts, fake_sdscripts.head)).returncode == 0
    m = manifest_of(only_run(world))
    for rel, info in m.pulled.items():
        assert file_sha256(Path(m.remote_run_dir) / rel) == info.sha256
    assert m.stop_reason is None or m.stop_reason is not StopReason.MANUAL


class _CutAfterStop(SilentReporter):
    """Reports nothing; drops the network the moment the job is reported stopped."""

    def __init__(self, relay: TcpRelay) -> None:
        self.relay = relay
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)
        if message.startswith("the training stopped"):
            self.relay.close()


@pytest.mark.slow
def test_stop_that_cannot_pull_says_the_training_was_stopped(
    world: Env, fake_sdscripts: FakeSdScripts, sshd: Sshd
) -> None:
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.2))
    args = train_args(world, fake_sdscripts, commit, target=sshd.target, epochs=50)
    with TcpRelay(sshd.port) as relay:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kohyawrap", *args, *ssh_args(sshd, relay.port)],
            cwd=world.root,
            env=world.environ(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(lambda: _started_steps(world), 60, "training to start")
        proc.kill()  # the laptop is gone; the job goes on
        proc.wait()
        run = RunDir(only_run(world))
        reporter = _CutAfterStop(relay)
        launcher = Launcher(RunStore(world.runs), reporter, options=FollowOptions(0.2, 0))
        with pytest.raises(HostError) as failed:
            launcher.stop(run, ConnectOptions())
    message = str(failed.value)
    assert "the training was stopped, but its files could not be pulled" in message
    assert "goes on" not in message and "kohyawrap pull" in message
    remote = Path(run.load().remote_run_dir)
    assert (remote / "exit_code").read_text().strip() == "143", "the trainer really was stopped"
