"""The demo's example photos: deterministic, varied, and a valid build input."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohyawrap.dataset.build import BuildRequest, build_dataset
from kohyawrap.dataset.example import make_example_photos
from kohyawrap.dataset.scan import scan_sources
from tests.fixtures.images import tree_digest


def test_same_bytes_every_time(tmp_path: Path) -> None:
    a = make_example_photos(tmp_path / "a")
    b = make_example_photos(tmp_path / "b")
    assert tree_digest(a) == tree_digest(b)


def test_the_set_exercises_the_builder(tmp_path: Path) -> None:
    src = scan_sources(make_example_photos(tmp_path / "photos"))
    headers = [i.header for i in src.images if i.header]
    assert len(headers) == 8
    assert any(h.orientation == 6 for h in headers)
    assert any(h.format == "PNG" for h in headers)
    assert len({round(h.upright_size[0] / h.upright_size[1], 2) for h in headers}) >= 4
    with_caption = [i for i in src.images if i.caption_text]
    assert 0 < len(with_caption) < len(src.images)


def test_count_and_a_clean_build(tmp_path: Path) -> None:
    photos = make_example_photos(tmp_path / "photos", count=4)
    assert len([p for p in photos.iterdir() if p.suffix.lower() != ".txt"]) == 4
    with pytest.raises(ValueError):
        make_example_photos(tmp_path / "x", count=0)
    request = BuildRequest(
        (photos,), tmp_path / "data", ("sks robot",), "sd15", class_words=("robot",), jobs=1
    )
    result = build_dataset(request)
    assert not result.lint.errors and not result.lint.warnings
    assert not [n for n in result.notes if n.severity != "note"]
