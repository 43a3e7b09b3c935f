"""``kohyawrap presets list/show`` through the CLI, with a user preset dir from the environment."""

from __future__ import annotations

import json

from tests.fixtures.cli import run_cli


def run(args: list[str], capsys) -> tuple[int, str]:
    return run_cli(args, capsys)


def test_list_json_has_every_preset(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KOHYAWRAP_CONFIG_DIR", str(tmp_path))
    code, text = run(["presets", "list", "--json"], capsys)
    data = json.loads(text)
    assert code == 0 and len(data["gpus"]) == 11
    assert set(data["models"]) == {
        *("sd15", "sd2", "sdxl", "flux-dev", "flux-schnell", "chroma", "sd35-large", "sd35-medium")
    }
    assert data["models"]["sdxl"]["script"] == "sdxl_train_network.py"
    flux = data["models"]["flux-dev"]
    assert (flux["family"], flux["script"], flux["network_module"]) == (
        "flux",
        "flux_train_network.py",
        "networks.lora_flux",
    )
    assert flux["companions"] == ["clip_l", "t5xxl", "ae"]
    assert data["models"]["chroma"]["companions"] == ["t5xxl", "ae"]
    assert data["models"]["sd35-large"]["script"] == "sd3_train_network.py"
    assert data["gpus"]["rtx4090"]["speed"]["flux"]["s_per_image"] > 0
    assert data["gpus"]["rtx4090"]["speed"]["sdxl"]["s_per_image"] > 0


def test_user_presets_from_the_config_dir(capsys, monkeypatch, tmp_path):
    gpus = tmp_path / "presets" / "gpus"
    gpus.mkdir(parents=True)
    (gpus / "t4.toml").write_text(
        'extends = "rtx4060ti-16gb"\n[gpu]\ntitle = "NVIDIA T4"\nbf16 = false  # Turing\n'
    )
    monkeypatch.setenv("KOHYAWRAP_CONFIG_DIR", str(tmp_path))
    code, text = run(["presets", "list"], capsys)
    assert code == 0 and "NVIDIA T4" in text
    code, text = run(["presets", "show", "t4", "--model", "sdxl", "--json"], capsys)
    data = json.loads(text)
    settings = {s["key"]: s for s in data["settings"]}
    assert (
        settings["mixed_precision"]["value"] == "fp16" and settings["no_half_vae"]["value"] is True
    )


def test_show_explains_each_value(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KOHYAWRAP_CONFIG_DIR", str(tmp_path))
    code, text = run(
        ["presets", "show", "rtx4090", "--model", "sdxl", "--set", "network_dim=8"], capsys
    )
    assert code == 0
    for needle in (
        "tier sdxl >= 24 GB",
        "--set",
        "kohya_ss #1288 [23]",
        "docs/sources.md",
        "sdxl_train_network.py",
    ):
        assert needle in text, needle
    code, text = run(["presets", "show", "rtx4090", "--model", "sdxx"], capsys)
    assert code == 2 and "sdxl" in text
    code, text = run(["presets", "show", "rtx4090", "--model", "flux-devv"], capsys)
    assert code == 2 and "flux-dev" in text


def test_list_shows_the_new_families(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KOHYAWRAP_CONFIG_DIR", str(tmp_path))
    code, text = run(["presets", "list"], capsys)
    assert code == 0
    for needle in (
        "FLUX.1 [dev]",
        "FLUX.1 [schnell]",
        "Chroma1-Base",
        "flux_train_network.py",
        "Stable Diffusion 3.5 Large",
        "sd3_train_network.py",
        "clip_l, clip_g, t5xxl",
    ):
        assert needle in text, needle


def test_show_flux_explains_its_tier_with_the_sd_scripts_doc(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KOHYAWRAP_CONFIG_DIR", str(tmp_path))
    code, text = run(["presets", "show", "rtx3060-12gb", "--model", "flux-dev", "--json"], capsys)
    settings = {s["key"]: s for s in json.loads(text)["settings"]}
    assert code == 0
    assert settings["blocks_to_swap"]["value"] == 16
    assert settings["blocks_to_swap"]["origin"] == "tier flux >= 12 GB"
    assert "the FLUX.1 guide's 12 GB row [45]" in settings["blocks_to_swap"]["source"]
    assert settings["guidance_scale"]["value"] == 1.0 and "split_mode" not in settings
