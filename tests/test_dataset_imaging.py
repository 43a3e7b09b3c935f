"""The pillow adapter on real files: headers, conversions, refusals, fingerprints."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from kohyawrap.dataset.imaging import (
    ImageProblem,
    file_phash,
    perceptual_hash,
    read_header,
    write_image,
)
from tests.fixtures.images import (
    textured,
    write_bomb_png,
    write_cmyk_jpeg,
    write_jpeg,
    write_palette_png,
    write_png16,
    write_rgba_png,
    write_rotated_jpeg,
    write_text_as_image,
    write_truncated_jpeg,
    write_zero_bytes,
)


def test_header_reads_size_mode_format_orientation(tmp_path: Path) -> None:
    header = read_header(write_rotated_jpeg(tmp_path / "r.jpg", upright=(60, 80)))
    assert (header.width, header.height, header.format, header.orientation) == (80, 60, "JPEG", 6)
    assert header.upright_size == (60, 80)
    assert read_header(write_cmyk_jpeg(tmp_path / "c.jpg")).mode == "CMYK"
    assert read_header(write_png16(tmp_path / "d.png")).mode.startswith("I")


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        (write_zero_bytes, "empty file"),
        (write_text_as_image, "not an image"),
        (write_bomb_png, "claims 3,600,000,000 pixels"),
    ],
)
def test_bad_files_are_refused_with_a_reason(tmp_path: Path, writer: object, message: str) -> None:
    path = writer(tmp_path / "x.png")  # type: ignore[operator]
    with pytest.raises(ImageProblem, match=message):
        read_header(path)


def test_pixel_limit_below_pillows_own(tmp_path: Path) -> None:
    # 12000 x 11000 = 132 MP: Pillow only warns (limit 179 MP); our 120 MP limit refuses it.
    with pytest.raises(ImageProblem, match=r"132,000,000 pixels \(limit 120,000,000\)"):
        read_header(write_bomb_png(tmp_path / "b.png", 12000, 11000))


def test_truncated_jpeg_fails_on_decode_not_on_header(tmp_path: Path) -> None:
    src = write_truncated_jpeg(tmp_path / "t.jpg")
    assert read_header(src).format == "JPEG"
    result = write_image(str(src), str(tmp_path / "out.jpg"), "copy", (128, 96), "JPEG")
    assert not result.ok and result.error and "truncated" in result.error
    assert not (tmp_path / "out.jpg").exists()


def test_copy_is_byte_for_byte(tmp_path: Path) -> None:
    src = write_jpeg(tmp_path / "a.jpg", (96, 64))
    result = write_image(str(src), str(tmp_path / "b.jpg"), "copy", (96, 64), "JPEG")
    assert result.ok and result.size == (96, 64)
    assert (tmp_path / "b.jpg").read_bytes() == src.read_bytes()


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    src = write_rotated_jpeg(tmp_path / "r.jpg", upright=(60, 80))
    result = write_image(str(src), str(tmp_path / "o.jpg"), "convert", (60, 80), "JPEG")
    with Image.open(tmp_path / "o.jpg") as out:
        assert out.size == (60, 80) and result.size == (60, 80)
        assert out.getexif().get(0x0112) is None
        red, blue = out.getpixel((3, 3)), out.getpixel((56, 76))
    assert red[0] > 200 and red[2] < 60  # red marker back at the top left
    assert blue[2] > 200 and blue[0] < 60


def test_downscale_uses_the_requested_size(tmp_path: Path) -> None:
    src = write_jpeg(tmp_path / "big.jpg", (400, 300), seed=3)
    result = write_image(str(src), str(tmp_path / "s.jpg"), "convert", (100, 75), "JPEG")
    with Image.open(tmp_path / "s.jpg") as out:
        assert out.size == (100, 75) and out.mode == "RGB"
    assert result.size == (100, 75)


def _convert(tmp_path: Path, src: Path, fmt: str = "PNG") -> Image.Image:
    with Image.open(src) as image:
        size = image.size
    write_image(str(src), str(tmp_path / f"out.{fmt.lower()}"), "convert", size, fmt)
    out = Image.open(tmp_path / f"out.{fmt.lower()}")
    out.load()
    return out


def test_alpha_is_put_on_white(tmp_path: Path) -> None:
    out = _convert(tmp_path, write_rgba_png(tmp_path / "a.png"))
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255)  # transparent corner: white, not black
    assert out.getpixel((20, 15)) == (255, 0, 0)


def test_palette_transparency_is_put_on_white(tmp_path: Path) -> None:
    out = _convert(tmp_path, write_palette_png(tmp_path / "p.png"))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((20, 15)) == (200, 30, 30)


def test_16_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    out = _convert(tmp_path, write_png16(tmp_path / "d.png", value=32768))
    assert out.mode == "L"
    assert out.getpixel((60, 40)) == 128  # 32768 / 256; a plain convert would clip to 255
    assert out.getpixel((1, 1)) == 32  # 8192 / 256


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    out = _convert(tmp_path, write_cmyk_jpeg(tmp_path / "c.jpg"), "JPEG")
    assert out.mode == "RGB"


def test_conversion_is_deterministic(tmp_path: Path) -> None:
    src = write_rotated_jpeg(tmp_path / "r.jpg")
    a = write_image(str(src), str(tmp_path / "a.jpg"), "convert", (30, 40), "JPEG")
    b = write_image(str(src), str(tmp_path / "b.jpg"), "convert", (30, 40), "JPEG")
    assert a.sha256 == b.sha256
    assert (tmp_path / "a.jpg").read_bytes() == (tmp_path / "b.jpg").read_bytes()


def _png_bytes(image: Image.Image) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    buffer.seek(0)
    return buffer


def test_perceptual_hash_matches_copies_and_separates_pictures(tmp_path: Path) -> None:
    original = textured((240, 160), seed=11)
    copy_small = _png_bytes(original.resize((120, 80)))
    jpeg = io.BytesIO()
    original.save(jpeg, "JPEG", quality=70)
    jpeg.seek(0)
    base = perceptual_hash(_png_bytes(original))
    assert (base ^ perceptual_hash(copy_small)).bit_count() <= 3
    assert (base ^ perceptual_hash(jpeg)).bit_count() <= 3
    others = [perceptual_hash(_png_bytes(textured((240, 160), seed=s))) for s in range(20, 30)]
    assert min((base ^ h).bit_count() for h in others) > 6


def test_file_phash_is_none_for_unreadable_files(tmp_path: Path) -> None:
    assert file_phash(str(write_zero_bytes(tmp_path / "z.jpg"))) is None
    assert isinstance(file_phash(str(write_jpeg(tmp_path / "a.jpg"))), int)
