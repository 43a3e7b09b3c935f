"""Contact sheets: the grid laid out for the eye. One sheet per prompt and seed; rows are
checkpoints (epochs), columns are strengths, each cell one image. The same seed across a sheet
means every difference between cells is the LoRA's doing.

This module only places things (boxes and labels in pixels); ``drawing`` paints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kohyawrap.evaluate.gridplan import GridPlan, cell_name

CELL = 192  # pixels across one image on the sheet
LABEL_WIDTH = 150  # the row labels' column
HEADER = 34  # the column labels' row
TITLE = 40
GAP = 6
MARGIN = 12


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Label:
    """Text centred vertically at (x, y), left-aligned (``anchor`` "lm") or centred ("mm")."""

    x: int
    y: int
    text: str
    anchor: str = "lm"


@dataclass(frozen=True)
class ContactSheet:
    """What one sheet shows: images[row][column] are file names (None: not drawn / missing)."""

    name: str  # file name of the sheet: sheet_p01_d3.png
    prompt: int
    seed: int
    rows: tuple[str, ...]  # checkpoint labels
    columns: tuple[str, ...]  # strength labels
    images: tuple[tuple[str | None, ...], ...]

    @property
    def title(self) -> str:
        return f"prompt {self.prompt + 1}, seed {self.seed}"


@dataclass(frozen=True)
class SheetLayout:
    """Pixel positions of everything on a sheet."""

    width: int
    height: int
    cells: tuple[tuple[Box, str | None], ...]
    labels: tuple[Label, ...]


def contact_sheets(plan: GridPlan, available: set[str] | None = None) -> tuple[ContactSheet, ...]:
    """A sheet per prompt and seed of ``plan``; images not in ``available`` (when given) are None."""
    sheets = []
    columns = tuple(f"strength {s:g}" + (" (base)" if s == 0 else "") for s in plan.strengths)
    for p in range(len(plan.prompts)):
        for seed in plan.seeds:
            images = []
            for checkpoint in plan.checkpoints:
                row = []
                for strength in plan.strengths:
                    name = cell_name(checkpoint.key, strength, seed, p)
                    row.append(name if available is None or name in available else None)
                images.append(tuple(row))
            sheets.append(
                ContactSheet(
                    f"sheet_p{p + 1:02d}_d{seed}.png",
                    p,
                    seed,
                    tuple(c.label for c in plan.checkpoints),
                    columns,
                    tuple(images),
                )
            )
    return tuple(sheets)


def layout(sheet: ContactSheet, aspect: tuple[int, int] = (1, 1)) -> SheetLayout:
    """Where the title, labels and cells of ``sheet`` go; cells keep the images' aspect."""
    width_ratio, height_ratio = aspect
    cell_w = CELL
    cell_h = max(1, round(CELL * height_ratio / max(1, width_ratio)))
    columns, rows = len(sheet.columns), len(sheet.rows)
    top = MARGIN + TITLE + HEADER
    left = MARGIN + LABEL_WIDTH
    labels = [Label(MARGIN, MARGIN + TITLE // 2, sheet.title)]
    for c, text in enumerate(sheet.columns):
        labels.append(Label(left + c * (cell_w + GAP) + cell_w // 2, MARGIN + TITLE + HEADER // 2,
                            text, "mm"))  # fmt: skip
    cells: list[tuple[Box, str | None]] = []
    for r, text in enumerate(sheet.rows):
        y = top + r * (cell_h + GAP)
        labels.append(Label(MARGIN, y + cell_h // 2, text))
        for c in range(columns):
            box = Box(left + c * (cell_w + GAP), y, cell_w, cell_h)
            cells.append((box, sheet.images[r][c]))
    width = left + columns * (cell_w + GAP) - GAP + MARGIN
    height = top + rows * (cell_h + GAP) - GAP + MARGIN
    return SheetLayout(width, height, tuple(cells), tuple(labels))


def fit(size: tuple[int, int], box: Box) -> Box:
    """The largest box of ``size``'s aspect inside ``box``, centred."""
    width, height = size
    scale = min(box.width / max(1, width), box.height / max(1, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return Box(box.x + (box.width - w) // 2, box.y + (box.height - h) // 2, w, h)


def strength_columns(strengths: Sequence[float]) -> tuple[str, ...]:
    """Column labels for a list of strengths."""
    return tuple(f"strength {s:g}" for s in strengths)
