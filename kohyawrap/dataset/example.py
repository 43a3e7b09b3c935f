"""A small, deterministic folder of synthetic "photos" for ``kohyawrap demo`` and the tests.

The pictures are drawn with pillow from fixed seeds (a sky-to-ground gradient, a subject and
some clutter), so every call writes the same bytes. The set exercises the builder: mixed sizes
and aspect ratios, an EXIF-rotated JPEG, a PNG, an upper-case extension, a name with a space,
and captions for some images but not all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class _Photo:
    name: str
    size: tuple[int, int]  # upright (width, height)
    caption: str | None = None
    rotate_exif: bool = False  # stored sideways with EXIF orientation 6


_PHOTOS = (
    _Photo("IMG_0001.jpg", (768, 1024), "a red toy robot on a wooden table", rotate_exif=True),
    _Photo("IMG_0002.JPG", (1024, 768)),
    _Photo("studio.png", (640, 640), "a red toy robot, studio light, plain background"),
    _Photo("beach day.jpeg", (1152, 768)),
    _Photo("IMG_0005.jpg", (768, 1152), "a red toy robot standing in the grass"),
    _Photo("IMG_0006.jpg", (896, 896)),
    _Photo("IMG_0007.jpg", (1216, 832), "a red toy robot next to a coffee cup"),
    _Photo("IMG_0008.jpg", (832, 1216)),
)


def make_example_photos(dest: Path, count: int = 8) -> Path:
    """Write ``count`` (1-8) example photos, some with ``.txt`` captions, into ``dest``; return it.

    The same call always writes the same files, byte for byte.
    """
    if not 1 <= count <= len(_PHOTOS):
        raise ValueError(f"count must be between 1 and {len(_PHOTOS)}, not {count}")
    dest.mkdir(parents=True, exist_ok=True)
    for seed, photo in enumerate(_PHOTOS[:count]):
        _write(dest, photo, synthetic_photo(photo.size, seed))
    return dest


def synthetic_photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A deterministic RGB picture of ``size``: gradient sky and ground, a subject, clutter."""
    rng = random.Random(seed)  # noqa: S311 - reproducible pictures, not secrets
    width, height = size
    image = _gradient(size, rng)
    draw = ImageDraw.Draw(image)
    for _ in range(24):  # clutter: makes every picture's perceptual hash different
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(max(2, width // 40), max(3, width // 8))
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x - r, y - r, x + r, y + r), fill=colour)
    cx, cy = width // 2 + rng.randrange(-width // 8, width // 8), height // 2
    body = (cx - width // 8, cy - height // 8, cx + width // 8, cy + height // 5)
    draw.rectangle(body, fill=(200, 30, 30), outline=(60, 0, 0), width=max(1, width // 200))
    head = (cx - width // 14, cy - height // 4, cx + width // 14, cy - height // 8)
    draw.ellipse(head, fill=(220, 220, 230))
    return image.filter(ImageFilter.GaussianBlur(radius=max(1, width // 400)))


def _gradient(size: tuple[int, int], rng: random.Random) -> Image.Image:
    ramp = Image.linear_gradient("L").resize(size)
    sky = Image.new("RGB", size, (rng.randrange(60, 140), rng.randrange(120, 200), 235))
    ground = Image.new("RGB", size, (rng.randrange(60, 120), rng.randrange(90, 150), 40))
    return Image.composite(ground, sky, ramp)


def _write(dest: Path, photo: _Photo, image: Image.Image) -> None:
    path = dest / photo.name
    if photo.name.lower().endswith(".png"):
        image.save(path, "PNG")
    elif photo.rotate_exif:
        exif = Image.Exif()
        exif[_ORIENTATION_TAG] = 6  # "rotate 90° clockwise to display": stored lying on its side
        image.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=90, exif=exif)
    else:
        image.save(path, "JPEG", quality=90)
    if photo.caption is not None:
        (dest / (path.stem + ".txt")).write_text(photo.caption + "\n", encoding="utf-8")
