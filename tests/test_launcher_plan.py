"""Pure parts of the launcher: run ids, remote layout, model sources, dataset hashing, specs."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from kohyawrap.errors import UsageError
from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.layout import RUN_ID, RemoteLayout, make_run_id, slug, venv_fingerprint
from kohyawrap.launcher.request import (
    dataset_files,
    dataset_hash,
    expand_work_dir,
    with_host_paths,
)
from kohyawrap.launcher.runplan import spec_from_json, spec_to_json
from kohyawrap.models import RunSpec
from kohyawrap.models_fetch import BASE_KEY, fetch_plan
from kohyawrap.presets import load_catalog

SDXL = load_catalog(user_dir=Path("/nonexistent-kohyawrap-user-dir")).model("sdxl")


def base_file(text: str):
    return fetch_plan(SDXL, {BASE_KEY: text}, "/w/models")[0]


NOW = datetime(2026, 11, 28, 10, 15, 0, tzinfo=timezone.utc)


def test_run_id_is_sortable_safe_and_unique_per_inputs() -> None:
    a = make_run_id("my lora $(x)", NOW, "inputs-1")
    b = make_run_id("my lora $(x)", NOW, "inputs-2")
    assert a.startswith("20261128-101500-my-lora-x-")
    assert RUN_ID.match(a)
    assert a != b
    assert make_run_id("my lora $(x)", NOW, "inputs-1") == a


def test_slug_keeps_only_safe_characters() -> None:
    assert slug('10_sks dog\'s "best" $(rm -rf /)') == "10_sks-dog-s-best-rm--rf"
    assert slug("...") == "x"


def test_layout_paths() -> None:
    layout = RemoteLayout("/root/kohyawrap", "RID")
    assert layout.run_dir == "/root/kohyawrap/runs/RID"
    assert (
        layout.in_run("config", "training_config.toml")
        == "/root/kohyawrap/runs/RID/config/training_config.toml"
    )
    assert layout.sd_scripts("abc") == "/root/kohyawrap/sd-scripts/abc"
    assert layout.tokenizers == "/root/kohyawrap/models/tokenizers"


def test_fingerprint_changes_with_each_input() -> None:
    base = venv_fingerprint("c1", "r1", "torch==2.6.0", "python3")
    assert base == venv_fingerprint("c1", "r1", "torch==2.6.0", "python3")
    others = {
        venv_fingerprint("c2", "r1", "torch==2.6.0", "python3"),
        venv_fingerprint("c1", "r2", "torch==2.6.0", "python3"),
        venv_fingerprint("c1", "r1", "skip", "python3"),
        venv_fingerprint("c1", "r1", "torch==2.6.0", "python3.11"),
    }
    assert base not in others and len(others) == 4


@pytest.mark.parametrize(
    ("work", "expected"),
    [
        ("~/kohyawrap", "/home/u/kohyawrap"),
        ("~", "/home/u/"),
        ("data/kw", "/home/u/data/kw"),
        ("/w", "/w"),
    ],
)
def test_expand_work_dir(work: str, expected: str) -> None:
    assert expand_work_dir(work, "/home/u") == expected


def test_base_model_kinds_keep_the_host_cache_names_of_earlier_releases(tmp_path: Path) -> None:
    # A host that already holds a base model fetched by kohyawrap 0.1 reuses it: same names.
    local = tmp_path / "my model.safetensors"
    local.write_bytes(b"weights")
    up = base_file(str(local))
    assert up.kind == "upload"
    assert up.local_sha256 == file_sha256(local)
    assert up.remote_path == f"/w/models/uploads/{up.local_sha256[:16]}-my-model.safetensors"
    hf = base_file("stabilityai/stable-diffusion-xl-base-1.0")
    assert (hf.kind, hf.filename) == ("hf", "sd_xl_base_1.0.safetensors")
    assert hf.remote_path == (
        "/w/models/hf-files/stabilityai--stable-diffusion-xl-base-1.0--sd_xl_base_1.0.safetensors"
    )
    whole = base_file("someone/diffusers-model")
    assert (
        whole.filename == "" and whole.remote_path == "/w/models/hf-files/someone--diffusers-model"
    )
    url = base_file("https://example.com/files/model.safetensors?download=1")
    assert url.kind == "url"
    assert url.remote_path == "/w/models/urls/b1c83491e6b5-model.safetensors"
    with pytest.raises(UsageError, match="no such file"):
        base_file("./missing.safetensors")


def test_dataset_files_and_hash(tmp_path: Path) -> None:
    concept = tmp_path / "10_sks dog"
    concept.mkdir()
    (concept / "a.png").write_bytes(b"png")
    (concept / "a.txt").write_text("sks dog")
    (tmp_path / ".hidden").write_text("x")
    files = dataset_files(tmp_path)
    assert sorted(files) == ["10_sks dog/a.png", "10_sks dog/a.txt"]
    first = dataset_hash(files)
    (concept / "a.txt").write_text("sks dog, sitting")
    assert dataset_hash(files) != first
    with pytest.raises(UsageError, match="does not exist"):
        dataset_files(tmp_path / "nope")


def test_spec_round_trips_through_json() -> None:
    spec = RunSpec(
        gpu="rtx4090",
        model="sdxl",
        base_model="m",
        output_name="n",
        overrides=(("network_dim", 16), ("optimizer_args", ["weight_decay=0.1"])),
    )
    assert spec_from_json(spec_to_json(spec)) == spec


def test_host_paths_point_inside_the_run_folder() -> None:
    spec = RunSpec(
        gpu="rtx4090",
        model="sd15",
        base_model="./local.safetensors",
        output_name="n",
        train_data_dir="/laptop/data",
    )
    files = fetch_plan(
        load_catalog().model("flux-dev"), {BASE_KEY: "acme/flux/f.safetensors"}, "/w/models"
    )
    host = with_host_paths(spec, files, RemoteLayout("/w", "RID"))
    assert (host.train_data_dir, host.output_dir, host.logging_dir) == ("dataset", "output", "logs")
    assert host.base_model == "/w/models/hf-files/acme--flux--f.safetensors"
    assert [key for key, _ in host.companions] == ["clip_l", "t5xxl", "ae"]
    assert all(path.startswith("/w/models/hf-files/") for _, path in host.companions)
    assert host.tokenizer_cache_dir == "/w/models/tokenizers"


def test_preflight_refuses_a_small_disk_with_numbers(tmp_path: Path) -> None:
    import dataclasses

    from kohyawrap.errors import HostError
    from kohyawrap.hosts.facts import read_facts
    from kohyawrap.hosts.local import LocalHost
    from kohyawrap.launcher.report import SilentReporter
    from kohyawrap.launcher.request import TrainRequest, build_run_plan, disk_needed_gb
    from kohyawrap.launcher.setup import preflight

    concept = tmp_path / "data" / "5_sks dog"
    concept.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (512, 512), (9, 9, 9)).save(concept / "a.png")
    (concept / "a.txt").write_text("sks dog\n")
    spec = RunSpec(
        gpu="rtx4090",
        model="sdxl",
        base_model="stabilityai/stable-diffusion-xl-base-1.0",
        output_name="n",
    )
    host = LocalHost()
    plan = build_run_plan(
        TrainRequest(spec=spec, dataset=tmp_path / "data", work_dir=str(tmp_path / "w")),
        target="local",
        home=host.home(),
        now=NOW,
    )
    need = disk_needed_gb(plan, absent=plan.model_files, venv_present=False)
    assert 15.9 < need < 16.0  # SDXL 6.94 + venv 6 + outputs and states 3 + a tiny dataset
    assert disk_needed_gb(plan, absent=(), venv_present=True) < 3.1
    facts = dataclasses.replace(
        read_facts(host, str(tmp_path / "w")), disk_free_bytes=2 * 10**9, gpus=()
    )
    with pytest.raises(HostError, match="no NVIDIA GPU"):
        preflight(host, plan, facts, SilentReporter(), force=False)
    with pytest.raises(HostError, match=r"2\.0 GB free .* about 15\.9 GB needed"):
        preflight(host, plan, facts, SilentReporter(), force=True)


def test_regularisation_images_reach_the_config(tmp_path: Path) -> None:
    from PIL import Image

    from kohyawrap.launcher.request import TrainRequest, build_run_plan

    for folder, caption in (("data/10_sks dog", "sks dog"), ("data/reg/1_dog", "dog")):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (512, 512), (9, 9, 9)).save(tmp_path / folder / "a.png")
        (tmp_path / folder / "a.txt").write_text(caption + "\n")
    spec = RunSpec(gpu="rtx4090", model="sd15", base_model="", output_name="n")
    plan = build_run_plan(
        TrainRequest(spec=spec, dataset=tmp_path / "data"), target="local", home="/h", now=NOW
    )
    assert plan.spec.reg_data_dir == "dataset/reg"
    assert 'reg_data_dir = "dataset/reg"' in plan.rendered.files["training_config.toml"]
    assert "reg/1_dog/a.png" in plan.dataset_files


def _default_checkout(launch_sh: str, home: str = "/home/u") -> str:
    """What launch.sh's SD_SCRIPTS is when the caller sets none (bash evaluates that line)."""
    import subprocess

    line = next(ln for ln in launch_sh.splitlines() if ln.startswith("SD_SCRIPTS="))
    result = subprocess.run(
        ["bash", "-c", f'unset SD_SCRIPTS; {line}; printf %s "$SD_SCRIPTS"'],
        capture_output=True,
        text=True,
        env={"HOME": home, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return result.stdout


@pytest.mark.parametrize(
    ("work_dir", "sd_scripts_path"),
    [("~/kohyawrap", ""), ("/srv/训练 $(touch pwned)/work", ""), ("/w", "/opt/my sd-scripts")],
)
def test_launch_sh_runs_the_runs_own_checkout(
    tmp_path: Path, work_dir: str, sd_scripts_path: str
) -> None:
    from dataclasses import replace

    from PIL import Image

    from kohyawrap.launcher.request import TrainRequest, build_run_plan, expand_work_dir
    from kohyawrap.launcher.runplan import SetupOptions

    (tmp_path / "data" / "10_sks dog").mkdir(parents=True)
    Image.new("RGB", (512, 512), (9, 9, 9)).save(tmp_path / "data" / "10_sks dog" / "a.png")
    spec = RunSpec(
        gpu="rtx4090", model="sd15", base_model="runwayml/stable-diffusion-v1-5", output_name="n"
    )
    ref = "0123456789abcdef0123456789abcdef01234567"
    setup = replace(SetupOptions(), ref=ref, sd_scripts_path=sd_scripts_path)
    request = TrainRequest(spec=spec, dataset=tmp_path / "data", work_dir=work_dir, setup=setup)
    plan = build_run_plan(request, target="gpu-box", home="/root", now=NOW)
    want = sd_scripts_path or f"{expand_work_dir(work_dir, '/root')}/sd-scripts/{ref}"
    assert _default_checkout(plan.rendered.files["launch.sh"]) == want
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    from kohyawrap.render import render_run

    default = render_run(plan.spec).files["launch.sh"].splitlines()
    ours = plan.rendered.files["launch.sh"].splitlines()
    assert [i for i, (a, b) in enumerate(zip(default, ours, strict=True)) if a != b] == [
        next(i for i, line in enumerate(ours) if line.startswith("SD_SCRIPTS="))
    ], "only the checkout line differs from a plain render"


def test_the_estimate_knows_which_installer_will_run() -> None:
    from dataclasses import replace

    from kohyawrap.hosts.facts import HostFacts
    from kohyawrap.launcher.request import expected_installer
    from kohyawrap.launcher.runplan import SetupOptions

    auto = SetupOptions()
    facts = HostFacts.from_json({"uv_version": "0.9.5"})
    bare = HostFacts.from_json({"uv_version": None})
    assert expected_installer(auto, facts) == "uv"
    assert expected_installer(auto, bare) == "pip"
    assert expected_installer(auto, None) == "pip"
    assert expected_installer(replace(auto, installer="pip"), facts) == "pip"
    assert expected_installer(replace(auto, installer="uv"), bare) == "uv"
