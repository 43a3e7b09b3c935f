"""Plans that cannot train as written (issue #7): zero steps are refused with the reason; a batch
larger than the dataset is a warning, because sd-scripts trains it as one partial batch per
bucket (library/train_util.py make_buckets: ceil(len(bucket) / batch_size) batches, each a slice
of at most batch_size images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kohyawrap.dataset.buckets import TrainingLength, bucket_settings_for
from kohyawrap.dataset.lint import lint
from kohyawrap.dataset.scan import read_training_dir
from tests.fixtures.cli import run_cli
from tests.test_forecast import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("limits") / "data")  # 60 images x repeats


@pytest.mark.parametrize("zero", ["max_train_epochs=0", "max_train_epochs=-2"])
def test_a_plan_of_zero_steps_is_refused_with_why(
    data: Path, zero: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(
        ["plan", "--gpu", "rtx4090", "--model", "sd15", "--dataset", str(data), "--set", zero],
        capsys,
    )
    assert code == 2 and "nothing is trained" in out and "Traceback" not in out


def test_a_batch_larger_than_the_dataset_is_a_warning(data: Path) -> None:
    tdir = read_training_dir(data)
    report = lint(tdir, model="sd15", bucket=bucket_settings_for("sd15"), length=TrainingLength(64))
    (found,) = [f for f in report.findings if f.code == "batch_larger_than_dataset"]
    assert found.severity == "warning"
    assert "64" in found.message and "60" in found.message
    fits = lint(tdir, model="sd15", bucket=bucket_settings_for("sd15"), length=TrainingLength(60))
    assert not [f for f in fits.findings if f.code == "batch_larger_than_dataset"]


def test_plan_shows_it(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(
        ["plan", "--gpu", "h100", "--model", "sd15", "--dataset", str(data),
         "--set", "train_batch_size=64", "--force", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    codes = {f["code"]: f["severity"] for f in json.loads(out)["lint"]["findings"]}
    assert codes["batch_larger_than_dataset"] == "warning"
