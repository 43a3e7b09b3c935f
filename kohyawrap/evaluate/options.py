"""What the grid renders: ``--grid epochs=6,8,10,strengths=0,0.5,1,seeds=5`` as a value.

The tutorial's manual check is "strengths 0.5 / 0.7 / 0.8 / 1.0, at least five seeds each,
compare epochs"; strength 0 (the base model) is added so every row has its reference image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from kohyawrap.errors import UsageError

DEFAULT_STRENGTHS = (0.0, 0.5, 0.7, 0.8, 1.0)
DEFAULT_SEEDS = 5
AUTO_CHECKPOINTS = 4  # how many checkpoints "epochs=auto" picks (spread over the run)

# Bounds against hostile or mistaken input: a grid is minutes of GPU time per few hundred images.
MAX_EPOCHS = 30
MAX_STRENGTHS = 12
MAX_SEEDS = 20
MAX_BATCH = 16
STRENGTH_RANGE = (-4.0, 4.0)  # sd-scripts accepts any multiplier; beyond +-4 it is a typo

EpochChoice = Literal["auto", "all", "listed"]


@dataclass(frozen=True)
class GridOptions:
    """The grid of one run: checkpoints x strengths x seeds x prompts."""

    enabled: bool = True
    choice: EpochChoice = "auto"
    epochs: tuple[int, ...] = ()  # with choice "listed"
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    seeds: int = DEFAULT_SEEDS
    prompts: tuple[str, ...] = ()  # --sample-prompts lines; () = made from the trigger words
    batch_size: int = 1  # images per generation batch (same strength); 1 fits every card

    @property
    def seed_values(self) -> tuple[int, ...]:
        """The seeds used: 1..N, so a row of the grid is easy to regenerate by hand."""
        return tuple(range(1, self.seeds + 1))

    def describe(self) -> str:
        """``epochs auto, strengths 0/0.5/0.7/0.8/1, 5 seeds``."""
        if not self.enabled:
            return "off"
        epochs = ",".join(str(e) for e in self.epochs) if self.choice == "listed" else self.choice
        strengths = "/".join(f"{s:g}" for s in self.strengths)
        return f"epochs {epochs}, strengths {strengths}, {self.seeds} seed(s)"

    def to_json(self) -> dict[str, Any]:
        """As JSON data (in the run plan)."""
        return {
            "enabled": self.enabled,
            "choice": self.choice,
            "epochs": list(self.epochs),
            "strengths": list(self.strengths),
            "seeds": self.seeds,
            "prompts": list(self.prompts),
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_json(cls, data: Any) -> GridOptions:
        """The inverse of :meth:`to_json`; a plan recorded before grids existed had none."""
        if not isinstance(data, dict):
            return cls(enabled=False)
        choice = str(data.get("choice", "auto"))
        return cls(
            enabled=bool(data.get("enabled", False)),
            choice="all" if choice == "all" else "listed" if choice == "listed" else "auto",
            epochs=tuple(int(e) for e in data.get("epochs") or ()),
            strengths=tuple(float(s) for s in data.get("strengths") or DEFAULT_STRENGTHS),
            seeds=int(data.get("seeds", DEFAULT_SEEDS)),
            prompts=tuple(str(p) for p in data.get("prompts") or ()),
            batch_size=int(data.get("batch_size", 1)),
        )


def parse_grid(text: str, base: GridOptions | None = None) -> GridOptions:
    """``epochs=6,8,10,strengths=0,0.5,1,seeds=5,batch=4`` -> options (keys may be left out).

    A comma separates list items and keys alike: an item with ``=`` starts a new key. ``epochs``
    is ``auto`` (the default: up to four, spread over the run), ``all``, or epoch numbers.
    """
    given: dict[str, list[str]] = {}
    key = ""
    for raw in text.replace(";", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        if "=" in item:
            key, _, item = (part.strip() for part in item.partition("="))
            if key not in _PARSERS:
                raise UsageError(
                    f"--grid: unknown key {key!r}",
                    hint="keys: epochs, strengths, seeds, batch; e.g. --grid epochs=6,10,seeds=5",
                )
            if key in given:
                raise UsageError(f"--grid: {key} given twice")
            given[key] = []
        if not key:
            raise UsageError(
                f"--grid: {item!r} has no key",
                hint="write key=value, e.g. --grid epochs=6,10,strengths=0,0.7,1,seeds=5",
            )
        if item:
            given[key].append(item)
    options = base or GridOptions()
    for key, values in given.items():
        if not values:
            raise UsageError(f"--grid: {key}= has no value")
        options = _PARSERS[key](options, values)
    return replace(options, enabled=True)


def _epochs(options: GridOptions, values: list[str]) -> GridOptions:
    if len(values) == 1 and values[0].lower() in ("auto", "all"):
        choice: EpochChoice = "all" if values[0].lower() == "all" else "auto"
        return replace(options, choice=choice, epochs=())
    numbers = sorted({_int(v, "epochs", 1, 100_000) for v in values})
    if len(numbers) > MAX_EPOCHS:
        raise UsageError(f"--grid: at most {MAX_EPOCHS} epochs, not {len(numbers)}")
    return replace(options, choice="listed", epochs=tuple(numbers))


def _strengths(options: GridOptions, values: list[str]) -> GridOptions:
    low, high = STRENGTH_RANGE
    found: list[float] = []
    for value in values:
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"--grid: strength {value!r} is not a number") from None
        if not math.isfinite(number) or not low <= number <= high:
            raise UsageError(f"--grid: strength {value} is outside {low:g}..{high:g}")
        if round(number, 3) not in found:
            found.append(round(number, 3))
    if len(found) > MAX_STRENGTHS:
        raise UsageError(f"--grid: at most {MAX_STRENGTHS} strengths, not {len(found)}")
    return replace(options, strengths=tuple(sorted(found)))


def _seeds(options: GridOptions, values: list[str]) -> GridOptions:
    if len(values) != 1:
        raise UsageError("--grid: seeds= is a count (seeds=5), not a list")
    return replace(options, seeds=_int(values[0], "seeds", 1, MAX_SEEDS))


def _batch(options: GridOptions, values: list[str]) -> GridOptions:
    if len(values) != 1:
        raise UsageError("--grid: batch= is one number")
    return replace(options, batch_size=_int(values[0], "batch", 1, MAX_BATCH))


def _int(value: str, key: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"--grid: {key} value {value!r} is not a whole number") from None
    if not low <= number <= high:
        raise UsageError(f"--grid: {key} must be {low}..{high}, not {number}")
    return number


_PARSERS = {"epochs": _epochs, "strengths": _strengths, "seeds": _seeds, "batch": _batch}
