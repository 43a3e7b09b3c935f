"""Files a user points us at are read bounded: devices, pipes and huge files are refused, with the
file's name, before anything reads them (issue #7: `config check /dev/zero` ate 13 GB)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kohyawrap.dataset.scan import read_training_dir
from kohyawrap.errors import ConfigError
from kohyawrap.fileio import MAX_CAPTION_BYTES, MAX_TEXT_FILE_BYTES
from kohyawrap.presets import load_catalog
from kohyawrap.validate import MAX_CONFIG_OPTIONS
from tests.fixtures.cli import run_cli
from tests.fixtures.images import write_jpeg

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="devices and FIFOs are POSIX")


def _big_toml(path: Path, size: int) -> Path:
    """A valid TOML file of ``size`` bytes (comments after one real key)."""
    line = "# " + "x" * 98 + "\n"
    head = 'network_module = "networks.lora"\n'
    path.write_text(head + line * ((size - len(head)) // len(line) + 1), encoding="utf-8")
    return path


@posix_only
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_config_check_refuses_a_device(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["config", "check", device], capsys)
    assert code == 2
    assert "not a regular file" in out and "character device" in out and device in out
    assert "Traceback" not in out


@posix_only
def test_config_check_refuses_a_fifo_without_blocking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    code, out = run_cli(["config", "check", str(fifo)], capsys)
    assert code == 2 and "named pipe" in out


def test_config_check_refuses_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["config", "check", str(tmp_path)], capsys)
    assert code == 2 and "a folder" in out and "Traceback" not in out


def test_config_check_refuses_a_huge_file_by_its_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _big_toml(tmp_path / "big.toml", MAX_TEXT_FILE_BYTES + 1)
    code, out = run_cli(["config", "check", str(path)], capsys)
    assert code == 2
    assert "refused" in out and "more than 1 MiB" in out and "big.toml" in out


def test_config_check_still_reads_a_large_but_sane_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _big_toml(tmp_path / "ok.toml", MAX_TEXT_FILE_BYTES - 200)
    code, out = run_cli(["config", "check", str(path), "--model", "sd15"], capsys)
    assert code == 2 and "refused" not in out  # exit 2: the comments hold no base model
    assert "pretrained_model_name_or_path" in out  # it was read and checked


def test_a_huge_user_preset_is_refused_by_name(tmp_path: Path) -> None:
    user = tmp_path / "presets"
    (user / "gpus").mkdir(parents=True)
    _big_toml(user / "gpus" / "huge.toml", MAX_TEXT_FILE_BYTES + 1)
    with pytest.raises(ConfigError, match="refused") as err:
        load_catalog(user_dir=user)
    assert "huge.toml" in str(err.value)


@posix_only
def test_a_user_preset_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    user = tmp_path / "presets"
    (user / "models").mkdir(parents=True)
    os.mkfifo(user / "models" / "pipe.toml")
    with pytest.raises(ConfigError, match="named pipe"):
        load_catalog(user_dir=user)


def test_a_huge_caption_is_an_error_not_a_read(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "3_sks dog"
    write_jpeg(folder / "a.jpg")
    with open(folder / "a.txt", "wb") as f:  # sparse: costs no disk
        f.truncate(MAX_CAPTION_BYTES + 1)
    image = read_training_dir(tmp_path / "train").subsets[0].images[0]
    assert image.caption_error is not None and "a.txt" in image.caption_error
    assert "64 KiB" in image.caption_error


def test_a_config_with_thousands_of_options_is_refused_not_checked_one_by_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Under the size limit, but each unknown key costs a spelling search: 48 000 of them took
    # 22 s and printed 14 MB. sd-scripts' scripts have about 200 options.
    path = tmp_path / "many.toml"
    path.write_text("".join(f"option_{i} = 1\n" for i in range(MAX_CONFIG_OPTIONS + 1)))
    code, out = run_cli(["config", "check", str(path)], capsys)
    assert code == 2 and f"{MAX_CONFIG_OPTIONS + 1} options" in out
    assert out.count("option_") < 10


def test_an_error_naming_a_long_path_keeps_it_whole(tmp_path: Path) -> None:
    """Errors go to logs and pipes as often as to terminals: a path is never cut at 80 columns."""
    deep = tmp_path / ("长路径-" * 12) / "配置 文件.toml"
    done = subprocess.run(
        [sys.executable, "-m", "kohyawrap", "config", "check", str(deep)],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    first = done.stderr.splitlines()[0]
    assert first.startswith("error:") and str(deep) in first, done.stderr
