"""FLUX.1 and Chroma through the real CLI: `kohyawrap train --model flux-dev` over a real sshd on
loopback, every model file fetched on the host from the fake Hugging Face hub (the gated base with
the token on stdin) or uploaded from the laptop, trained by the fake flux_train_network.py,
checkpoints pulled and verified, then `pull` and `runs show`; a Chroma run on the same host finds
the shared files cached. And `train --dry-run --json`: the companion files' download, planned
before anything is contacted, and what can never work refused before renting."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.manifest import RunManifest, RunStatus
from kohyawrap.models_fetch import BASE_KEY
from kohyawrap.presets import load_catalog
from kohyawrap.safetensors_header import read_header
from tests.fixtures.fakesds import FakeSdScripts
from tests.fixtures.hub import FakeHub
from tests.fixtures.runs import Env, kohyawrap, manifest_of, ssh_args
from tests.fixtures.sshd import Sshd, running_sshd

# A tiny but valid .safetensors file: an 8-byte header length, then an empty JSON header.
SAFETENSORS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
TOKEN = "hf_" + "Fl0xD3vT0k3n" * 3
CATALOG = load_catalog(user_dir=Path("/nonexistent-kohyawrap-user-dir"))


def serve_presets(hub: FakeHub, *models: str) -> dict[str, bytes]:
    """Put every default file of ``models`` on the fake hub, each with its own bytes; the base
    repos the presets call gated answer 401 without a token, as the real hub does."""
    served: dict[str, bytes] = {}
    for model in models:
        for key, default in CATALOG.model(model).files.items():
            name = f"{default.repo}/{default.file}"
            served[name] = hub.files[name] = SAFETENSORS + f"{model} {key}".encode()
            if default.gated:
                hub.gated.add(default.repo)
    return served


def flux_args(world: Env, sshd: Sshd, clone: Path, model: str, name: str) -> list[str]:
    return [
        "train", "--host", sshd.target, *ssh_args(sshd), "--gpu", "rtx4090", "--model", model,
        "--dataset", str(world.dataset), "--name", name,
        "--sd-scripts-path", str(clone), "--python", sys.executable,
        "--work-dir", str(world.work), "--runs-dir", str(world.runs), "--yes", "--poll", "0.2",
        "--force",  # no GPU here
        "--set", "max_train_epochs=2", "--set", "save_every_n_epochs=1",
        "--set", "train_batch_size=1",
    ]  # fmt: skip


def run_named(world: Env, name: str) -> Path:
    (run,) = [p for p in world.runs.iterdir() if p.is_dir() and name.split()[0] in p.name]
    return run


@pytest.fixture
def hub_sshd(fake_hub: FakeHub, tmp_path: Path) -> Iterator[Sshd]:
    """An sshd whose sessions reach the fake hub (the image sets HF_ENDPOINT, as a provider's
    might); the laptop's own environment does not."""
    hub_env = f"SetEnv HF_ENDPOINT={fake_hub.url} HF_HUB_DISABLE_TELEMETRY=1\n"
    with running_sshd(tmp_path / "sshd-hub", extra_config=hub_env) as sshd:
        yield sshd


@pytest.mark.slow
def test_flux_trains_over_ssh_with_every_file_fetched_then_chroma_shares_them(
    world: Env,
    fake_sdscripts: FakeSdScripts,
    fake_hub: FakeHub,
    hub_sshd: Sshd,
    token_watch: list[str],
) -> None:
    served = serve_presets(fake_hub, "flux-dev", "chroma")
    clone = fake_sdscripts.clone(world.root / "preinstalled sd-scripts")
    t5 = world.root / "文本编码器 t5xxl $(touch pwned).safetensors"  # the user's own file
    t5.write_bytes(SAFETENSORS + b"my own t5")
    args = [*flux_args(world, hub_sshd, clone, "flux-dev", "flux 小狗"), "--t5xxl", str(t5)]
    result = kohyawrap(world, *args, extra_env={"HF_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr

    run = run_named(world, "flux 小狗")
    m = assert_flux_run(run, "flux 小狗")
    files = {f.key: f for f in m.plan.model_files}
    assert list(files) == [BASE_KEY, "clip_l", "t5xxl", "ae"]
    assert m.files_how == {
        BASE_KEY: "downloaded", "clip_l": "downloaded", "t5xxl": "uploaded", "ae": "downloaded"
    }  # fmt: skip
    for key, f in files.items():  # each file is where the config says, with the right bytes
        expected = t5.read_bytes() if key == "t5xxl" else served[f"{f.source}/{f.filename}"]
        assert Path(f.remote_path).read_bytes() == expected, key
        assert m.plan.rendered.settings[key] == f.remote_path
    log = (run / "run.log").read_text(encoding="utf-8")
    for key in ("clip_l", "t5xxl", "ae"):
        assert f"Loading state dict from {files[key].remote_path}" in log
    # The token reached the hub (the base repo is gated) and nothing else.
    assert f"Bearer {TOKEN}" in fake_hub.auth_seen
    assert TOKEN not in result.stdout + result.stderr
    assert not [line for line in token_watch if TOKEN in line], "token seen in a process's argv"
    for path in [*world.work.rglob("*"), *world.runs.rglob("*"), *world.home.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert not list(world.root.rglob("pwned"))

    # Pull again: nothing is re-written. Then the report: the run and its model files.
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")}
    pulled = kohyawrap(world, "pull", run.name, "--runs-dir", str(world.runs), *ssh_args(hub_sshd))
    assert pulled.returncode == 0, pulled.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")} == before
    shown = kohyawrap(world, "runs", "show", run.name, "--runs-dir", str(world.runs))
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "flux-dev via flux_train_network.py" in text
    assert "black-forest-labs/FLUX.1-dev/flux1-dev.safetensors (23.8 GB, downloaded, gated" in text
    assert "comfyanonymous/flux_text_encoders/clip_l.safetensors (246.0 MB, downloaded)" in text
    assert "t5xxl $(touch pwned).safetensors (25 B, uploaded)" in text
    assert "finished" in text
    record = json.loads(
        kohyawrap(world, "runs", "show", run.name, "--runs-dir", str(world.runs), "--json").stdout
    )
    assert record["files_how"] == m.files_how
    assert [f["key"] for f in record["plan"]["model_files"]] == list(files)

    # Chroma on the same host: the FLUX.1 ae and T5-XXL of the presets are one cached copy each
    # (the first run took the user's T5, so the preset's is fetched now, once).
    chroma = flux_args(world, hub_sshd, clone, "chroma", "chroma 猫")
    result = kohyawrap(world, *chroma)  # no token: Chroma's files are not gated
    assert result.returncode == 0, result.stderr
    second = assert_flux_run(run_named(world, "chroma 猫"), "chroma 猫", version="chroma")
    assert second.files_how == {BASE_KEY: "downloaded", "t5xxl": "downloaded", "ae": "cached"}
    shared = {f.key: f.remote_path for f in second.plan.model_files}
    assert shared["ae"] == files["ae"].remote_path
    assert "warning" not in result.stderr  # nothing gated, no token needed


def assert_flux_run(run: Path, name: str, version: str = "flux1") -> RunManifest:
    m = manifest_of(run)
    assert m.status is RunStatus.FINISHED, (m.failure, m.error)
    assert m.plan.rendered.script == "flux_train_network.py"
    settings = m.plan.rendered.settings
    assert settings["network_module"] == "networks.lora_flux" and settings["fp8_base"] is True
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [f"{name}-000001.safetensors", f"{name}.safetensors"]
    for info in m.pulled.values():
        assert file_sha256(run / info.path) == info.sha256
    _, meta = read_header(run / "checkpoints" / f"{name}.safetensors")
    assert meta["ss_output_name"] == name
    assert meta["ss_base_model_version"] == version
    assert meta["ss_network_module"] == "networks.lora_flux"
    architecture = "flux-1-dev/lora" if version == "flux1" else "chroma/lora"
    assert meta["modelspec.architecture"] == architecture
    return m


# ---------------------------------------------------------------------------------------------
# Planned before anything is contacted


def test_dry_run_json_shows_the_companion_downloads(world: Env, tmp_path: Path) -> None:
    clip = world.root / "我的 clip_l.safetensors"
    clip.write_bytes(SAFETENSORS)
    args = [
        "train", "--host", "root@gpu.example", "--gpu", "rtx3090", "--model", "flux-dev",
        "--dataset", str(world.dataset), "--name", "flux 小狗", "--clip-l", str(clip),
        "--runs-dir", str(world.runs), "--dry-run", "--json",
    ]  # fmt: skip
    result = kohyawrap(world, *args)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    files = {f["key"]: f for f in plan["model_files"]}
    assert list(files) == [BASE_KEY, "clip_l", "t5xxl", "ae"]
    base, t5, ae = files[BASE_KEY], files["t5xxl"], files["ae"]
    assert (base["kind"], base["source"], base["filename"], base["gated"]) == (
        "hf", "black-forest-labs/FLUX.1-dev", "flux1-dev.safetensors", True
    )  # fmt: skip
    assert (t5["source"], t5["filename"], t5["size_gb"]) == (
        "comfyanonymous/flux_text_encoders", "t5xxl_fp16.safetensors", 9.79
    )  # fmt: skip
    assert (ae["source"], ae["filename"]) == ("black-forest-labs/FLUX.1-schnell", "ae.safetensors")
    assert files["clip_l"]["kind"] == "upload" and files["clip_l"]["source"] == str(clip)
    for key, f in files.items():  # the config names each file at its place in the host cache
        assert f["remote_path"].startswith("~/kohyawrap/models/")
        assert plan["settings"][key] == f["remote_path"]
    # The base repo is gated and no token was given: said before anything is rented.
    assert "black-forest-labs/FLUX.1-dev is gated" in " ".join(result.stderr.split())
    assert not world.runs.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "chroma", "--clip-l", "a/b/clip_l.safetensors"], "loads no --clip-l"),
        (["--model", "flux-dev", "--clip-g", "a/b/clip_g.safetensors"], "loads no --clip-g"),
        (["--model", "flux-dev", "--base-model", "black-forest-labs/FLUX.1-Krea"], "names a repo"),
        (["--model", "flux-dev", "--ae", "./models/ae.safetensors"], "no such file"),
        (["--model", "flux-dev", "--set", "t5xxl=/x.safetensors"], "use --t5xxl"),
        (["--model", "flux-deb"], "did you mean 'flux-dev'"),
    ],
)
def test_what_can_never_work_is_refused_before_connecting(
    world: Env, extra: list[str], message: str
) -> None:
    # The host does not exist: a refusal must come before any attempt to reach it.
    args = ["train", "--host", "root@192.0.2.1", "--gpu", "rtx4090", "--dataset",
            str(world.dataset), "--name", "x", "--runs-dir", str(world.runs), "--yes", *extra]  # fmt: skip
    result = kohyawrap(world, *args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not world.runs.exists()
