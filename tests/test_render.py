"""Rendering: golden files for every GPU x model, the facts each must hold, determinism, overrides,
dataset configs and a launch.sh that really runs (with a stand-in for accelerate)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import tomlkit

from kohyawrap.dataset.scan import read_training_dir
from kohyawrap.errors import ConfigError, UsageError
from kohyawrap.models import RunSpec
from kohyawrap.presets import load_catalog
from kohyawrap.render import render_run
from kohyawrap.validate import check_dataset_config, check_settings
from tests.fixtures.images import write_jpeg, write_png

GOLDEN = Path(__file__).parent / "golden" / "render"
UPDATE = os.environ.get("KOHYAWRAP_UPDATE_GOLDEN") == "1"
CATALOG = load_catalog(user_dir=Path("/nonexistent-kohyawrap-user-dir"))
GPUS = sorted(CATALOG.gpus)
MODELS = ("sd15", "sd2", "sdxl")
BASE = {"sd15": "runwayml/stable-diffusion-v1-5", "sd2": "stabilityai/stable-diffusion-2-1",
        "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}  # fmt: skip


def spec_for(gpu: str, model: str, **kw) -> RunSpec:
    return RunSpec(gpu=gpu, model=model, base_model=BASE[model], output_name="my_lora", **kw)


def joined(files: dict[str, str]) -> str:
    return "".join(f"===== {name}\n{text}" for name, text in sorted(files.items()))


def assert_golden(name: str, files: dict[str, str]) -> None:
    path = GOLDEN / f"{name}.txt"
    text = joined(files)
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), (
        f"no golden file {path}; run with KOHYAWRAP_UPDATE_GOLDEN=1 and review it"
    )
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("gpu", GPUS)
def test_every_preset_renders_its_golden_files_and_key_facts(gpu, model):
    rendered = render_run(spec_for(gpu, model), catalog=CATALOG)
    assert_golden(f"{gpu}-{model}", rendered.files)
    config = tomlkit.parse(rendered.files["training_config.toml"]).unwrap()
    flat = {k: v for section in config.values() for k, v in section.items()}
    assert flat == rendered.settings
    assert isinstance(flat["train_batch_size"], int) and flat["train_batch_size"] >= 1
    assert isinstance(flat["resolution"], str)
    assert flat["network_module"] == "networks.lora"
    assert flat["caption_extension"] == ".txt"
    assert flat["train_data_dir"] == "dataset" and "batch_size" not in flat
    assert rendered.script == ("sdxl_train_network.py" if model == "sdxl" else "train_network.py")
    assert (flat.get("v2"), flat.get("v_parameterization")) == (
        (True, True) if model == "sd2" else (None, None)
    )
    assert flat["mixed_precision"] == "bf16"  # every shipped card is Ampere or newer
    assert [f for f in check_settings(flat, script=rendered.script) if f.severity == "error"] == []
    args = rendered.accelerate_args
    assert args[args.index("--mixed_precision") + 1] == flat["mixed_precision"]
    assert "--cpu" not in args and args[args.index("--num_processes") + 1] == "1"
    assert "--config_file training_config.toml" in rendered.files["launch.sh"]
    assert rendered.inputs_hash in rendered.files["training_config.toml"].splitlines()[2]


def test_launch_script_runs_the_exact_accelerate_line(tmp_path):
    rendered = render_run(spec_for("rtx4090", "sdxl"), catalog=CATALOG)
    run = tmp_path / "run dir"
    run.mkdir()
    (run / "launch.sh").write_text(rendered.files["launch.sh"])
    fake = tmp_path / "fake accelerate"
    fake.write_text('#!/bin/sh\npwd > called.txt\nprintf "%s\\n" "$@" >> called.txt\n')
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "SD_SCRIPTS": "/opt/sd scripts", "ACCELERATE": str(fake)}
    subprocess.run(["bash", str(run / "launch.sh")], cwd=tmp_path, env=env, check=True, timeout=30)
    lines = (run / "called.txt").read_text().splitlines()
    assert lines[0] == str(run)  # it ran from its own folder
    assert lines[1:] == [
        "launch", *rendered.accelerate_args,
        "/opt/sd scripts/sdxl_train_network.py", "--config_file", "training_config.toml",
    ]  # fmt: skip
    assert rendered.accelerate_args == (
        "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
        "--dynamo_backend", "no", "--num_cpu_threads_per_process", "2",
    )  # fmt: skip


def test_rendering_is_deterministic_and_hashes_its_inputs():
    spec = spec_for("rtx3090", "sd15", overrides=(("network_dim", 32),))
    first, second = render_run(spec, catalog=CATALOG), render_run(spec, catalog=CATALOG)
    assert first.files == second.files and first.inputs_hash == second.inputs_hash
    other = render_run(replace(spec, overrides=(("network_dim", 8),)), catalog=CATALOG)
    assert other.inputs_hash != first.inputs_hash


def test_overrides_are_written_with_their_origin_and_validated():
    rendered = render_run(
        spec_for("rtx4090", "sd15", overrides=(("network_dim", 64), ("seed", 7))), catalog=CATALOG
    )
    assert "network_dim = 64  # --set" in rendered.files["training_config.toml"]
    assert rendered.settings["seed"] == 7
    with pytest.raises(ConfigError) as err:
        render_run(spec_for("rtx4090", "sd15", overrides=(("batch_size", 8),)), catalog=CATALOG)
    text = str(err.value)
    assert "batch_size (from --set)" in text and "train_batch_size" in text
    with pytest.raises(ConfigError) as err:
        render_run(
            spec_for("rtx4090", "sdxl", overrides=(("network_train_unet_only", False),)),
            catalog=CATALOG,
        )
    assert "network_train_unet_only = true" in str(err.value)


def test_paths_and_names_are_written_as_given_and_escaped():
    spec = spec_for("rtx4090", "sd15", train_data_dir="../my data/$(rm -rf x)", reg_data_dir="reg",
                    tokenizer_cache_dir="/models/tokenizers")  # fmt: skip
    spec = replace(spec, output_name='my "lora"\\x')
    rendered = render_run(spec, catalog=CATALOG)
    assert rendered.settings["train_data_dir"] == "../my data/$(rm -rf x)"
    assert rendered.settings["output_name"] == 'my "lora"\\x'
    assert rendered.settings["reg_data_dir"] == "reg"
    assert rendered.settings["tokenizer_cache_dir"] == "/models/tokenizers"


def test_smoke_run_is_cpu_sized():
    rendered = render_run(spec_for("rtx4090", "sdxl", smoke=True), catalog=CATALOG)
    s = rendered.settings
    assert (
        rendered.accelerate_args[0] == "--cpu" and "--mixed_precision" in rendered.accelerate_args
    )
    assert (s["mixed_precision"], s["optimizer_type"], s["resolution"], s["max_train_steps"]) == (
        "no",
        "AdamW",
        "128",
        4,
    )
    assert "sample_prompts.txt" not in rendered.files and "sample_prompts" not in s
    assert "max_train_epochs" not in s
    assert_golden("smoke-sdxl", rendered.files)


def test_user_card_without_bf16_refuses_bf16(tmp_path):
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    (gpus / "t4.toml").write_text('extends = "rtx4060ti-16gb"\n[gpu]\nbf16 = false  # Turing\n')
    catalog = load_catalog(user_dir=tmp_path)
    assert render_run(spec_for("t4", "sdxl"), catalog=catalog).settings["no_half_vae"] is True
    with pytest.raises(ConfigError) as err:
        render_run(
            spec_for("t4", "sdxl", overrides=(("mixed_precision", "bf16"),)), catalog=catalog
        )
    assert "bf16" in str(err.value)


def make_dataset(root: Path) -> Path:
    """Two concepts and a reg folder, real images: 3 square + 2 landscape, 2 portrait, 2 reg."""
    for i in range(3):
        write_jpeg(root / "10_sks dog" / f"sq{i}.jpg", (512, 512), seed=i)
        (root / "10_sks dog" / f"sq{i}.txt").write_text("sks dog, a photo")
    for i in range(2):
        write_png(root / "10_sks dog" / f"wide{i}.png", (768, 512), seed=10 + i)
    for i in range(2):
        write_jpeg(root / "5_zkw cat" / f"tall{i}.jpg", (512, 768), seed=20 + i)
    for i in range(2):
        write_jpeg(root / "reg" / "1_dog" / f"r{i}.jpg", (512, 512), seed=30 + i)
    return root


def test_dataset_config_lists_the_concept_folders(tmp_path):
    data = make_dataset(tmp_path / "data")
    tdir = read_training_dir(data, reg_dir=data / "reg")
    spec = spec_for(
        "rtx4090", "sd15", use_dataset_config=True, train_data_dir="data", reg_data_dir="data/reg"
    )
    rendered = render_run(spec, tdir=tdir, catalog=CATALOG)
    assert rendered.settings["dataset_config"] == "dataset_config.toml"
    assert "train_data_dir" not in rendered.settings and "resolution" not in rendered.settings
    doc = tomlkit.parse(rendered.files["dataset_config.toml"]).unwrap()
    assert check_dataset_config(doc) == ()
    assert doc["general"]["resolution"] == 512 and doc["general"]["batch_size"] == 4
    assert doc["general"]["caption_extension"] == ".txt"
    subsets = doc["datasets"][0]["subsets"]
    assert {
        (s["image_dir"], s["num_repeats"], s["class_tokens"], s.get("is_reg", False))
        for s in subsets
    } == {
        ("data/10_sks dog", 10, "sks dog", False),
        ("data/5_zkw cat", 5, "zkw cat", False),
        ("data/reg/1_dog", 1, "dog", True),
    }
    assert_golden("dataset-config-sd15", rendered.files)
    with pytest.raises(UsageError):
        render_run(spec, catalog=CATALOG)  # the dataset config needs the scanned folder


def test_sample_prompts_follow_the_resolution():
    rendered = render_run(
        spec_for("rtx4090", "sdxl", overrides=(("resolution", "1024,768"),)), catalog=CATALOG
    )
    lines = [
        ln for ln in rendered.files["sample_prompts.txt"].splitlines() if not ln.startswith("#")
    ]
    assert lines and all("--w 1024 --h 768" in ln for ln in lines)
    small = render_run(spec_for("rtx3060-12gb", "sdxl", vram_gb=8), catalog=CATALOG)
    assert "sample_prompts.txt" not in small.files  # the 8 GB tier skips sampling
