"""The installed wheel, not the checkout, must carry templates/ and presets/ and work."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the built wheel installed (dependencies borrowed read-only)."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        cwd=base,
    )
    wheel = next(dist.glob("kohyawrap-*.whl"))
    venv = base / "fresh venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True
    )
    # Dependencies come from the test environment through a path entry; the editable kohyawrap
    # there is NOT visible (its .pth file is only read in a real site directory).
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "kohyawrap"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.slow
def test_wheel_carries_templates_and_presets(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import kohyawrap, kohyawrap.resources as r; print(kohyawrap.__file__); print(r.templates_dir()); "
            "print(r.presets_dir())",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.splitlines()
    assert all(str(installed) in line for line in where), where
    assert Path(where[1], "remote", "run.sh.j2").is_file()
    assert Path(where[2], "models", "sdxl.toml").is_file()


@pytest.mark.slow
def test_installed_wheel_renders_a_config(installed: Path, tmp_path: Path) -> None:
    concept = tmp_path / "data" / "10_sks dog"
    concept.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (640, 512), (40 * i, 90, 160)).save(concept / f"img{i}.png")
        (concept / f"img{i}.txt").write_text("sks dog, a photo\n")
    result = run(
        installed,
        "config",
        "render",
        "--gpu",
        "rtx4090",
        "--model",
        "sdxl",
        "--dataset",
        str(tmp_path / "data"),
        "--base-model",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "--name",
        "my_lora",
        "-o",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "training_config.toml").read_text()
    assert 'network_module = "networks.lora"' in text
    assert "sdxl_train_network.py" in (tmp_path / "out" / "launch.sh").read_text()
