"""The pillow adapter of the evaluation: thumbnails for the effect check, contact sheets, the loss
plot. Images come from a host we do not trust: each is opened under a pixel limit and a damaged
one becomes a grey "unreadable" cell, never a crash."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from kohyawrap.evaluate.chart import bounds, nice_ticks, scale, thin
from kohyawrap.evaluate.effect import THUMB_SIZE
from kohyawrap.evaluate.loss import LossCurve
from kohyawrap.evaluate.sheets import ContactSheet, SheetLayout, fit
from kohyawrap.fileio import atomic_write

MAX_PIXELS = 40_000_000  # a generated image is a few megapixels; more is damage or malice
BACKGROUND = (250, 250, 248)
INK = (30, 30, 30)
MUTED = (150, 150, 150)
MISSING = (225, 225, 225)
SERIES_COLOURS = {
    "loss/current": (170, 190, 225),
    "loss/average": (25, 80, 180),
    "epoch average": (220, 110, 20),
    "validation": (30, 150, 60),
}


class Unreadable(Exception):
    """An image that cannot be opened (damaged, not an image, or too large)."""


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: no file on disk, no network, the same on every machine.
    return ImageFont.load_default(size=size)


def open_rgb(path: Path) -> Image.Image:
    """An image as 8-bit RGB, refused above MAX_PIXELS; Unreadable when it cannot be read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise Unreadable(f"{image.width}x{image.height} is too large")
                rgb: Image.Image = image.convert("RGB")
                return rgb
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise Unreadable(str(err)) from None
        except Image.DecompressionBombError as err:
            raise Unreadable(str(err)) from None


def thumbnail(path: Path) -> bytes:
    """The effect check's view of an image: 64 x 64 grayscale pixels (see ``effect``)."""
    grey = open_rgb(path).convert("L")
    return grey.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX).tobytes()


def image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            width, height = image.size
            return int(width), int(height)
    except (UnidentifiedImageError, OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Contact sheets


def draw_sheet(sheet: ContactSheet, places: SheetLayout, images: Path, out: Path) -> None:
    """Paint ``sheet`` laid out as ``places``, reading its images from ``images``, into ``out``."""
    canvas = Image.new("RGB", (places.width, places.height), BACKGROUND)
    pen = ImageDraw.Draw(canvas)
    title, label = _font(20), _font(16)
    for i, text in enumerate(places.labels):
        pen.text((text.x, text.y), text.text, fill=INK, font=title if i == 0 else label,
                 anchor=text.anchor)  # fmt: skip
    small = _font(13)
    for box, name in places.cells:
        cell = None
        if name is not None:
            try:
                cell = open_rgb(images / name)
            except (Unreadable, FileNotFoundError):
                cell = None
        if cell is None:
            pen.rectangle(
                (box.x, box.y, box.x + box.width - 1, box.y + box.height - 1), fill=MISSING
            )
            pen.text((box.x + box.width // 2, box.y + box.height // 2),
                     "not drawn" if name is None else "missing", fill=MUTED, font=small, anchor="mm")  # fmt: skip
            continue
        target = fit(cell.size, box)
        canvas.paste(cell.resize((target.width, target.height), Image.Resampling.LANCZOS),
                     (target.x, target.y))  # fmt: skip
    _save_png(canvas, out)


def _save_png(image: Image.Image, out: Path) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    atomic_write(out, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# The loss plot

PLOT = (960, 460)
PLOT_MARGINS = (72, 44, 24, 56)  # left, top (the legend), right, bottom


def draw_loss_plot(curve: LossCurve, out: Path, *, marks: Sequence[tuple[int, str]] = ()) -> bool:
    """loss/current (light), loss/average, epoch averages and validation loss against steps;
    ``marks`` are (step, label) vertical lines (checkpoints, the over-fitting point). False when
    there is nothing to plot."""
    per_epoch = curve.steps_per_epoch or 1.0
    series = [
        ("loss/current", thin(curve.current, 600)),
        ("loss/average", thin(curve.average, 600)),
        ("epoch average", [(e * per_epoch, v) for e, v in curve.epochs]),
        ("validation", [(e * per_epoch, v) for e, v in curve.validation]),
    ]
    series = [(name, pts) for name, pts in series if pts]
    b = bounds([pts for _, pts in series])
    if b is None:
        return False
    width, height = PLOT
    left, top, right, bottom = PLOT_MARGINS
    x0, x1, y0, y1 = left, width - right, height - bottom, top
    canvas = Image.new("RGB", PLOT, BACKGROUND)
    pen = ImageDraw.Draw(canvas)
    font = _font(14)

    def at(x: float, y: float) -> tuple[float, float]:
        return scale(x, b.x_min, b.x_max, x0, x1), scale(y, b.y_min, b.y_max, y0, y1)

    for tick in nice_ticks(b.y_min, b.y_max, 5):
        _, y = at(b.x_min, tick)
        pen.line((x0, y, x1, y), fill=(232, 232, 232))
        pen.text((x0 - 6, y), f"{tick:.4g}", fill=INK, font=font, anchor="rm")
    for tick in nice_ticks(b.x_min, b.x_max, 8):
        x, _ = at(tick, b.y_min)
        pen.line((x, y0, x, y0 + 4), fill=INK)
        pen.text((x, y0 + 8), f"{tick:g}", fill=INK, font=font, anchor="ma")
    for step, text in marks:
        x, _ = at(step, b.y_min)
        if x0 <= x <= x1:
            pen.line((x, y1, x, y0), fill=(200, 200, 200))
            pen.text((x + 3, y1 + 2), text, fill=MUTED, font=_font(12), anchor="la")
    for name, pts in series:
        colour = SERIES_COLOURS[name]
        xy = [at(x, y) for x, y in pts if math.isfinite(y)]
        if len(xy) > 1 and name in ("loss/current", "loss/average"):
            pen.line(xy, fill=colour, width=1 if name == "loss/current" else 2)
        for x, y in xy if name not in ("loss/current", "loss/average") else ():
            pen.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
    pen.rectangle((x0, y1, x1, y0), outline=INK)
    pen.text(((x0 + x1) / 2, height - 18), "step", fill=INK, font=font, anchor="mm")
    legend_x = x0
    for name, _ in series:
        pen.rectangle((legend_x, 14, legend_x + 14, 24), fill=SERIES_COLOURS[name])
        pen.text((legend_x + 20, 19), name, fill=INK, font=font, anchor="lm")
        legend_x += 30 + int(pen.textlength(name, font=font))
    _save_png(canvas, out)
    return True
