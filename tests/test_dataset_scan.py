"""Reading a training folder the way sd-scripts does, on real folders and files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kohyawrap.dataset.scan import parse_concept_folder, read_training_dir, scan_sources
from kohyawrap.errors import DatasetError
from tests.fixtures.images import (
    write_jpeg,
    write_png,
    write_rotated_jpeg,
    write_text_as_image,
    write_zero_bytes,
)

# Observed from sd-scripts itself at the pinned commit (docs/sources.md [8]), case by case.
CASES = json.loads(
    (Path(__file__).parent / "data" / "concept_folder_parsing_cases.json").read_text()
)


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: repr(c["folder"]))
def test_folder_names_parse_like_sd_scripts(case: dict[str, object]) -> None:
    parsed = parse_concept_folder(str(case["folder"]))
    if case.get("skipped"):
        if case["warning"]:
            assert parsed is None  # no number: ignored with a warning
        else:
            assert parsed is not None and parsed[0] < 1  # 0 or negative: skipped silently
    else:
        assert parsed == (case["num_repeats"], case["class_tokens"])


def test_all_cases_on_disk(tmp_path: Path) -> None:
    root = tmp_path / "train"
    for case in CASES["cases"]:
        write_jpeg(root / str(case["folder"]) / "a.jpg")
    tdir = read_training_dir(root)
    got = {s.folder: (s.repeats, s.class_tokens) for s in tdir.subsets}
    want = {
        c["folder"]: (c["num_repeats"], c["class_tokens"])
        for c in CASES["cases"]
        if not c.get("skipped")
    }
    assert got == want
    assert set(tdir.ignored_folders) == {c["folder"] for c in CASES["cases"] if c.get("warning")}
    assert set(tdir.skipped_folders) == {"0_zero", "-1_neg"}


def test_only_exact_case_extensions_are_images(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "5_x"
    for name in ("a.png", "b.PNG", "d.jpeg", "e.JPG", "f.webp", "g.bmp"):
        write_png(folder / name)
    for name in ("c.Png", ".hidden.png", "h.Jpg"):
        write_png(folder / name)
    (folder / "nested").mkdir()
    subset = read_training_dir(tmp_path / "train").subsets[0]
    assert [i.name for i in subset.images] == [
        "a.png",
        "b.PNG",
        "d.jpeg",
        "e.JPG",
        "f.webp",
        "g.bmp",
    ]
    assert set(subset.other_files) == {"c.Png", ".hidden.png", "h.Jpg", "nested/"}
    assert CASES["image_extensions"] == [
        ".png",
        ".jpg",
        ".jpeg",
        ".webp",
        ".bmp",
        ".PNG",
        ".JPG",
        ".JPEG",
        ".WEBP",
        ".BMP",
    ]


def test_sizes_from_headers_with_exif_orientation(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "1_x"
    write_rotated_jpeg(folder / "r.jpg", upright=(60, 80))
    write_jpeg(folder / "p.jpg", (96, 64))
    tdir = read_training_dir(tmp_path / "train")
    images = {i.name: i for i in tdir.subsets[0].images}
    assert (images["r.jpg"].width, images["r.jpg"].height) == (60, 80)  # upright
    assert images["r.jpg"].orientation == 6
    assert images["r.jpg"].stored_size == (80, 60)  # what sd-scripts reads (it ignores EXIF)
    assert (images["p.jpg"].width, images["p.jpg"].height, images["p.jpg"].orientation) == (
        96,
        64,
        1,
    )
    sizes = tdir.subset_sizes()[0]
    assert sizes.repeats == 1 and sorted(sizes.sizes) == [(80, 60), (96, 64)]


def test_captions_as_sd_scripts_reads_them(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "3_sks dog"
    for stem in ("a", "b", "c", "d", "e", "f"):
        write_jpeg(folder / f"{stem}.jpg")
    (folder / "a.txt").write_text("  sks dog, running  \nsecond line\n\nthird\n", encoding="utf-8")
    (folder / "c.txt").write_bytes(b"")
    (folder / "d.txt").write_bytes("caf\xe9".encode("latin-1"))
    (folder / "e.txt").write_text("\n", encoding="utf-8")
    (folder / "f.caption").write_text("wrong extension\n", encoding="utf-8")
    images = {i.name: i for i in read_training_dir(tmp_path / "train").subsets[0].images}
    assert (images["a.jpg"].caption, images["a.jpg"].caption_lines) == ("sks dog, running", 3)
    assert images["b.jpg"].caption is None and images["b.jpg"].caption_file is None
    assert images["c.jpg"].caption_error is not None and "0 bytes" in images["c.jpg"].caption_error
    assert images["d.jpg"].caption_error is not None and "UTF-8" in images["d.jpg"].caption_error
    assert images["e.jpg"].caption == "" and images["e.jpg"].caption_error is None
    assert images["f.jpg"].caption is None  # .caption is not read when the config says .txt


def test_face_crop_name_falls_back_to_the_base_caption(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "1_x"
    write_jpeg(folder / "face_10_20_30_40.jpg")
    (folder / "face.txt").write_text("from the base name\n", encoding="utf-8")
    image = read_training_dir(tmp_path / "train").subsets[0].images[0]
    assert (image.caption, image.caption_file) == ("from the base name", "face.txt")


def test_unreadable_images_are_recorded_not_raised(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "1_x"
    write_zero_bytes(folder / "z.jpg")
    write_text_as_image(folder / "t.png")
    tdir = read_training_dir(tmp_path / "train")
    errors = {i.name: i.image_error for i in tdir.subsets[0].images}
    assert errors["z.jpg"] is not None and "0 bytes" in errors["z.jpg"]
    assert errors["t.png"] is not None and "not an image" in errors["t.png"]
    assert tdir.subset_sizes()[0].sizes == ()


def test_root_files_reg_folder_and_explicit_reg_dir(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_jpeg(root / "10_sks dog" / "a.jpg", seed=1)
    write_jpeg(root / "reg" / "1_dog" / "r.jpg", seed=2)
    write_jpeg(root / "loose.jpg", seed=3)
    tdir = read_training_dir(root)
    assert [(s.folder, s.is_reg) for s in tdir.subsets] == [("10_sks dog", False), ("1_dog", True)]
    assert tdir.stray_files == ("loose.jpg",) and "reg" not in tdir.ignored_folders
    assert set(tdir.image_files()) == {"10_sks dog/a.jpg", "reg/1_dog/r.jpg"}
    other_reg = tmp_path / "elsewhere"
    write_jpeg(other_reg / "2_cat" / "c.jpg")
    explicit = read_training_dir(root, reg_dir=other_reg)
    assert [(s.folder, s.is_reg) for s in explicit.subsets] == [
        ("10_sks dog", False),
        ("2_cat", True),
    ]
    assert "reg" in explicit.ignored_folders  # now an ordinary folder without a number


def test_missing_or_empty_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as err:
        read_training_dir(tmp_path / "nope")
    assert err.value.hint and "dataset build" in err.value.hint
    write_jpeg(tmp_path / "flat" / "photo.jpg")
    (tmp_path / "flat" / "portraits").mkdir()
    with pytest.raises(DatasetError, match="no concept folder") as err:
        read_training_dir(tmp_path / "flat")
    assert any("portraits" in line for line in err.value.evidence)


def test_scan_sources_pairs_sidecar_captions(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_jpeg(folder / "a.JPG")
    write_jpeg(folder / "b.jpg")
    (folder / "a.caption").write_text("cap a\n", encoding="utf-8")
    (folder / "b.txt").write_bytes("\ufeffcap b\n".encode())
    (folder / "b.caption").write_text("other b\n", encoding="utf-8")
    (folder / "lonely.txt").write_text("x\n", encoding="utf-8")
    (folder / "clip.gif").write_bytes(b"GIF89a")
    src = scan_sources(folder, ".txt")
    captions = {i.path.name: i.caption_text for i in src.images}
    assert captions == {"a.JPG": "cap a\n", "b.jpg": "cap b\n"}  # .txt preferred, BOM removed
    assert dict(src.others) == {
        "lonely.txt": "caption without image",
        "clip.gif": "unsupported image",
    }
