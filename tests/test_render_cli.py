"""``kohyawrap config render`` through the real CLI entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import tomlkit

from tests.fixtures.cli import run_cli
from tests.fixtures.images import write_jpeg


def run(args: list[str], capsys) -> tuple[int, str]:
    return run_cli(args, capsys)


def dataset(root: Path) -> Path:
    for i in range(2):
        write_jpeg(root / "10_sks dog" / f"{i}.jpg", (512, 512), seed=i)
    return root


def render_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "config",
        "render",
        "--gpu",
        "rtx4090",
        "--model",
        "sd15",
        "--dataset",
        str(data),
        "-o",
        str(out),
        *extra,
    ]


def test_render_writes_files_that_point_at_the_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset(tmp_path / "training_data")
    code, text = run(
        render_args(Path("training_data"), Path("runs/my_lora"), "--set", "network_dim=8"), capsys
    )
    assert code == 0, text
    out = tmp_path / "runs" / "my_lora"
    assert sorted(p.name for p in out.iterdir()) == [
        "launch.sh",
        "sample_prompts.txt",
        "training_config.toml",
    ]
    config = tomlkit.parse((out / "training_config.toml").read_text()).unwrap()
    # launch.sh runs sd-scripts from the output folder, so the dataset path is relative to it
    assert config["dataset"]["train_data_dir"] == "../../training_data"
    assert (out / config["dataset"]["train_data_dir"]).resolve() == (
        tmp_path / "training_data"
    ).resolve()
    assert config["network"]["network_dim"] == 8
    assert os.access(out / "launch.sh", os.X_OK)
    assert "written" in text and "launch.sh" in text
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_render_never_overwrites_a_different_file_without_force(tmp_path, capsys):
    data = dataset(tmp_path / "data")
    out = tmp_path / "out"
    assert run(render_args(data, out), capsys)[0] == 0
    code, text = run(render_args(data, out), capsys)
    assert code == 0 and "unchanged" in text
    before = (out / "training_config.toml").read_text()
    code, text = run(render_args(data, out, "--set", "seed=1"), capsys)
    assert code == 2 and "--force" in text and "training_config.toml" in text
    assert (out / "training_config.toml").read_text() == before
    code, text = run(render_args(data, out, "--set", "seed=1", "--force"), capsys)
    assert code == 0 and "replaced" in text
    assert "seed = 1" in (out / "training_config.toml").read_text()


def test_render_json_and_dataset_config(tmp_path, capsys):
    data = dataset(tmp_path / "data")
    code, text = run(render_args(data, tmp_path / "out", "--dataset-config", "--json"), capsys)
    assert code == 0, text
    report = json.loads(text)
    names = ("dataset_config.toml", "launch.sh", "sample_prompts.txt", "training_config.toml")
    assert report["files"] == dict.fromkeys(names, "written")
    assert any(f["code"] == "needs-bitsandbytes" for f in report["findings"])
    doc = tomlkit.parse((tmp_path / "out" / "dataset_config.toml").read_text()).unwrap()
    assert doc["datasets"][0]["subsets"][0]["image_dir"] == f"{data.as_posix()}/10_sks dog"


def test_render_errors_are_clear(tmp_path, capsys):
    data = dataset(tmp_path / "data")
    code, text = run(render_args(data, tmp_path / "o", "--set", "batch_size=2"), capsys)
    assert code == 2 and "train_batch_size" in text and "Traceback" not in text
    args = [
        "config",
        "render",
        "--model",
        "sd15",
        "--dataset",
        str(data),
        "-o",
        str(tmp_path / "o"),
    ]
    code, text = run([*args, "--gpu", "rtx4909"], capsys)
    assert code == 2 and "rtx4090" in text
    code, text = run(
        ["config", "render", "--model", "sd15", "--dataset", str(data), "-o", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2 and "--vram" in text
    assert not (tmp_path / "o").exists()


def test_render_for_a_card_without_preset(tmp_path, capsys):
    data = dataset(tmp_path / "data")
    code, text = run(["config", "render", "--vram", "20", "--model", "sdxl", "--dataset", str(data),
                      "-o", str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 0, text
    config = (tmp_path / "o" / "training_config.toml").read_text()
    assert 'mixed_precision = "fp16"' in config and "no_half_vae = true" in config
    assert "gpu preset vram-20" in config


def test_launch_sh_runs_the_checkout_of_the_given_work_dir_and_ref(tmp_path, capsys):
    import subprocess

    data = dataset(tmp_path / "training_data")
    ref = "fedcba9876543210fedcba9876543210fedcba98"
    cases = {
        "default": ([], "/home/u/kohyawrap/sd-scripts/"),
        "given": (["--work-dir", "/data/我的 work", "--sd-scripts-ref", ref], None),
    }
    for name, (extra, prefix) in cases.items():
        out = tmp_path / name
        code, text = run(render_args(data, out, *extra), capsys)
        assert code == 0, text
        shown = subprocess.run(
            [
                "bash",
                "-c",
                'SD_SCRIPTS= ; source <(grep "^SD_SCRIPTS=" launch.sh); echo "$SD_SCRIPTS"',
            ],
            cwd=out,
            capture_output=True,
            text=True,
            env={"HOME": "/home/u", "PATH": "/usr/bin:/bin"},
            check=True,
        ).stdout.strip()
        if prefix:
            assert shown.startswith(prefix) and len(shown) == len(prefix) + 40
        else:
            assert shown == f"/data/我的 work/sd-scripts/{ref}"
