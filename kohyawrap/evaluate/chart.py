"""The arithmetic of a loss chart, shared by the PNG plot (``drawing``) and the terminal chart
(``console.evaluate``): value ranges, round tick values, and a character grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Series = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Bounds:
    x_min: float
    x_max: float
    y_min: float
    y_max: float


def bounds(series: Sequence[Series]) -> Bounds | None:
    """The range of every finite point, with a little room above and below; None when empty."""
    xs = [x for s in series for x, y in s if math.isfinite(y)]
    ys = [y for s in series for _, y in s if math.isfinite(y)]
    if not xs:
        return None
    low, high = min(ys), max(ys)
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    return Bounds(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, low - pad, high + pad)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values (1, 2, 2.5 or 5 times a power of ten) between ``low`` and ``high``."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def scale(value: float, low: float, high: float, start: float, end: float) -> float:
    """``value`` in [low, high] mapped onto [start, end]."""
    if high == low:
        return (start + end) / 2
    return start + (value - low) * (end - start) / (high - low)


@dataclass(frozen=True)
class TextChart:
    """A chart as lines of characters; ``markers`` names the character of each series."""

    lines: tuple[str, ...]
    markers: tuple[tuple[str, str], ...]  # (marker, series name)


def text_chart(
    series: Sequence[tuple[str, str, Series]], width: int = 64, height: int = 14
) -> TextChart | None:
    """``(name, marker, points)`` series drawn on a ``width`` x ``height`` grid with a y axis of
    round values on the left and the x range below; later series are drawn over earlier ones."""
    b = bounds([points for _, _, points in series])
    if b is None:
        return None
    grid = [[" "] * width for _ in range(height)]
    for _name, marker, points in series:
        for x, y in points:
            if not math.isfinite(y):
                continue
            col = round(scale(x, b.x_min, b.x_max, 0, width - 1))
            row = round(scale(y, b.y_min, b.y_max, height - 1, 0))
            grid[row][col] = marker
    labels = {
        round(scale(t, b.y_min, b.y_max, height - 1, 0)): f"{t:.4g}"
        for t in nice_ticks(b.y_min, b.y_max, 4)
    }
    pad = max((len(v) for v in labels.values()), default=0)
    lines = [f"{labels.get(r, ''):>{pad}} ┤{''.join(row)}" for r, row in enumerate(grid)]
    left, right = f"{b.x_min:g}", f"{b.x_max:g}"
    lines.append(" " * pad + " └" + "─" * width)
    lines.append(" " * (pad + 2) + left + right.rjust(width - len(left)))
    return TextChart(tuple(lines), tuple((marker, name) for name, marker, _ in series))


def thin(points: Series, most: int) -> list[tuple[float, float]]:
    """At most ``most`` points: the mean of equal stretches (a plot cannot show more anyway)."""
    if len(points) <= most:
        return list(points)
    out = []
    for i in range(most):
        part = points[i * len(points) // most : (i + 1) * len(points) // most]
        finite = [y for _, y in part if math.isfinite(y)]
        y = sum(finite) / len(finite) if finite else math.nan
        out.append((part[-1][0], y))
    return out
