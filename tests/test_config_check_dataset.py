"""`config check` looks at the dataset the config names (issue #7): a caption_extension that
matches none of the caption files trains silently without captions. sd-scripts resolves a relative
train_data_dir against the folder it runs in (it opens paths as given), so that is where it is
looked for first; the config's own folder second (kohyawrap's launch.sh runs from there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.cli import run_cli
from tests.fixtures.images import write_jpeg

CONFIG = """\
pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"
train_data_dir = "{data}"
resolution = "512"
network_module = "networks.lora"
max_train_epochs = 10
{extension}
"""


def _dataset(root: Path, caption_ext: str, n: int = 3) -> Path:
    for i in range(n):
        write_jpeg(root / "10_sks dog" / f"{i}.jpg", (512, 512), seed=i)
        (root / "10_sks dog" / f"{i}{caption_ext}").write_text("sks dog, grass\n", encoding="utf-8")
    return root


def _config(path: Path, data: str, extension: str | None) -> Path:
    line = f'caption_extension = "{extension}"' if extension else ""
    path.write_text(CONFIG.format(data=data, extension=line), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("configured", "present"), [(".caption", ".txt"), (".txt", ".caption"), (None, ".txt")]
)
def test_a_caption_extension_that_matches_no_caption_is_an_error(
    configured: str | None, present: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path / "data", present)
    config = _config(tmp_path / "c.toml", str(data), configured)
    code, out = run_cli(["config", "check", str(config), "--json"], capsys)
    assert code == 2
    assert '"caption-mismatch"' in out and present in out and "3 of 3" in out


def test_matching_captions_are_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _dataset(tmp_path / "data", ".txt")
    config = _config(tmp_path / "c.toml", str(data), ".txt")
    code, out = run_cli(["config", "check", str(config)], capsys)
    assert code == 0, out
    assert "caption-mismatch" not in out


def test_relative_paths_are_read_from_the_current_folder_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _dataset(tmp_path / "here" / "data", ".txt")  # where sd-scripts, started here, looks
    _dataset(tmp_path / "cfg" / "data", ".caption")  # beside the config
    config = _config(tmp_path / "cfg" / "c.toml", "data", ".txt")
    monkeypatch.chdir(tmp_path / "here")
    code, out = run_cli(["config", "check", str(config), "--json"], capsys)
    assert code == 0 and "caption-mismatch" not in out, out


def test_beside_the_config_only_is_checked_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _dataset(tmp_path / "cfg" / "data", ".caption")
    config = _config(tmp_path / "cfg" / "c.toml", "data", ".txt")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out = run_cli(["config", "check", str(config), "--json"], capsys)
    assert code == 2 and "caption-mismatch" in out
    assert "dataset-relative" in out  # found beside the config, not where sd-scripts looks


def test_a_dataset_that_is_not_there_is_a_note(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path / "c.toml", "nowhere", ".txt")
    code, out = run_cli(["config", "check", str(config), "--json"], capsys)
    assert code == 0 and "dataset-not-found" in out


def test_a_dataset_without_concept_folders_is_an_error(tmp_path: Path, capsys) -> None:
    write_jpeg(tmp_path / "flat" / "a.jpg")
    config = _config(tmp_path / "c.toml", str(tmp_path / "flat"), ".txt")
    code, out = run_cli(["config", "check", str(config), "--json"], capsys)
    assert code == 2 and "no concept folder" in out


def test_a_dataset_config_is_read_bounded_and_its_subsets_checked(tmp_path: Path, capsys) -> None:
    data = _dataset(tmp_path / "data", ".txt")
    dc = tmp_path / "dataset_config.toml"
    dc.write_text(
        '[general]\ncaption_extension = ".caption"\nresolution = 512\n'
        f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{data / "10_sks dog"}"\n'
        "num_repeats = 10\n",
        encoding="utf-8",
    )
    config = tmp_path / "c.toml"
    config.write_text(
        'pretrained_model_name_or_path = "m"\nnetwork_module = "networks.lora"\n'
        f'max_train_epochs = 5\ndataset_config = "{dc}"\n',
        encoding="utf-8",
    )
    code, out = run_cli(["config", "check", str(config), "--json"], capsys)
    assert code == 2 and "caption-mismatch" in out and ".txt" in out
    dc.write_text("[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 1\n", encoding="utf-8")
    code, out = run_cli(["config", "check", str(config), "--json"], capsys)
    assert code == 2 and "image_dir" in out  # the schema check of sd-scripts' own validator
