"""Caption files in other encodings (issue #7): UTF-16/32 with a byte-order mark are decoded by
it and written as UTF-8; text that cannot be decoded is refused with the file's name, never
guessed (a UTF-16 caption used to be read as Latin-1 and written back with NUL bytes)."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from kohyawrap.dataset.build import BuildRequest, build_dataset
from kohyawrap.dataset.scan import read_training_dir, scan_sources
from kohyawrap.errors import DatasetError
from tests.fixtures.cli import run_cli
from tests.fixtures.images import write_jpeg

CAPTION = "sks dog 在海边奔跑, café"
LINE = CAPTION + "\r\n"


def _request(src: Path, out: Path) -> BuildRequest:
    return BuildRequest(
        inputs=(src,), output=out, triggers=("sks dog",), class_words=("dog",), model="sd15",
        max_side=128, jobs=1,
    )  # fmt: skip


@pytest.mark.parametrize(
    "encoded",
    [
        codecs.BOM_UTF16_LE + LINE.encode("utf-16-le"),
        codecs.BOM_UTF16_BE + LINE.encode("utf-16-be"),
        codecs.BOM_UTF32_LE + LINE.encode("utf-32-le"),
        codecs.BOM_UTF8 + LINE.encode("utf-8"),
        LINE.encode("utf-8"),
    ],
    ids=["utf-16-le", "utf-16-be", "utf-32-le", "utf-8-bom", "utf-8"],
)
def test_captions_with_a_byte_order_mark_are_decoded_by_it(encoded: bytes, tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_jpeg(src / "a.jpg")
    (src / "a.txt").write_bytes(encoded)
    out = tmp_path / "data"
    build_dataset(_request(src, out))
    (written_file,) = out.glob("*_sks dog/a.txt")
    written = written_file.read_bytes()
    assert b"\x00" not in written
    assert written.decode("utf-8") == CAPTION + "\n"


def test_undecodable_captions_are_refused_all_of_them_by_name(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for name in ("gbk", "odd16", "nobom16", "fine"):
        write_jpeg(src / f"{name}.jpg", seed=len(name))
    (src / "gbk.txt").write_bytes("一只狗".encode("gbk"))  # no BOM, not UTF-8
    (src / "odd16.txt").write_bytes(codecs.BOM_UTF16_LE + b"s\x00k\x00s")  # half a character
    (src / "nobom16.txt").write_bytes("sks dog".encode("utf-16-le"))  # valid UTF-8, full of NULs
    (src / "fine.txt").write_text("sks dog\n", encoding="utf-8")
    out = tmp_path / "data"
    with pytest.raises(DatasetError, match="3 caption file") as err:
        build_dataset(_request(src, out))
    text = "\n".join(err.value.evidence)
    for name in ("gbk.txt", "odd16.txt", "nobom16.txt"):
        assert name in text
    assert "fine.txt" not in text
    assert not out.exists()


def test_scan_sources_reports_the_encoding_it_used(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_jpeg(src / "a.jpg")
    (src / "a.txt").write_bytes(codecs.BOM_UTF16_LE + "sks dog".encode("utf-16-le"))
    image = scan_sources(src).images[0]
    assert image.caption_text == "sks dog" and image.caption_problem is None
    assert image.caption_note is not None and "UTF-16" in image.caption_note


def test_lint_names_a_utf16_caption_sd_scripts_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "train" / "3_sks dog"
    write_jpeg(folder / "a.jpg", seed=1)
    write_jpeg(folder / "b.jpg", seed=2)
    (folder / "a.txt").write_bytes(codecs.BOM_UTF16_LE + "sks dog".encode("utf-16-le"))
    (folder / "b.txt").write_bytes("sks dog".encode("utf-16-le"))  # no BOM: NULs in UTF-8
    images = {i.name: i for i in read_training_dir(tmp_path / "train").subsets[0].images}
    a, b = images["a.jpg"].caption_error, images["b.jpg"].caption_error
    assert a is not None and "a.txt" in a and "UTF-16" in a
    assert b is not None and "b.txt" in b and "NUL" in b
    code, out = run_cli(["dataset", "lint", str(tmp_path / "train"), "--model", "sd15"], capsys)
    assert code == 1 and "a.txt" in out and "b.txt" in out
