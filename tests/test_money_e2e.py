"""Money end to end (docs/money.md): the host's watchdog holds the budget and the idle rule with no
laptop connected, and the finish action never destroys a host before the LoRA is safe.

Real parts: the CLI, this machine as a LocalHost and a real sshd on loopback (its sessions given a
provider's environment with ``SetEnv``), the fake sd-scripts, the fake Hugging Face Hub. The
provider cannot exist here, so stand-ins take its place: ``runpodctl`` and ``shutdown`` programs
first on the host's PATH that record their calls, and a Vast.ai REST API on loopback that records
its requests.
"""

from __future__ import annotations

import contextlib
import json
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.fetch import is_checkpoint
from kohyawrap.launcher.manifest import RunStatus, StopReason
from tests.fixtures.fakesds import FakeBehaviour, FakeSdScripts
from tests.fixtures.hub import FakeHub
from tests.fixtures.hub import _handler as hub_handler
from tests.fixtures.runs import (
    Env,
    _started_steps,
    _wait_for,
    kohyawrap,
    manifest_of,
    only_run,
    train_args,
)
from tests.fixtures.sshd import Sshd, running_sshd, sshd_available

pytestmark = pytest.mark.slow
POD = "pod-e2e7x"


# ---------------------------------------------------------------------------------------------
# Stand-ins for the provider


def provider_bin(folder: Path) -> Path:
    """``runpodctl`` and ``shutdown`` that append their arguments to ``folder/calls``."""
    folder.mkdir(parents=True, exist_ok=True)
    calls = folder / "calls"
    for name in ("runpodctl", "shutdown"):
        path = folder / name
        path.write_text(f'#!/bin/sh\nprintf "%s %s\\n" "{name}" "$*" >> "{calls}"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return calls


class _Vast(BaseHTTPRequestHandler):
    """Vast.ai's REST API on loopback: records (method, path, auth, body) of every request."""

    seen: ClassVar[list[tuple[str, str, str, str]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.seen.append((self.command, self.path, self.headers.get("Authorization", ""), body))
        raw = b'{"success": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_PUT = do_DELETE = _answer


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class ProviderHost:
    """A loopback sshd whose sessions look like a rented box, reached through the alias
    ``gpu-box`` (not "local": --on-finish may act on it without asking)."""

    sshd: Sshd
    calls: Path  # what the stand-in programs were asked to do
    ssh_config: Path

    def args(self) -> list[str]:
        return [
            "--ssh-config", str(self.ssh_config),
            "-i", str(self.sshd.key_path),
            "--known-hosts", str(self.sshd.known_hosts),
        ]  # fmt: skip

    def calls_now(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@dataclass(frozen=True)
class Boxes:
    pod: ProviderHost  # a RunPod pod
    vast: ProviderHost  # a Vast.ai instance
    hub: FakeHub
    vast_api: list[tuple[str, str, str, str]]


def _provider_host(root: Path, env: str, stack: contextlib.ExitStack) -> ProviderHost:
    fake = root / "provider bin"
    calls = provider_bin(fake)
    # The stand-ins come first; the real shutdown (in /usr/sbin) is not on this PATH at all.
    path = f"{fake}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    sshd = stack.enter_context(
        running_sshd(root / "sshd", extra_config=f'SetEnv "PATH={path}" {env}\n')
    )
    config = root / "ssh_config"
    config.write_text(
        f"Host gpu-box\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
    )
    host = sshd.connect()
    try:
        found = host.run("command -v shutdown; command -v runpodctl").stdout.splitlines()
    finally:
        host.close()
    assert found == [str(fake / "shutdown"), str(fake / "runpodctl")], found
    return ProviderHost(sshd, calls, config)


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boxes]:
    if not sshd_available():
        pytest.skip("OpenSSH sshd is not installed")
    root = tmp_path_factory.mktemp("boxes")
    hub = FakeHub(url="", files={})
    with contextlib.ExitStack() as stack:
        hub.url = stack.enter_context(serving(hub_handler(hub)))
        vast_url = stack.enter_context(serving(_Vast))
        common = f"HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1"
        pod = _provider_host(
            root / "pod", f"{common} RUNPOD_POD_ID={POD} RUNPOD_API_KEY=rp-secret", stack
        )
        vast = _provider_host(
            root / "vast",
            f"{common} CONTAINER_ID=4242 CONTAINER_API_KEY=vast-key "
            f"KOHYAWRAP_VAST_API={vast_url}/api/v0",
            stack,
        )
        yield Boxes(pod, vast, hub, _Vast.seen)


def start_then_leave(env: Env, args: list[str]) -> Path:
    """Start `train`, wait for the first steps, kill the laptop: only the host is left."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kohyawrap", *args],
        cwd=env.root,
        env=env.environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _started_steps(env), 120, "training to start")
    finally:
        proc.kill()
        proc.wait()
    return Path(manifest_of(only_run(env)).remote_run_dir)


def on(box: ProviderHost, args: list[str]) -> list[str]:
    """``train`` arguments aimed at ``box`` (through its alias) instead of this machine."""
    args = list(args)
    args[args.index("--host") + 1] = "gpu-box"
    return [*args, *box.args()]


def host_json(remote: Path, name: str) -> dict[str, object]:
    return json.loads((remote / "watchdog" / name).read_text())


# ---------------------------------------------------------------------------------------------
# The budget, held by the host alone


def test_budget_stops_the_job_right_after_a_save_with_no_laptop(
    world: Env, fake_sdscripts: FakeSdScripts
) -> None:
    price, budget = 36.0, 0.45  # $0.01 a second
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.05))
    args = [*train_args(world, fake_sdscripts, commit, epochs=50), "--price", str(price),
            "--max-dollars", str(budget)]  # fmt: skip
    remote = start_then_leave(world, args)
    _wait_for(lambda: (remote / "exit_code").exists(), 120, "the host to stop the job")
    stop = host_json(remote, "stop.json")
    config = host_json(remote, "config.json")
    assert stop["reason"] == "budget" and stop["graceful"] is True, stop
    assert stop["after"] and (remote / "output" / str(stop["after"])).is_file()
    assert float(stop["spent"]) <= budget  # type: ignore[arg-type]
    started = float((remote / "started_at").read_text())
    ended = float((remote / "ended_at").read_text())
    second = price / 3600  # started_at / ended_at have one-second resolution
    before = float(config["spent_before_launch"])  # type: ignore[arg-type]
    assert before + price * (ended - started) / 3600 <= budget + second

    run = only_run(world)
    result = kohyawrap(world, "attach", run.name, "--runs-dir", str(world.runs), "--poll", "0.2")
    assert result.returncode == 5, result.stderr
    assert "budget" in result.stderr and "nothing trained is lost" in result.stderr
    m = manifest_of(run)
    assert m.status is RunStatus.STOPPED and m.stop_reason is StopReason.BUDGET
    assert m.host_stop is not None and m.host_stop.graceful and m.host_stop.after == stop["after"]
    assert f"output/{stop['after']}" in m.pulled, "the checkpoint it stopped after is pulled"
    assert m.cost is not None and m.cost.actual <= budget + 2 * second


# ---------------------------------------------------------------------------------------------
# The idle rule and the safety rule


def test_idle_vast_instance_is_stopped_not_destroyed_while_checkpoints_are_not_safe(
    world: Env, fake_sdscripts: FakeSdScripts, boxes: Boxes
) -> None:
    boxes.vast_api.clear()
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.1))
    args = [*train_args(world, fake_sdscripts, commit, epochs=2), "--on-finish", "destroy",
            "--idle-minutes", "0.05"]  # fmt: skip
    remote = start_then_leave(world, on(boxes.vast, args))
    _wait_for(lambda: (remote / "watchdog" / "finish.json").exists(), 120, "the idle rule")
    _wait_for(
        lambda: str(host_json(remote, "finish.json")["result"]).startswith("ok"), 30, "the stop"
    )
    finish = host_json(remote, "finish.json")
    assert finish["by"] == "watchdog" and finish["action"] == "stop", finish
    assert "destroy refused" in str(finish["message"])
    assert len(finish["missing"]) == 2  # type: ignore[arg-type]
    assert boxes.vast_api == [("PUT", "/api/v0/instances/4242/", "Bearer vast-key",
                               '{"state": "stopped"}')]  # fmt: skip

    run = only_run(world)
    result = kohyawrap(world, "attach", run.name, "--runs-dir", str(world.runs), *boxes.vast.args())
    assert result.returncode == 0, result.stderr
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED
    assert m.finish is not None and m.finish.by == "watchdog" and m.finish.action == "stop"
    assert [c[0] for c in boxes.vast_api] == ["PUT"], "still never destroyed"
    assert "on finish (watchdog)" in result.stderr


def test_runpod_pod_is_destroyed_only_after_every_checkpoint_is_verified(
    world: Env, fake_sdscripts: FakeSdScripts, boxes: Boxes
) -> None:
    boxes.pod.calls.unlink(missing_ok=True)
    args = on(boxes.pod, [*train_args(world, fake_sdscripts, fake_sdscripts.head, name="柴犬 v2"),
                          "--on-finish", "destroy"])  # fmt: skip
    checked = kohyawrap(world, "hosts", "check", "gpu-box", "--no-torch", "--json",
                        *boxes.pod.args())  # fmt: skip
    facts = json.loads(checked.stdout)
    assert (facts["provider"], facts["provider_id"]) == ("runpod", POD)
    assert facts["provider_tool"].endswith("/runpodctl")

    result = kohyawrap(world, *args)
    assert result.returncode == 0, result.stderr
    assert boxes.pod.calls_now() == [f"runpodctl remove pod {POD}"]
    run = only_run(world)
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED
    assert m.finish is not None and (m.finish.action, m.finish.by, m.finish.result) == (
        "destroy",
        "laptop",
        "ok",
    )
    remote = Path(m.remote_run_dir)
    destroyed_at = boxes.pod.calls.stat().st_mtime
    checkpoints = {r: i for r, i in m.pulled.items() if is_checkpoint(r)}
    assert checkpoints, m.pulled
    for rel, info in checkpoints.items():
        # Every checkpoint (not the sample images, also pulled) has its receipt.
        receipt = remote / "receipts" / f"{Path(rel).name}.sha256"
        assert receipt.read_text().split()[0] == info.sha256 == file_sha256(remote / rel)
        assert receipt.stat().st_mtime <= destroyed_at
        assert file_sha256(run / info.path) == info.sha256


def test_without_a_laptop_a_hub_push_makes_the_pod_safe_to_destroy(
    world: Env, fake_sdscripts: FakeSdScripts, boxes: Boxes, token_watch: list[str]
) -> None:
    boxes.pod.calls.unlink(missing_ok=True)
    token = "hf_" + "HubPushT0ken" * 3
    clone = fake_sdscripts.clone(world.root / "preinstalled sd-scripts")
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(step_seconds=0.1))
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", commit], check=True)
    args = [*train_args(world, fake_sdscripts, commit, epochs=2), "--on-finish", "destroy",
            "--idle-minutes", "0.05", "--push-to-hub", "me/shiba-lora",
            "--sd-scripts-path", str(clone), "--python", sys.executable]  # fmt: skip
    environ = world.environ(HF_TOKEN=token)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kohyawrap", *on(boxes.pod, args)],
        cwd=world.root, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(lambda: _started_steps(world), 120, "training to start")
    finally:
        proc.kill()
        proc.wait()
    remote = Path(manifest_of(only_run(world)).remote_run_dir)
    _wait_for(lambda: (remote / "watchdog" / "finish.json").exists(), 180, "the idle rule")
    _wait_for(
        lambda: str(host_json(remote, "finish.json")["result"]).startswith("ok"), 30, "the destroy"
    )
    finish = host_json(remote, "finish.json")
    assert finish["action"] == "destroy" and finish["by"] == "watchdog", finish
    assert boxes.pod.calls_now() == [f"runpodctl remove pod {POD}"]
    hub = host_json(remote, "hub.json")
    outputs = sorted(p for p in (remote / "output").iterdir() if p.suffix == ".safetensors")
    assert sorted(hub["files"]) == [p.name for p in outputs]  # type: ignore[call-overload]
    for path in outputs:
        assert boxes.hub.files[f"me/shiba-lora/{path.name}"] == path.read_bytes()
    assert f"Bearer {token}" in boxes.hub.auth_seen
    assert not (remote / "watchdog" / "hf_token").exists()
    assert not [line for line in token_watch if token in line], "token in a command line"
    for path in [*world.work.rglob("*"), *world.runs.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert token.encode() not in path.read_bytes(), path


def test_shutdown_of_a_plain_linux_host(
    world: Env, fake_sdscripts: FakeSdScripts, boxes: Boxes
) -> None:
    boxes.pod.calls.unlink(missing_ok=True)
    args = [*train_args(world, fake_sdscripts, fake_sdscripts.head), "--on-finish", "shutdown",
            "--provider", "none"]  # fmt: skip
    result = kohyawrap(world, *on(boxes.pod, args))
    assert result.returncode == 0, result.stderr
    assert boxes.pod.calls_now() == ["shutdown -h now"]
    assert manifest_of(only_run(world)).finish.action == "shutdown"  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Refused before anything is started


def test_finish_actions_that_cannot_work_are_refused_before_starting(
    world: Env, fake_sdscripts: FakeSdScripts, boxes: Boxes
) -> None:
    args = train_args(world, fake_sdscripts, fake_sdscripts.head)
    local = kohyawrap(world, *args, "--on-finish", "destroy")
    assert local.returncode == 2 and "looks like this machine" in local.stderr
    typo = kohyawrap(world, *args, "--on-finish", "destory")
    assert typo.returncode == 2 and "did you mean 'destroy'" in typo.stderr
    no_token = kohyawrap(world, *args, "--push-to-hub", "me/lora")
    assert no_token.returncode == 2 and "token" in no_token.stderr
    plain = kohyawrap(world, *on(boxes.pod, args), "--on-finish", "stop", "--provider", "none")
    assert plain.returncode == 2 and "needs a RunPod pod or a Vast.ai instance" in plain.stderr
    for result in (local, typo, no_token, plain):
        assert "Traceback" not in result.stderr
    assert not world.runs.exists() or not any(world.runs.iterdir())
