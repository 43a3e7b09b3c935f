"""Output in sd-scripts' real formats: rich log records, plain prints and tqdm bars.

Observed in the captured runs (tests/data/sdscripts/sample_run*_stdout.log): logging goes
to stderr through rich, which without a terminal draws 80 columns (or $COLUMNS): a 19-character time
(blank when unchanged), the level padded to 8, the message wrapped inside its column and
``file.py:NNN`` on the right. ``console_log_simple`` prints bare messages on stdout instead. tqdm
redraws its bar on stderr with ``\\r`` and no newline.
"""

from __future__ import annotations

import os
import sys
import time
import unicodedata

_INDENT = 29  # time (19) + space + level (8) + space


def _cells(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _fold(word: str, width: int) -> list[str]:
    """Cut a word longer than the column into column-wide pieces (as rich does)."""
    pieces, current = [], ""
    for char in word:
        if _cells(current + char) > width:
            pieces.append(current)
            current = ""
        current += char
    return [*pieces, current]


def wrap(message: str, width: int) -> list[str]:
    """Greedy word wrap at ``width`` terminal cells, keeping the message's own line breaks."""
    rows: list[str] = []
    for paragraph in message.split("\n"):
        indent = paragraph[: len(paragraph) - len(paragraph.lstrip(" "))]
        line = indent
        for word in paragraph.split():
            candidate = f"{line} {word}" if line.strip() else line + word
            if _cells(candidate) <= width:
                line = candidate
                continue
            if line.strip():
                rows.append(line)
            line = ""
            if _cells(word) > width:
                *full, line = _fold(word, width)
                rows += full
            else:
                line = word
        rows.append(line)
    return rows


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _cells(text))


class Console:
    """Writes like sd-scripts, flushing every write so stdout and stderr interleave in order."""

    def __init__(self) -> None:
        self.simple = False
        self._last_time = ""
        self._bar_len = 0
        columns = os.environ.get("COLUMNS", "")
        self.width = int(columns) if columns.isdigit() and int(columns) >= 60 else 80

    def print(self, text: str = "") -> None:
        """A plain ``print`` (stdout)."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def log(self, level: str, message: str, where: str) -> None:
        """A logging record from ``where`` (``train_util.py:2158``)."""
        if self.simple:
            self.print(message)
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        shown = stamp if stamp != self._last_time else " " * 19
        self._last_time = stamp
        width = self.width - _INDENT - 1 - len(where)
        rows = wrap(message, width)
        lines = [f"{shown} {level:<8} {_pad(rows[0], width)} {where}"]
        lines += [" " * _INDENT + _pad(row, self.width - _INDENT) for row in rows[1:]]
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()

    def info(self, message: str, where: str) -> None:
        """An INFO record."""
        self.log("INFO", message, where)

    def warning(self, message: str, where: str) -> None:
        """A WARNING record."""
        self.log("WARNING", message, where)

    def error(self, message: str, where: str) -> None:
        """An ERROR record."""
        self.log("ERROR", message, where)

    def bar(self, text: str, end: str = "") -> None:
        """Redraw the tqdm bar: ``\\r`` + frame, padded over a longer previous frame."""
        sys.stderr.write("\r" + text + " " * max(0, self._bar_len - len(text)) + end)
        sys.stderr.flush()
        self._bar_len = 0 if end else len(text)


def format_num(value: float) -> str:
    """A postfix number as tqdm shows it: 3 significant digits, short exponent, or str()."""
    short = f"{value:.3g}".replace("e+0", "e+").replace("e-0", "e-")
    plain = str(value)
    return short if len(short) < len(plain) else plain


def _interval(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


_BLOCKS = " ▏▎▍▌▋▊▉█"


def frame(desc: str, n: int, total: int, elapsed: float, postfix: str = "") -> str:
    """One tqdm frame: ``steps:  50%|█████     | 40/80 [03:44<03:44,  5.61s/it, avr_loss=1.1]``."""
    frac = n / total if total else 0.0
    full, part = divmod(int(frac * 10 * 8), 8)
    bar = _BLOCKS[-1] * full
    if full < 10:
        bar += _BLOCKS[part] + " " * (10 - full - 1)
    if n and elapsed > 0:
        per_it = elapsed / n
        rate = f"{per_it:5.2f}s/it" if per_it >= 1 else f"{1 / per_it:5.2f}it/s"
        remaining = _interval(per_it * (total - n))
    else:
        rate, remaining = "?it/s", "?"
    tail = f", {postfix}" if postfix else ""
    return (
        f"{desc}: {frac * 100:3.0f}%|{bar}| {n}/{total} "
        f"[{_interval(elapsed)}<{remaining}, {rate}{tail}]"
    )
