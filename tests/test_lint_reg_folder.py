"""``<dataset>/reg`` is the reg_data_dir `dataset build` writes (issue #7): lint never advises
renaming it "like 10_reg", which would train the regularisation images as a concept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kohyawrap.dataset.buckets import bucket_settings_for
from kohyawrap.dataset.lint import lint
from kohyawrap.dataset.scan import read_training_dir
from tests.fixtures.cli import run_cli
from tests.fixtures.images import write_jpeg
from tests.test_forecast import make_dataset


def test_plan_does_not_advise_renaming_reg(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    data = make_dataset(tmp_path / "data", reg=True)
    code, out = run_cli(
        ["plan", "--gpu", "rtx4090", "--model", "sd15", "--dataset", str(data), "--json"], capsys
    )
    assert code == 0, out
    findings = json.loads(out)["lint"]["findings"]
    assert not [f for f in findings if "10_reg" in f["message"]]
    assert not [f for f in findings if f["code"] == "ignored_folder"]


def test_reg_given_explicitly_as_dataset_reg_is_not_an_ignored_folder(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", reg=True)
    tdir = read_training_dir(data, ".txt", data / "reg")
    assert "reg" not in tdir.ignored_folders
    assert [s.folder for s in tdir.subsets if s.is_reg] == ["1_dog"]


def test_a_reg_folder_beside_another_reg_dir_is_explained_not_renamed(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", reg=True)
    other = tmp_path / "other_reg"
    write_jpeg(other / "1_dog" / "o.jpg", (512, 512), seed=40)
    tdir = read_training_dir(data, ".txt", other)
    report = lint(tdir, model="sd15", bucket=bucket_settings_for("sd15"))
    (found,) = [f for f in report.findings if f.subject == "reg"]
    assert "10_reg" not in found.message and "reg_data_dir" in found.message
