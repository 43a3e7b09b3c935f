"""Every command that takes --model reads the model catalog: a user's own preset works in plan,
config render and dataset build/lint alike, and --base-model defaults to the preset's
[files.base] (no list of model names in the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomlkit

from kohyawrap.dataset.example import make_example_photos
from tests.fixtures.cli import run_cli

PONY = """\
extends = "sdxl"

[model]
title = "小马 XL (a community SDXL base)"

[files.base]
repo = "某人/pony-xl-v6"  # the user's own base, a Diffusers repo
file = ""
"""


def base_model_in(run_dir: Path) -> str:
    config = tomlkit.parse((run_dir / "training_config.toml").read_text("utf-8")).unwrap()
    return str(config["model"]["pretrained_model_name_or_path"])


@pytest.fixture
def user_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    models = tmp_path / "config" / "presets" / "models"
    models.mkdir(parents=True)
    (models / "pony_xl.toml").write_text(PONY, encoding="utf-8")
    monkeypatch.setenv("KOHYAWRAP_CONFIG_DIR", str(tmp_path / "config"))
    return "pony_xl"


def test_a_user_model_preset_works_in_every_command(
    user_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = make_example_photos(tmp_path / "照片")
    data = tmp_path / "data"
    code, out = run_cli(["dataset", "build", str(photos), "--trigger", "zkw", "--model", user_model,
                         "--gpu", "rtx4090", "-o", str(data), "--json"], capsys)  # fmt: skip
    assert code == 0, out
    built = json.loads(out)["lint"]
    code, out = run_cli(["dataset", "lint", str(data), "--model", user_model, "--gpu", "rtx4090",
                         "--json"], capsys)  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["total_steps"] == built["total_steps"]
    code, out = run_cli(["plan", "--gpu", "rtx4090", "--model", user_model, "--dataset",
                         str(data), "--json"], capsys)  # fmt: skip
    assert code == 0, out
    plan = json.loads(out)
    assert plan["model"] == user_model and plan["script"] == "sdxl_train_network.py"
    assert plan["steps"]["total_steps"] == built["total_steps"]
    code, out = run_cli(["config", "render", "--gpu", "rtx4090", "--model", user_model,
                         "--dataset", str(data), "-o", str(tmp_path / "run")], capsys)  # fmt: skip
    assert code == 0, out
    assert base_model_in(tmp_path / "run") == "某人/pony-xl-v6"


@pytest.mark.parametrize(
    ("model", "repo"),
    [
        ("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),  # runwayml's was deleted
        ("sd2", "stabilityai/stable-diffusion-2-1"),
        ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
    ],
)
def test_base_model_defaults_to_the_presets(
    model: str, repo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(["config", "render", "--gpu", "rtx4090", "--model", model, "--dataset",
                         str(tmp_path / "data"), "-o", str(tmp_path / "run")], capsys)  # fmt: skip
    assert code == 0, out
    assert base_model_in(tmp_path / "run") == repo
    code, out = run_cli(["presets", "list", "--json"], capsys)
    assert json.loads(out)["models"][model]["base_model"] == repo


def test_a_preset_names_its_base_model_in_one_place(tmp_path: Path) -> None:
    from kohyawrap.errors import ConfigError
    from kohyawrap.presets import load_catalog

    models = tmp_path / "presets" / "models"
    models.mkdir(parents=True)
    # Another repo in [files.base] does not keep the parent's file name (a file is named whole).
    (models / "mine.toml").write_text(
        'extends = "sdxl"\n[files.base]\nrepo = "me/my-xl"\nfile = "my.safetensors"\n'
    )
    mine = load_catalog(user_dir=tmp_path / "presets").model("mine")
    assert (mine.base_model, mine.files["base"].file, mine.files["base"].gated) == (
        "me/my-xl",
        "my.safetensors",
        False,
    )
    for name, text, message in (
        ("half", '[files.base]\nrepo = "me/my-xl"\n', "'file' is missing"),
        ("old", '[model]\nbase_model = "me/x"\n', r"\[model\] base_model is now \[files.base\]"),
        ("flux", '[files.base]\nrepo = "me/f"\nfile = ""\n', "only works for an SD base model"),
    ):
        folder = tmp_path / name / "models"
        folder.mkdir(parents=True)
        parent = "flux-dev" if name == "flux" else "sdxl"
        (folder / f"{name}.toml").write_text(f'extends = "{parent}"\n{text}', encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            load_catalog(user_dir=tmp_path / name)


def test_cli_modules_name_no_model_presets() -> None:
    # Model choices come from the catalog; a hard-coded list would refuse a user's own preset.
    for name in ("config.py", "plan.py", "dataset.py", "presets.py", "demo.py"):
        text = (Path(__file__).resolve().parent.parent / "kohyawrap" / "cli" / name).read_text()
        assert 'click.Choice(["sd15"' not in text and "DEFAULT_BASE_MODELS" not in text, name
