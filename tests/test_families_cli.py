"""The new families through the real CLI: config render -> config check, plan, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomlkit

from tests.fixtures.cli import run_cli
from tests.fixtures.images import write_jpeg

NEW = ("flux-dev", "flux-schnell", "chroma", "sd35-large", "sd35-medium")


def run(args: list[str], capsys) -> tuple[int, str]:
    return run_cli(args, capsys)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "训练 data"
    for i in range(2):
        write_jpeg(root / "10_sks 猫" / f"{i}.jpg", (1024, 1024), seed=i)
        (root / "10_sks 猫" / f"{i}.txt").write_text("sks 猫", encoding="utf-8")
    return root


@pytest.mark.parametrize("model", NEW)
def test_render_then_check_every_new_model(tmp_path, data, capsys, model):
    out = tmp_path / "out"
    code, text = run(["config", "render", "--gpu", "rtx4080-16gb", "--model", model,
                      "--dataset", str(data), "-o", str(out), "--json"], capsys)  # fmt: skip
    assert code == 0, text
    report = json.loads(text)
    config = out / "training_config.toml"
    flat = {k: v for s in tomlkit.parse(config.read_text()).unwrap().values() for k, v in s.items()}
    downloads = {d["option"]: d for d in report["downloads"]}
    for option, item in downloads.items():
        assert flat[option] == item["path"] and item["url"].startswith("https://huggingface.co/")
    code, text = run(["config", "check", str(config), "--model", model, "--gpu", "rtx4080-16gb"],
                     capsys)  # fmt: skip
    assert code == 0, text
    code, text = run(["config", "check", str(config), "--json"], capsys)
    assert code == 0 and json.loads(text)["errors"] == 0


def test_render_writes_companion_paths_relative_to_the_output(tmp_path, data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "te").mkdir()
    code, text = run(["config", "render", "--gpu", "rtx4090", "--model", "flux-dev",
                      "--dataset", str(data), "-o", "runs/flux",
                      "--t5xxl", "te/t5xxl_fp8_e4m3fn.safetensors",
                      "--ae", "/models/ae.safetensors", "--json"], capsys)  # fmt: skip
    assert code == 0, text
    config = tomlkit.parse((tmp_path / "runs/flux/training_config.toml").read_text()).unwrap()
    assert config["model"]["t5xxl"] == "../../te/t5xxl_fp8_e4m3fn.safetensors"
    assert config["model"]["ae"] == "/models/ae.safetensors"
    assert config["model"]["clip_l"] == "models/clip_l.safetensors"
    assert {d["option"] for d in json.loads(text)["downloads"]} == {
        "pretrained_model_name_or_path",
        "clip_l",
    }


def test_a_file_the_family_does_not_load_is_refused(tmp_path, data, capsys):
    code, text = run(["config", "render", "--gpu", "rtx4090", "--model", "chroma",
                      "--dataset", str(data), "-o", str(tmp_path / "o"),
                      "--clip-l", "x.safetensors"], capsys)  # fmt: skip
    assert code == 2 and "--clip-l" in text and "Traceback" not in text
    assert not (tmp_path / "o").exists()
    code, text = run(["config", "render", "--gpu", "rtx4090", "--model", "flux-deb",
                      "--dataset", str(data), "-o", str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 2 and "flux-dev" in text


def test_plan_gives_steps_and_cost_for_flux(data, capsys):
    code, text = run(["plan", "--gpu", "rtx3060-12gb", "--model", "flux-dev",
                      "--dataset", str(data), "--json"], capsys)  # fmt: skip
    assert code == 0, text
    plan = json.loads(text)
    assert plan["script"] == "flux_train_network.py"
    assert plan["steps"]["total_steps"] == 200 and plan["steps"]["batch_size"] == 1
    assert plan["estimate"]["fits"] and plan["estimate"]["dollars"] > 0
    assert plan["settings"]["blocks_to_swap"] == 16
    parts = {p["part"] for p in plan["vram_gb"]}
    assert "transformer weights" in parts
    assert any("estimate" in n for n in plan["estimate"]["notes"])
    code, text = run(["plan", "--gpu", "rtx4090", "--model", "sd35-medium",
                      "--dataset", str(data), "--compare"], capsys)  # fmt: skip
    assert code == 0 and "h100" in text and "sd3_train_network.py" in text


def test_check_guesses_flux_and_names_a_sd3_key(tmp_path, capsys):
    path = tmp_path / "flux.toml"
    path.write_text(
        '[model]\npretrained_model_name_or_path = "f.safetensors"\nclip_l = "c"\nt5xxl = "t"\n'
        'ae = "a"\n[x]\ntrain_data_dir = "d"\nresolution = "1024"\ncaption_extension = ".txt"\n'
        'network_module = "networks.lora_flux"\nmax_train_epochs = 1\nguidance_scale = 1.0\n'
        "clip_g_dropout_rate = 0.1\nsplit_mode = true\n"
    )
    code, text = run(["config", "check", str(path)], capsys)
    assert code == 2
    for needle in ("flux_train_network.py", "clip_g_dropout_rate", "sd3_train_network.py",
                   "split_mode", "blocks_to_swap"):  # fmt: skip
        assert needle in text, needle


def test_dataset_build_and_lint_take_the_new_models(tmp_path, capsys):
    photos = tmp_path / "照片"
    for i in range(4):
        write_jpeg(photos / f"{i}.jpg", (1200, 1000), seed=i)
    out = tmp_path / "data"
    code, text = run(["dataset", "build", str(photos), "--trigger", "sks 猫", "--class-word", "cat",
                      "--model", "flux-dev", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, text
    folders = [p.name for p in out.iterdir() if p.is_dir()]
    assert folders == ["25_sks 猫 cat"]  # 4 images x 25 = the SDXL-like 100 per epoch (estimate)
    code, text = run(["dataset", "lint", str(out), "--model", "sd35-large", "--json"], capsys)
    assert code == 0, text
