"""Building datasets from real (and really broken) image files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from kohyawrap.dataset.build import BuildRequest, build_dataset, report_path_for
from kohyawrap.dataset.scan import read_training_dir
from kohyawrap.errors import DatasetError, UsageError
from tests.fixtures.images import tree_digest, write_jpeg


def _request(inputs: list[Path], output: Path, **kw: object) -> BuildRequest:
    options: dict[str, object] = {
        "triggers": ("sks dog",),
        "class_words": ("dog",),
        "model": "sd15",
        "max_side": 128,
        "jobs": 1,
    }
    options.update(kw)
    return BuildRequest(inputs=tuple(inputs), output=output, **options)  # type: ignore[arg-type]


def test_hostile_inputs_build_a_clean_dataset(hostile_photos: Path, tmp_path: Path) -> None:
    before = tree_digest(hostile_photos)
    out = tmp_path / "data"
    result = build_dataset(_request([hostile_photos], out, jobs=2))

    assert tree_digest(hostile_photos) == before  # sources untouched
    folder = "21_sks dog"  # 14 usable images: round(300 / 14) = 21 repeats
    assert [c.folder for c in result.layout.concepts] == [folder]
    names = sorted(p.name for p in (out / folder).iterdir())
    images = [n for n in names if not n.endswith(".txt")]
    assert images == sorted(
        [
            "UPPER.jpg", "alpha.png", "big.jpg", "café_ünïcode_写真.jpg", "cmyk.jpg", "deep16.png",
            "mixed.png", "my_best_rm_-rf_shot.jpg", "palette.png", "plain.jpg", "rotated.jpg",
            "twin.jpg", "twin-2.png",
        ]
    )  # fmt: skip
    assert {n.removesuffix(".txt") for n in names if n.endswith(".txt")} == {
        n.rsplit(".", 1)[0] for n in images
    }
    skipped = {Path(s["source"]).name for s in result.to_json()["skipped"]}
    assert skipped == {"truncated.jpg", "empty.jpg", "notes.jpg", "bomb.png"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_what_sd_scripts_will_see(hostile_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    build_dataset(_request([hostile_photos], out))
    tdir = read_training_dir(out)
    subset = tdir.subsets[0]
    assert subset.other_files == ()  # every file is an image sd-scripts finds, or its caption
    assert tdir.stray_files == () and tdir.ignored_folders == ()
    for image in subset.images:
        assert image.caption is not None and "sks dog" in image.caption
        assert image.mode in ("RGB", "L") and image.orientation == 1
        assert max(image.width, image.height) <= 128
    captions = {i.name: i.caption for i in subset.images}
    assert captions["UPPER.jpg"] == "sks dog in the snow"  # from UPPER.caption, kept as is
    assert captions["plain.jpg"] == "sks dog, a dog on the grass"  # trigger added
    assert captions["big.jpg"] == "sks dog, first line"  # only the first line
    assert captions["palette.png"] == "photo of sks dog"  # empty caption file -> template
    assert report_path_for(out).is_file() and not (out / "data.build.json").exists()


def test_conversions_in_the_output(hostile_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = build_dataset(_request([hostile_photos], out))
    actions = {Path(o.op.source).name: o.op.action for o in result.outcomes}
    assert actions["plain.jpg"] == "copy" and actions["UPPER.JPG"] == "copy"
    assert actions["rotated.jpg"] == actions["cmyk.jpg"] == actions["big.jpg"] == "convert"
    folder = out / "21_sks dog"
    assert (folder / "plain.jpg").read_bytes() == (hostile_photos / "plain.jpg").read_bytes()
    with Image.open(folder / "rotated.jpg") as rotated:
        assert rotated.size == (60, 80)
    with Image.open(folder / "big.jpg") as big:
        assert big.size == (128, 85) and big.format == "JPEG"
    with Image.open(folder / "alpha.png") as alpha:
        assert alpha.mode == "RGB" and alpha.getpixel((0, 0)) == (255, 255, 255)


def test_rebuild_is_byte_identical(hostile_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    build_dataset(_request([hostile_photos], out, jobs=2))
    first, first_report = tree_digest(out), report_path_for(out).read_bytes()
    build_dataset(_request([hostile_photos], out, force=True, jobs=1))
    assert tree_digest(out) == first
    assert report_path_for(out).read_bytes() == first_report


def test_existing_output_needs_force(good_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    build_dataset(_request([good_photos], out))
    before = tree_digest(out)
    with pytest.raises(UsageError, match="already exists") as err:
        build_dataset(_request([good_photos], out, repeats=(3,)))
    assert err.value.hint and "--force" in err.value.hint
    assert tree_digest(out) == before
    build_dataset(_request([good_photos], out, repeats=(3,), force=True))
    assert [p.name for p in out.iterdir()] == ["3_sks dog"]


def test_force_never_deletes_a_foreign_folder(good_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    (out / "thesis").mkdir(parents=True)
    (out / "thesis" / "chapter1.tex").write_text("keep me", encoding="utf-8")
    with pytest.raises(UsageError, match="refusing to replace"):
        build_dataset(_request([good_photos], out, force=True))
    assert (out / "thesis" / "chapter1.tex").read_text(encoding="utf-8") == "keep me"


def test_an_empty_output_folder_is_filled(good_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    build_dataset(_request([good_photos], out))
    assert [p.name for p in out.iterdir()] == ["50_sks dog"]  # 6 images: round(300 / 6)


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_may_not_overlap_an_input(good_photos: Path, tmp_path: Path, where: str) -> None:
    out = {"same": good_photos, "inside": good_photos / "out", "parent": good_photos.parent}[where]
    before = tree_digest(good_photos)
    with pytest.raises(UsageError, match="overlaps"):
        build_dataset(_request([good_photos], out, force=True))
    assert tree_digest(good_photos) == before


def test_strict_stops_before_writing(hostile_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    with pytest.raises(DatasetError, match="--strict") as err:
        build_dataset(_request([hostile_photos], out, strict=True))
    assert any("bomb.png" in line for line in err.value.evidence)
    assert list(tmp_path.iterdir()) == [hostile_photos]


def test_strict_stops_on_damage_found_while_writing(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_jpeg(src / "ok.jpg")
    data = write_jpeg(src / "cut.jpg", (128, 96), seed=3).read_bytes()
    (src / "cut.jpg").write_bytes(data[: len(data) // 2])  # header fine, pixels missing
    with pytest.raises(DatasetError, match=r"--strict"):
        build_dataset(_request([src], tmp_path / "data", strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_several_concepts_and_reg_images(tmp_path: Path) -> None:
    for i in range(3):
        write_jpeg(tmp_path / "dogs" / f"d{i}.jpg", seed=i)
        write_jpeg(tmp_path / "cats" / f"d{i}.jpg", seed=10 + i)  # same names as the dogs
        write_jpeg(tmp_path / "reg" / f"r{i}.jpg", seed=20 + i)
    request = _request(
        [tmp_path / "dogs", tmp_path / "cats"],
        tmp_path / "data",
        triggers=("sks dog", "sks cat"),
        class_words=("dog", "cat"),
        reg_dirs=(tmp_path / "reg",),
        repeats=(10,),
    )
    with pytest.raises(UsageError, match="class word"):
        build_dataset(request)  # two class words, one reg folder: which class is it?
    result = build_dataset(_request([tmp_path / "dogs", tmp_path / "cats"], tmp_path / "data",
                                    triggers=("sks dog", "sks cat"), class_words=("animal",),
                                    reg_dirs=(tmp_path / "reg",), repeats=(10,)))  # fmt: skip
    assert [c.folder for c in result.layout.concepts] == [
        "10_sks dog animal",
        "10_sks cat animal",
        "reg/1_animal",
    ]
    tdir = read_training_dir(tmp_path / "data")
    reg = next(s for s in tdir.subsets if s.is_reg)
    assert {i.caption for i in reg.images} == {"animal"}
    assert result.lint.batch.images_with_repeats == 60
    assert result.lint.batch.reg_images_with_repeats == 3


def test_repeats_rule_is_reported(good_photos: Path, tmp_path: Path) -> None:
    result = build_dataset(_request([good_photos], tmp_path / "data", model="sdxl"))
    report = json.loads(report_path_for(tmp_path / "data").read_text(encoding="utf-8"))
    concept = report["concepts"][0]
    assert (concept["repeats"], concept["images"], concept["per_epoch"]) == (17, 6, 102)
    assert concept["derived"] and "SDXL" in concept["repeats_rule"]
    assert result.lint.epochs == 10 and result.lint.total_steps == 1020


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset(_request([tmp_path / "nope"], tmp_path / "data"))
    assert not (tmp_path / "data").exists()


def test_unknown_model_stops_before_writing(good_photos: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown model"):
        build_dataset(_request([good_photos], tmp_path / "data", model="flux", resize=False))
    assert not (tmp_path / "data").exists()
