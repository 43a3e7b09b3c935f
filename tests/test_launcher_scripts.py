"""The remote shell scripts, rendered and run for real with bash on real git repos and venvs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kohyawrap.launcher.scripts import parse_kv, render_script


def bash(script: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    repo = tmp_path / "origin repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "requirements.txt").write_text("# nothing to install\n")
    (repo / "train_network.py").write_text("print('v1')\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    return repo


def test_sdscripts_clone_then_cached(tmp_path: Path, origin: Path) -> None:
    work = tmp_path / "work $(touch pwned)"
    head = git(origin, "rev-parse", "HEAD")
    script = render_script(
        "sdscripts", work=str(work), repo=f"file://{origin}", ref=head, sds_path=""
    )
    first = bash(script, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    found = parse_kv(first.stdout)
    assert found["clone"] == "fresh"
    assert found["commit"] == head
    assert found["sds"] == f"{work}/sd-scripts/{head}"
    expected = hashlib.sha256((origin / "requirements.txt").read_bytes()).hexdigest()
    assert found["requirements_sha256"] == expected
    assert not (tmp_path / "pwned").exists()
    again = parse_kv(bash(script, cwd=tmp_path).stdout)
    assert again["clone"] == "cached"
    assert again["commit"] == head


def test_sdscripts_branch_ref_resolves_to_commit(tmp_path: Path, origin: Path) -> None:
    (origin / "train_network.py").write_text("print('v2')\n")
    git(origin, "commit", "-qam", "two")
    head = git(origin, "rev-parse", "HEAD")
    script = render_script(
        "sdscripts", work=str(tmp_path / "w"), repo=str(origin), ref="main", sds_path=""
    )
    found = parse_kv(bash(script).stdout)
    assert found["commit"] == head
    assert (Path(found["sds"]) / "train_network.py").read_text() == "print('v2')\n"


def test_sdscripts_unknown_ref_fails_clearly(tmp_path: Path, origin: Path) -> None:
    script = render_script(
        "sdscripts", work=str(tmp_path / "w"), repo=str(origin), ref="no-such-ref", sds_path=""
    )
    result = bash(script)
    assert result.returncode != 0
    assert "no-such-ref" in result.stderr
    assert not list((tmp_path / "w" / "sd-scripts").glob(".clone-*")), "temporary clone left behind"


def test_venv_is_built_once_and_fingerprinted(tmp_path: Path, origin: Path) -> None:
    venv = tmp_path / "venvs" / "abc"
    script = render_script(
        "venv",
        sds=str(origin),
        venv=str(venv),
        python=sys.executable,
        torch_spec="skip",
        xformers="no",
        fingerprint="abc",
    )
    first = bash(script)
    assert first.returncode == 0, first.stderr
    info = parse_kv(first.stdout)
    assert info["venv"] == "fresh"
    assert (venv / ".kohyawrap-ready").is_file()
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert parse_kv(bash(script).stdout)["venv"] == "cached"


def _fake_launcher(root: Path, body: str) -> tuple[Path, Path]:
    """A stand-in `accelerate` package and a training script (the real ones live on GPU hosts)."""
    sds = root / "sds"
    (sds / "accelerate" / "commands").mkdir(parents=True)
    (sds / "accelerate" / "__init__.py").write_text("")
    (sds / "accelerate" / "commands" / "__init__.py").write_text("")
    (sds / "accelerate" / "commands" / "launch.py").write_text(
        "import runpy, sys\n"
        "args = sys.argv[1:]\n"
        "i = next(n for n, a in enumerate(args) if a.endswith('.py'))\n"
        "sys.argv = args[i:]\n"
        "runpy.run_path(args[i], run_name='__main__')\n"
    )
    (sds / "train_network.py").write_text(body)
    run_dir = root / "run dir"
    (run_dir / "config").mkdir(parents=True)
    (run_dir / "config" / "training_config.toml").write_text("")
    return sds, run_dir


def _start(sds: Path, run_dir: Path, max_seconds: int = 0) -> None:
    wrapper = render_script(
        "run",
        run_dir=str(run_dir),
        sds=str(sds),
        python=sys.executable,
        hf_home=str(run_dir / "hf"),
        accelerate_args=["--num_processes", "1"],
        max_seconds=max_seconds,
        script=str(sds / "train_network.py"),
    )
    (run_dir / "run.sh").write_text(wrapper)
    subprocess.run(
        f"cd '{run_dir}' && setsid -f nohup bash run.sh >/dev/null 2>&1 </dev/null",
        shell=True,
        check=True,
    )


def _wait_exit_code(run_dir: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "exit_code").exists():
            return int((run_dir / "exit_code").read_text())
        time.sleep(0.05)
    raise AssertionError("no exit_code written")


@pytest.mark.parametrize(("body", "code"), [("print('ok')\n", 0), ("import sys\nsys.exit(3)\n", 3)])
def test_run_wrapper_records_exit_code(tmp_path: Path, body: str, code: int) -> None:
    sds, run_dir = _fake_launcher(tmp_path, body)
    _start(sds, run_dir)
    assert _wait_exit_code(run_dir) == code
    log = (run_dir / "run.log").read_text()
    assert ("ok" in log) == (code == 0)


def test_run_wrapper_stop_kills_trainer_and_records(tmp_path: Path) -> None:
    sds, run_dir = _fake_launcher(
        tmp_path, "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n"
    )
    _start(sds, run_dir)
    deadline = time.monotonic() + 20
    while not (run_dir / "run.log").exists() or not (run_dir / "run.log").read_text().strip():
        assert time.monotonic() < deadline, "trainer did not start"
        time.sleep(0.05)
    trainer = int((run_dir / "run.log").read_text().split()[0])
    os.kill(int((run_dir / "run.pid").read_text()), signal.SIGTERM)
    assert _wait_exit_code(run_dir) == 143
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(trainer, 0)


def test_model_script_downloads_with_token_from_file_only(tmp_path: Path, fake_hub: object) -> None:
    from tests.fixtures.hub import FakeHub

    assert isinstance(fake_hub, FakeHub)
    token = "hf_" + "S3cr3tT0k3n" * 3
    fake_hub.files["acme/tiny-sd/model.safetensors"] = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    token_file = tmp_path / ".hf-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    dest = tmp_path / "models" / "hf-files" / "acme--tiny-sd--model.safetensors"
    script = render_script(
        "model",
        python=sys.executable,
        kind="hf",
        source="acme/tiny-sd",
        filename="model.safetensors",
        dest=str(dest),
        token_file=str(token_file),
        hf_home=str(tmp_path / "models" / "hf"),
    )
    assert token not in script
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    result = bash(script, env=env)
    assert result.returncode == 0, result.stderr
    assert parse_kv(result.stdout)["model"] == "downloaded"
    assert dest.read_bytes() == fake_hub.files["acme/tiny-sd/model.safetensors"]
    assert not token_file.exists(), "the token file must be removed after the download"
    assert f"Bearer {token}" in fake_hub.auth_seen
    assert token not in result.stdout + result.stderr
    again = bash(script, env=env)
    assert parse_kv(again.stdout)["model"] == "cached"


def test_run_wrapper_enforces_the_deadline_on_its_own(tmp_path: Path) -> None:
    sds, run_dir = _fake_launcher(tmp_path, "import time\ntime.sleep(60)\n")
    _start(sds, run_dir, max_seconds=1)
    assert _wait_exit_code(run_dir, timeout=20) == 143
    assert (run_dir / "deadline").read_text().strip() == "1"


def test_run_wrapper_cancels_the_deadline_when_done(tmp_path: Path) -> None:
    sds, run_dir = _fake_launcher(tmp_path, "print('quick')\n")
    _start(sds, run_dir, max_seconds=2)
    assert _wait_exit_code(run_dir) == 0
    time.sleep(2.5)
    assert not (run_dir / "deadline").exists()
