"""``kohyawrap config check`` through the CLI: the tutorial's config and a clean one."""

from __future__ import annotations

import json
from pathlib import Path

from kohyawrap.cli import main
from tests.test_validate import TUTORIAL_TEXT


def run(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out = capsys.readouterr()
    return code, out.out, " ".join(out.err.split())  # rich wraps stderr at 80 columns


def test_check_names_the_tutorials_problems_and_exits_2(tmp_path, capsys):
    path = tmp_path / "training_config.toml"
    path.write_text(TUTORIAL_TEXT)
    code, out, err = run(["config", "check", str(path)], capsys)
    assert code == 2
    needles = ("resolution", "batch_size", "train_batch_size", "network_module", "networks.lora")
    for needle in (*needles, ".caption", "never restarts", "bitsandbytes", "3 errors"):
        assert needle in out, needle
    assert "3 problem(s)" in err and "Traceback" not in err


def test_check_json(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(TUTORIAL_TEXT)
    code, out, _ = run(["config", "check", str(path), "--model", "sd15", "--json"], capsys)
    data = json.loads(out)
    assert code == 2 and data["errors"] == 3 and data["script"] == "train_network.py"
    assert {f["subject"] for f in data["findings"] if f["severity"] == "error"} == {
        "resolution",
        "batch_size",
        "network_module",
    }


def test_check_a_rendered_config_is_clean(tmp_path, capsys):
    out_dir = tmp_path / "o"
    args = ["--gpu", "rtx3090", "--model", "sdxl", "--dataset", str(tmp_path / "later")]
    assert run(["config", "render", *args, "-o", str(out_dir)], capsys)[0] == 0
    code, out, _ = run(
        [
            "config",
            "check",
            str(out_dir / "training_config.toml"),
            "--model",
            "sdxl",
            "--gpu",
            "rtx3090",
        ],
        capsys,
    )
    assert code == 0 and "0 errors" in out


def test_check_bad_input(tmp_path, capsys):
    code, _, err = run(["config", "check", str(tmp_path / "missing.toml")], capsys)
    assert code == 2 and "cannot read" in err
    bad = Path(tmp_path / "bad.toml")
    bad.write_text("resolution = = 1\n")
    code, _, err = run(["config", "check", str(bad)], capsys)
    assert code == 2 and "not valid TOML" in err
