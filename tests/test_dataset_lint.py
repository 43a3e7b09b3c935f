"""The linter on hand-made training folders with one problem each."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kohyawrap.dataset.buckets import BucketSettings, TrainingLength, bucket_settings_for
from kohyawrap.dataset.build import LintRequest, compute_phashes, lint_dataset
from kohyawrap.dataset.lint import LintReport, lint
from kohyawrap.dataset.scan import read_training_dir
from tests.fixtures.images import (
    textured,
    write_jpeg,
    write_png,
    write_rgba_png,
    write_rotated_jpeg,
    write_zero_bytes,
)

SMALL = BucketSettings(
    resolution=(64, 64), min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=32
)


def _lint(
    root: Path,
    *,
    batch_size: int = 1,
    epochs: int | None = None,
    max_train_steps: int | None = None,
    **kw: object,
) -> LintReport:
    options: dict[str, object] = {"model": "sd15", "bucket": SMALL, "min_short_side": 48}
    options["length"] = TrainingLength(batch_size, epochs, max_train_steps)
    options.update(kw)
    tdir = read_training_dir(root, str(options.pop("caption_extension", ".txt")))
    return lint(tdir, **options)  # type: ignore[arg-type]


def _codes(report: LintReport) -> dict[str, list[str | None]]:
    out: dict[str, list[str | None]] = {}
    for f in report.findings:
        out.setdefault(f.code, []).append(f.subject)
    return out


def _clean(root: Path, n: int = 3) -> Path:
    folder = root / "5_sks dog"
    for i in range(n):
        write_jpeg(folder / f"img{i}.jpg", (96, 64), seed=50 + i)
        (folder / f"img{i}.txt").write_text(f"sks dog, photo {i}\n", encoding="utf-8")
    return folder


def test_a_clean_dataset_has_no_warnings(tmp_path: Path) -> None:
    _clean(tmp_path)
    report = _lint(tmp_path, trigger="sks dog", epochs=2)
    assert [f for f in report.findings if f.severity != "note"] == []
    assert report.total_steps == 30 and report.epochs == 2 and report.steps_basis == "epochs"
    assert not report.errors


def test_folders_and_files_sd_scripts_will_not_read(tmp_path: Path) -> None:
    folder = _clean(tmp_path)
    write_jpeg(tmp_path / "portraits" / "p.jpg")
    write_jpeg(tmp_path / "0_off" / "p.jpg")
    write_jpeg(tmp_path / "loose.jpg")
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    write_png(folder / "shot.Png")
    write_png(folder / ".hidden.png")
    write_jpeg(folder / "deeper" / "x.jpg")
    codes = _codes(_lint(tmp_path))
    assert codes["ignored_folder"] == ["portraits"]
    assert codes["skipped_folder"] == ["0_off"]
    assert codes["stray_image"] == ["loose.jpg"] and codes["stray_file"] == ["notes.md"]
    assert sorted(codes["unseen_image"]) == ["5_sks dog/.hidden.png", "5_sks dog/shot.Png"]
    assert codes["nested_folder"] == ["5_sks dog/deeper/"]


def test_caption_problems(tmp_path: Path) -> None:
    folder = tmp_path / "3_sks dog"
    for i, stem in enumerate(["none", "wrongext", "empty", "zero", "multi", "bom"]):
        write_jpeg(folder / f"{stem}.jpg", seed=i)
    (folder / "wrongext.caption").write_text("sks dog\n", encoding="utf-8")
    (folder / "empty.txt").write_text("\n", encoding="utf-8")
    write_zero_bytes(folder / "zero.txt")
    (folder / "multi.txt").write_text("sks dog\nmore\n", encoding="utf-8")
    (folder / "bom.txt").write_text("\ufeffsks dog\n", encoding="utf-8")
    report = _lint(tmp_path)
    codes = _codes(report)
    assert codes["no_caption"] == ["3_sks dog/none.jpg"]
    assert codes["caption_extension"] == ["3_sks dog/wrongext.jpg"]
    assert codes["empty_caption"] == ["3_sks dog/empty.jpg"]
    assert codes["caption_file"] == ["3_sks dog/zero.jpg"]
    assert codes["multiline_caption"] == ["3_sks dog/multi.jpg"]
    assert codes["caption_bom"] == ["3_sks dog/bom.jpg"]
    assert {f.code for f in report.errors} == {"caption_extension", "caption_file"}
    # Read with .caption, the .caption file is found and the .txt ones are ignored instead.
    assert "wrongext.jpg" not in str(
        _codes(_lint(tmp_path, caption_extension=".caption")).get("no_caption")
    )


def test_trigger_coverage(tmp_path: Path) -> None:
    folder = _clean(tmp_path)
    (folder / "img1.txt").write_text("a dog\n", encoding="utf-8")
    write_jpeg(tmp_path / "reg" / "1_dog" / "r.jpg", seed=9)
    (tmp_path / "reg" / "1_dog" / "r.txt").write_text("sks dog on a sofa\n", encoding="utf-8")
    report = _lint(tmp_path, trigger="sks dog")
    missing = [f for f in report.findings if f.code == "trigger_missing"]
    assert len(missing) == 1 and "1 of 3" in missing[0].message and "img1.jpg" in missing[0].message
    assert _codes(report)["trigger_in_reg"] == ["reg/1_dog"]
    assert _codes(report)["reg_folder"] == ["reg"]


def test_image_problems(tmp_path: Path) -> None:
    folder = tmp_path / "2_x"
    write_jpeg(folder / "tiny.jpg", (40, 30), seed=1)
    write_jpeg(folder / "wide.jpg", (400, 50), seed=2)
    write_rotated_jpeg(folder / "sideways.jpg")
    write_rgba_png(folder / "alpha.png")
    write_zero_bytes(folder / "broken.jpg")
    codes = _codes(_lint(tmp_path))
    assert codes["too_small"] == ["2_x/tiny.jpg"]
    assert codes["extreme_aspect"] == ["2_x/wide.jpg"]
    assert codes["exif_orientation"] == ["2_x/sideways.jpg"]
    assert codes["color_mode"] == ["2_x/alpha.png"]
    assert codes["unreadable_image"] == ["2_x/broken.jpg"]


def test_exact_and_near_duplicates(tmp_path: Path) -> None:
    folder = tmp_path / "4_x"
    write_jpeg(folder / "a.jpg", (160, 120), seed=31)
    shutil.copyfile(folder / "a.jpg", folder / "a_copy.jpg")
    textured((160, 120), seed=31).resize((120, 90)).save(folder / "a_small.png")
    write_jpeg(folder / "other.jpg", (160, 120), seed=32)
    tdir = read_training_dir(tmp_path)
    report = lint(
        tdir,
        model="sd15",
        bucket=SMALL,
        min_short_side=48,
        phashes=compute_phashes(tdir.image_files()),
    )
    codes = _codes(report)
    assert codes["duplicate"] == ["4_x/a_copy.jpg"]
    assert codes["near_duplicate"] == ["4_x/a_small.png"]


def test_steps_default_and_too_many(tmp_path: Path) -> None:
    _clean(tmp_path)
    default = _lint(tmp_path)
    assert default.total_steps == 1600 and default.steps_basis == "default"
    assert default.epochs == 107  # ceil(1600 / 15 batches)
    assert "default_steps" in _codes(default)
    many = _lint(tmp_path, epochs=1000)
    assert many.total_steps == 15000 and "too_many_steps" in _codes(many)
    assert _lint(tmp_path, max_train_steps=300).epochs == 20


def test_partial_batches_and_reg_surplus(tmp_path: Path) -> None:
    folder = tmp_path / "1_x"
    write_jpeg(folder / "a.jpg", (64, 64), seed=1)
    write_jpeg(folder / "b.jpg", (128, 32), seed=2)
    for i in range(4):
        write_jpeg(tmp_path / "reg" / "1_c" / f"r{i}.jpg", (64, 64), seed=10 + i)
    report = _lint(tmp_path, batch_size=4)
    assert report.batch.batches_per_epoch == 2  # two buckets, each a short batch
    codes = _codes(report)
    assert "partial_batches" in codes and "reg_unused" in codes


def test_no_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "5_empty").mkdir()
    report = _lint(tmp_path)
    assert {f.code for f in report.errors} == {"no_images"}
    assert "empty_folder" in _codes(report) and report.total_steps is None


def test_json_report_and_lint_dataset(tmp_path: Path) -> None:
    _clean(tmp_path)
    length = TrainingLength(train_batch_size=2, max_train_epochs=3, basis="given")
    report = lint_dataset(LintRequest(tmp_path, "sd15", trigger="sks dog", length=length))
    data = report.to_json()
    assert data["ok"] is True and data["batch_size"] == 2 and data["steps_from"] == "given"
    # 96x64 is 1.5:1; 640x384 (1.67) is nearer than 576x448 (1.29)
    assert data["buckets"] == [{"width": 640, "height": 384, "count": 15}]
    assert (data["batches_per_epoch"], data["total_steps"], data["epochs"]) == (8, 24, 3)
    assert data["counts"]["warning"] == 3  # three images below 512 px for sd15
    assert bucket_settings_for("sd15") == BucketSettings((512, 512))


@pytest.mark.parametrize("model", ["sd15", "sd2", "sdxl"])
def test_too_small_uses_the_model_preset(tmp_path: Path, model: str) -> None:
    write_jpeg(tmp_path / "1_x" / "a.jpg", (600, 600))
    report = lint_dataset(LintRequest(tmp_path, model, near_duplicates=False))
    assert ("too_small" in _codes(report)) == (model != "sd15")
