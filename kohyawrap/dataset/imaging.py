"""The pillow adapter: read image headers, write training images, fingerprint them.

Everything that opens an image goes through here, so the rules live in one place: a pixel limit
of our own (decompression bombs are refused with a message, never a crash), EXIF orientation
applied (sd-scripts ignores it), every colour mode turned into 8-bit RGB or L (sd-scripts'
``convert("RGB")`` drops alpha onto black and clips 16-bit values to white), and JPEG ``draft()``
decoding so a 4000 px photo is decoded at the scale it will be saved at.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# 120 megapixels: above any camera a LoRA dataset comes from (100 MP medium format), far below what
# would exhaust memory. Pillow's own limit (89 MP warning, 179 MP error) is replaced by this one.
PIXEL_LIMIT = 120_000_000
JPEG_QUALITY = 95
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (EXIF 2.32, tag 274).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Formats we keep as they are; anything else Pillow reads is converted.
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: phone JPEGs with an extra preview frame appended
KEPT_FORMATS = (*JPEG_FORMATS, "PNG", "WEBP", "BMP")
KEPT_MODES = ("RGB", "L")


class ImageProblem(Exception):
    """An image we cannot or will not read; the message says why, in user words."""


@dataclass(frozen=True)
class Header:
    """What an image's header says, read without decoding its pixels."""

    width: int  # as stored (before EXIF orientation)
    height: int
    mode: str
    format: str
    orientation: int = 1

    @property
    def rotated(self) -> bool:
        """True when the EXIF orientation swaps width and height."""
        return self.orientation in (5, 6, 7, 8)

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied."""
        return (self.height, self.width) if self.rotated else (self.width, self.height)


@dataclass(frozen=True)
class Written:
    """The result of writing one training image."""

    dest: str
    ok: bool
    error: str | None = None
    sha256: str = ""
    phash: int = 0
    size: tuple[int, int] = (0, 0)


@contextmanager
def _open(path: Path | io.BytesIO) -> Iterator[Image.Image]:
    """Open an image under our pixel limit; every failure becomes an ImageProblem."""
    with warnings.catch_warnings():
        # Pillow warns above 89 MP; our own limit below decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as err:
            found = re.search(r"\((\d+) pixels\)", str(err))
            claimed = f"{int(found.group(1)):,}" if found else "too many"
            raise ImageProblem(
                f"refused: the header claims {claimed} pixels (limit {PIXEL_LIMIT:,}): "
                "a decompression bomb or a damaged file"
            ) from None
        except UnidentifiedImageError:
            raise ImageProblem("not an image (Pillow cannot identify its format)") from None
        except (OSError, ValueError, SyntaxError) as err:
            raise ImageProblem(f"unreadable ({err})") from None
        with image:
            pixels = image.width * image.height
            if pixels > PIXEL_LIMIT:
                raise ImageProblem(
                    f"refused: {image.width}x{image.height} is {pixels:,} pixels (limit "
                    f"{PIXEL_LIMIT:,}): a decompression bomb or a damaged file"
                )
            yield image


def read_header(path: Path) -> Header:
    """Size, mode, format and EXIF orientation of an image, without decoding its pixels."""
    if path.stat().st_size == 0:
        raise ImageProblem("empty file (0 bytes)")
    with _open(path) as image:
        return Header(
            image.width, image.height, image.mode, image.format or "", _orientation(image)
        )


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block must not hide a usable image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# ---------------------------------------------------------------------------------------------
# Writing training images (runs in worker processes: plain arguments, plain results)


def write_image(source: str, dest: str, action: str, size: tuple[int, int], fmt: str) -> Written:
    """Copy (``action="copy"``) or convert ``source`` into ``dest``; never raises for bad images.

    A copy is byte-for-byte but still decoded once (cheaply) so a truncated file is caught here
    and not by sd-scripts mid-run. A conversion orients, converts to 8-bit RGB/L, downsizes to
    ``size`` (upright w, h) and saves as ``fmt``.
    """
    try:
        if action == "copy":
            data = Path(source).read_bytes()
            out_size = _verify(data)
        else:
            data, out_size = _convert(Path(source), size, fmt)
        phash = perceptual_hash(io.BytesIO(data))
    except ImageProblem as err:
        return Written(dest, ok=False, error=str(err))
    except (OSError, ValueError, SyntaxError) as err:  # Pillow's decode errors (truncated data)
        return Written(dest, ok=False, error=f"damaged image data ({err})")
    Path(dest).write_bytes(data)
    return Written(dest, True, None, hashlib.sha256(data).hexdigest(), phash, out_size)


def _verify(data: bytes) -> tuple[int, int]:
    with _open(io.BytesIO(data)) as image:
        size = image.size
        if image.format in JPEG_FORMATS:
            # Still reads every byte of the scan (so truncation shows), at 1/8 of the work.
            image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    return size


def _convert(source: Path, size: tuple[int, int], fmt: str) -> tuple[bytes, tuple[int, int]]:
    with _open(source) as image:
        orientation = _orientation(image)
        stored = (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
        box = None
        if image.format in JPEG_FORMATS and stored != image.size:
            # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT data: most of the speed-up.
            drafted = image.draft(None, stored)
            box = drafted[1] if drafted else None
        image.load()
        # Resize straight from the decoded image (no full-size copy for RGB/L sources).
        out = image if image.mode in KEPT_MODES else to_8bit(image)
        if out.size != stored:
            out = out.resize(stored, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        if orientation in _TRANSPOSE:
            out = out.transpose(_TRANSPOSE[orientation])
        if out is image:
            out = image.copy()  # the file is closed when the block ends
    buffer = io.BytesIO()
    # No EXIF, no ICC, no timestamps: the same input gives the same bytes.
    if fmt == "JPEG":
        out.save(buffer, "JPEG", quality=JPEG_QUALITY)
    elif fmt == "WEBP":
        out.save(buffer, "WEBP", quality=JPEG_QUALITY, method=4)
    else:
        out.save(buffer, "PNG")
    return buffer.getvalue(), out.size


def to_8bit(image: Image.Image) -> Image.Image:
    """An 8-bit RGB or L copy of ``image``: alpha put on white, 16-bit scaled (not clipped)."""
    mode = image.mode
    if mode in KEPT_MODES:
        return image.copy()
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16") or mode == "I":
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if mode == "F":
        return image.convert("L")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def upright_rgb(path: Path, at_least: int) -> Image.Image:
    """An image as a model should see it: upright (EXIF), 8-bit RGB, alpha put on white.

    JPEGs are decoded at the smallest DCT scale that keeps both sides at least ``at_least``
    pixels (a 4000 px photo for a 448 px tagger decodes at 1/4 scale). Raises ImageProblem.
    """
    with _open(path) as image:
        orientation = _orientation(image)
        if image.format in JPEG_FORMATS:
            image.draft("RGB", (at_least, at_least))
        image.load()
        out = to_8bit(image).convert("RGB")
    if orientation in _TRANSPOSE:
        out = out.transpose(_TRANSPOSE[orientation])
    return out


# ---------------------------------------------------------------------------------------------
# Fingerprints


def perceptual_hash(source: Path | io.BytesIO) -> int:
    """A 64-bit average hash: which cells of an 8x8 greyscale thumbnail are brighter than the
    median. Re-encoded or resized copies of a picture differ in a few bits, other pictures in
    about half; thresholding at the median keeps about half the bits set for any picture with
    detail (nearly flat pictures get few bits and are not compared)."""
    with _open(source) as image:
        if image.format in JPEG_FORMATS:
            image.draft("L", (64, 64))  # luminance only, at 1/8 scale: a few milliseconds
        orientation = _orientation(image)
        grey = to_8bit(image).convert("L")
    if orientation in _TRANSPOSE:
        grey = grey.transpose(_TRANSPOSE[orientation])
    pixels = list(grey.resize((8, 8), Image.Resampling.BOX).tobytes())  # 64 bytes, one per cell
    ranked = sorted(pixels)
    median = (ranked[31] + ranked[32]) / 2
    bits = 0
    for value in pixels:
        bits = (bits << 1) | (1 if value > median else 0)
    return bits


def file_phash(path: str) -> int | None:
    """The perceptual hash of an image file, or None when it cannot be read (process pools)."""
    try:
        return perceptual_hash(Path(path))
    except (ImageProblem, OSError, ValueError, SyntaxError):
        return None
