"""The remote shell scripts, rendered and run for real with bash on real git repos and venvs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kohyawrap.launcher.scripts import parse_kv, render_script
from kohyawrap.launcher.setup import HUB_SPEC
from kohyawrap.launcher.watchdog import script_text
from kohyawrap.models_fetch import BASE_KEY, FetchFile, script_values


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


def _venv_script(origin: Path, venv: Path, installer: str) -> str:
    return render_script(
        "venv",
        sds=str(origin),
        venv=str(venv),
        python=sys.executable,
        torch_spec="skip",
        xformers="no",
        fingerprint="abc",
        installer=installer,
    )


@pytest.mark.slow
def test_venv_is_built_once_and_fingerprinted(tmp_path: Path, origin: Path) -> None:
    venv = tmp_path / "venvs" / "abc"
    script = _venv_script(origin, venv, "pip")
    first = bash(script)
    assert first.returncode == 0, first.stderr
    info = parse_kv(first.stdout)
    assert info["venv"] == "fresh"
    assert info["installer"] == "pip"
    assert (venv / ".kohyawrap-ready").is_file()
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))
    again = parse_kv(bash(script).stdout)
    assert again["venv"] == "cached" and again["installer"] == "pip"


@pytest.mark.slow
def test_two_builds_of_one_venv_take_turns(tmp_path: Path, origin: Path) -> None:
    """After a dropped connection the first install may still run on the host when the retry
    starts: the second waits for the first and finds its environment ready."""
    venv = tmp_path / "venvs" / "abc"
    script = _venv_script(origin, venv, "pip")
    first = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, text=True)
    second = bash(script)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    states = sorted([parse_kv(out)["venv"], parse_kv(second.stdout)["venv"]])
    assert states == ["cached", "fresh"], "one built it, the other waited and found it ready"
    assert (venv / ".kohyawrap-ready").is_file()


def _local_only_package(tmp_path: Path) -> Path:
    """A wheel that exists only in a local folder: pip finds it through PIP_FIND_LINKS (pip's
    own configuration), uv does not read that and fails, as it does on hosts whose pip is set up
    for a private index. The wheel is written by hand (it is a zip with three metadata files)."""
    import base64
    import zipfile

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    files = {
        "kw_local_only/__init__.py": b"VALUE = 1\n",
        "kw_local_only-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: kw-local-only\nVersion: 1.0\n",
        "kw_local_only-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("kw_local_only-1.0.dist-info/RECORD,,")
    with zipfile.ZipFile(wheels / "kw_local_only-1.0-py3-none-any.whl", "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
        whl.writestr("kw_local_only-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheels


# uv comes with the dev tools (pyproject's dev extra), beside this interpreter.
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
needs_uv = pytest.mark.skipif(UV is None, reason="uv is not installed")


def _with_uv(env: dict[str, str]) -> dict[str, str]:
    assert UV is not None
    return {**env, "PATH": f"{Path(UV).parent}{os.pathsep}{env.get('PATH', '')}"}


@pytest.mark.slow
@needs_uv
def test_uv_failure_falls_back_to_pip_and_says_so(tmp_path: Path, origin: Path) -> None:
    wheels = _local_only_package(tmp_path)
    (origin / "requirements.txt").write_text("kw-local-only==1.0\n")
    env = _with_uv(
        {**os.environ, "PIP_FIND_LINKS": str(wheels), "PIP_NO_INDEX": "1", "UV_OFFLINE": "1"}
    )
    venv = tmp_path / "venvs" / "auto"
    result = bash(_venv_script(origin, venv, "auto"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    info = parse_kv(result.stdout)
    assert info["fallback"].startswith("uv failed")
    assert info["installer"] == "pip"
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import kw_local_only"], check=False
    )
    assert check.returncode == 0
    forced = bash(_venv_script(origin, tmp_path / "venvs" / "uv", "uv"), env=env)
    assert forced.returncode != 0, "--installer uv does not fall back"


@needs_uv
def test_uv_builds_the_venv_when_it_can(tmp_path: Path, origin: Path) -> None:
    venv = tmp_path / "venvs" / "uv"
    result = bash(_venv_script(origin, venv, "auto"), env=_with_uv(dict(os.environ)))
    assert result.returncode == 0, result.stderr
    assert parse_kv(result.stdout)["installer"] == "uv"
    assert not (venv / "bin" / "pip").exists(), (
        "a uv venv has no pip: packages are read another way"
    )


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


def _start(sds: Path, run_dir: Path, max_hours: float | None = None) -> None:
    wrapper = render_script(
        "run",
        run_dir=str(run_dir),
        sds=str(sds),
        python=sys.executable,
        hf_home=str(run_dir / "hf"),
        accelerate_args=["--num_processes", "1"],
        script=str(sds / "train_network.py"),
    )
    (run_dir / "run.sh").write_text(wrapper)
    # The watchdog run.sh starts beside the job (what launcher.watchdog.install uploads).
    (run_dir / "watchdog.py").write_bytes(script_text())
    (run_dir / "watchdog").mkdir(exist_ok=True)
    config = {"max_hours": max_hours, "poll_seconds": 0.1}
    (run_dir / "watchdog" / "config.json").write_text(json.dumps(config))
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


def test_files_script_takes_the_token_on_stdin_only(tmp_path: Path, fake_hub: object) -> None:
    from kohyawrap.models_fetch import FetchFile, script_values
    from tests.fixtures.hub import FakeHub

    assert isinstance(fake_hub, FakeHub)
    token = "hf_" + "S3cr3tT0k3n" * 3
    fake_hub.files["acme/tiny-sd/model.safetensors"] = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    fake_hub.gated.add("acme/tiny-sd")
    work = tmp_path / "work"
    work.mkdir()
    stale = work / ".hf-token-20261128-101500-old-123456"
    stale.write_text(token + "\n")  # what kohyawrap 0.1.0 could leave after a dropped connection
    dest = work / "models" / "hf-files" / "acme--tiny-sd--model.safetensors"
    base = FetchFile(
        "pretrained_model_name_or_path", "hf", "acme/tiny-sd", "model.safetensors", str(dest)
    )
    script = render_script(
        "files",
        **script_values(
            [base], python=sys.executable, hf_home=str(work / "models" / "hf"), work=str(work)
        ),
    )
    assert token not in script
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    result = subprocess.run(
        ["bash", "-c", script],
        input=token + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert parse_kv(result.stdout)["file.pretrained_model_name_or_path"] == "downloaded"
    assert dest.read_bytes() == fake_hub.files["acme/tiny-sd/model.safetensors"]
    assert f"Bearer {token}" in fake_hub.auth_seen
    assert token not in result.stdout + result.stderr
    assert not stale.exists(), "token files of earlier versions are swept"
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert token.encode() not in path.read_bytes(), path
    # Run again (as after a dropped connection): nothing fetched, the same answer.
    again = subprocess.run(
        ["bash", "-c", script], input="\n", capture_output=True, text=True, env=env, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert parse_kv(again.stdout)["file.pretrained_model_name_or_path"] == "cached"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs a system python3")
def test_model_script_brings_its_own_hub_when_python_has_none(
    tmp_path: Path, fake_hub: object
) -> None:
    """During set-up the base model downloads beside the install, before sd-scripts' venv
    exists: a python3 without huggingface_hub gets a small environment of its own, once."""
    from tests.fixtures.hub import FakeHub

    assert isinstance(fake_hub, FakeHub)
    bare = subprocess.run(["/usr/bin/python3", "-c", "import huggingface_hub"], check=False)
    if bare.returncode == 0:
        pytest.skip("this system python3 already has huggingface_hub")
    fake_hub.files["acme/tiny-sd/model.safetensors"] = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    work = tmp_path / "work"
    hub_env = work / "tools" / "hub-test"

    def script_for(dest: Path) -> str:
        wanted = FetchFile(BASE_KEY, "hf", "acme/tiny-sd", "model.safetensors", str(dest))
        values = script_values(
            [wanted], python="/usr/bin/python3", hf_home=str(work / "models" / "hf"), work=str(work)
        )
        return render_script("files", **values, hub_env=str(hub_env), hub_spec=HUB_SPEC)

    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    first = work / "models" / "a.safetensors"
    script = script_for(first)
    result = subprocess.run(
        ["bash", "-c", script], input="\n", capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"KW step={HUB_SPEC}" in result.stdout
    assert first.read_bytes() == fake_hub.files["acme/tiny-sd/model.safetensors"]
    version = subprocess.run(
        [str(hub_env / "bin/python"), "-c", "import huggingface_hub as h; print(h.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert HUB_SPEC.endswith("==" + version.stdout.strip())
    second = script_for(work / "models" / "b.safetensors")
    again = subprocess.run(
        ["bash", "-c", second], input="\n", capture_output=True, text=True, env=env, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert "KW step=" not in again.stdout, "the environment is built once per host"


def test_run_wrapper_starts_the_watchdog_which_holds_the_deadline(tmp_path: Path) -> None:
    sds, run_dir = _fake_launcher(tmp_path, "import time\ntime.sleep(60)\n")
    _start(sds, run_dir, max_hours=1 / 3600)
    assert _wait_exit_code(run_dir, timeout=20) == 143
    assert (run_dir / "deadline").read_text().strip() == "1"
    stop = json.loads((run_dir / "watchdog" / "stop.json").read_text())
    assert stop["reason"] == "deadline"


def test_a_quick_job_is_not_stopped_and_the_watchdog_ends_with_it(tmp_path: Path) -> None:
    sds, run_dir = _fake_launcher(tmp_path, "print('quick')\n")
    _start(sds, run_dir, max_hours=2 / 3600)
    assert _wait_exit_code(run_dir) == 0
    time.sleep(2.5)
    assert not (run_dir / "deadline").exists()
    assert (run_dir / "watchdog" / "log").read_text().rstrip().endswith("done")
