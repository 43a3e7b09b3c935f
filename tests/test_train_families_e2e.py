"""A fake FLUX.1 run end to end on this machine (LocalHost): the companion files fetched into the
host's shared model cache by files.sh from the fake hub (models_fetch's plan), the run trained by
the fake flux_train_network.py through the launcher, then `kohyawrap pull` and `runs show`.

`kohyawrap train --model flux-dev` itself waits for the launcher to take the companion files (the
lead wires models_fetch into it); until then the launcher is driven the way cli/train.py drives it.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kohyawrap.cli.train import conn_options, run_with_host
from kohyawrap.hosts.local import LocalHost
from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.request import TrainRequest
from kohyawrap.launcher.runplan import SetupOptions
from kohyawrap.launcher.scripts import parse_kv, render_script
from kohyawrap.models import RunSpec
from kohyawrap.models_fetch import BASE_KEY, config_paths, fetch_plan, script_values
from kohyawrap.presets import load_catalog
from kohyawrap.safetensors_header import read_header
from tests.fixtures.cli import run_cli
from tests.fixtures.fakesds import FakeSdScripts
from tests.fixtures.hub import FakeHub
from tests.fixtures.images import write_jpeg

SAFETENSORS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "


def test_fake_flux_run_trains_pulls_and_reports(
    tmp_path: Path,
    fake_sdscripts: FakeSdScripts,
    fake_hub: FakeHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    catalog = load_catalog(user_dir=tmp_path / "no-user-presets")
    flux = catalog.model("flux-dev")
    for key, default in flux.files.items():  # the preset's own default repos, served locally
        if key != "base":
            fake_hub.files[f"{default.repo}/{default.file}"] = SAFETENSORS + key.encode()
    root = tmp_path / "world 世界 $(touch pwned)"
    data = root / "data" / "10_sks 狗"
    for i in range(3):
        write_jpeg(data / f"照片 {i}.jpg", size=(96, 64), seed=i)
        (data / f"照片 {i}.txt").write_text(f"sks 狗, photo {i}\n", encoding="utf-8")
    base = root / "flux1-dev.safetensors"
    base.write_bytes(SAFETENSORS + b"base")
    work = root / "work"

    # 1. The files: base model uploaded by the launcher, companions fetched on the host.
    files = fetch_plan(flux, {BASE_KEY: str(base)}, str(work / "models"))
    companions_only = tuple(f for f in files if f.key != BASE_KEY)
    fetched = parse_kv(
        LocalHost()
        .run(
            render_script(
                "files",
                **script_values(
                    companions_only, python=sys.executable, hf_home=str(work / "models" / "hf")
                ),
            ),
            check=True,
        )
        .stdout
    )
    assert {fetched[f"file.{k}"] for k in ("clip_l", "t5xxl", "ae")} == {"downloaded"}
    _, companions = config_paths(files)

    # 2. Train through the launcher, as `kohyawrap train` does.
    spec = RunSpec(
        gpu="rtx4090",
        model="flux-dev",
        base_model=str(base),
        companions=companions,
        output_name="flux demo",  # ASCII: the launcher pulls only [A-Za-z0-9._ +-] names
        overrides=(("max_train_epochs", 2), ("save_every_n_epochs", 1), ("train_batch_size", 1)),
    )
    request = TrainRequest(
        spec=spec,
        dataset=root / "data",
        work_dir=str(work),
        setup=SetupOptions(repo=fake_sdscripts.url, ref=fake_sdscripts.head, torch_spec="skip"),
        force=True,  # no GPU here
    )
    runs = root / "runs"
    run_with_host(
        request,
        "local",
        datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc),
        conn_options(None, None, False, None, None),
        runs_dir=runs,
        token=None,
        yes=True,
        dry_run=False,
        as_json=False,
        poll=0.2,
    )
    run = next(p for p in runs.iterdir() if p.is_dir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished", manifest.get("failure")
    assert manifest["plan"]["script"] == "flux_train_network.py"
    settings = manifest["plan"]["settings"]
    assert [settings[k] for k in ("clip_l", "t5xxl", "ae")] == [p for _, p in companions]
    assert settings["network_module"] == "networks.lora_flux" and settings["fp8_base"] is True
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["flux demo-000001.safetensors", "flux demo.safetensors"]
    for info in manifest["checkpoints"].values():
        assert file_sha256(run / info["path"]) == info["sha256"]
    _, meta = read_header(run / "checkpoints" / "flux demo.safetensors")
    assert meta["ss_base_model_version"] == "flux1"
    assert meta["ss_network_module"] == "networks.lora_flux"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    log = (run / "run.log").read_text(encoding="utf-8")
    for _, path in companions:
        assert f"Loading state dict from {path}" in log

    # 3. Pull again (nothing re-written) and report.
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")}
    code, text = run_cli(["pull", run.name, "--runs-dir", str(runs)], capsys)
    assert code == 0, text
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")} == before
    code, text = run_cli(["runs", "show", run.name, "--runs-dir", str(runs)], capsys)
    assert code == 0, text
    shown = json.loads(text[: text.rindex("}") + 1])
    assert shown["status"] == "finished" and shown["plan"]["spec"]["model"] == "flux-dev"
    assert not list(tmp_path.rglob("pwned"))
