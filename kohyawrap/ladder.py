"""The out-of-memory ladder: what to change, one rung at a time, when a run hits "CUDA out of
memory" (``kohyawrap train --retry-oom N``). The rungs are data, per model family, in
``presets/ladders.toml``; this module reads them and applies one to a run's settings. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kohyawrap.errors import ConfigError
from kohyawrap.presets import read_toml
from kohyawrap.resources import presets_dir

LADDERS = "ladders.toml"
_LR_KEYS = ("learning_rate", "unet_lr", "text_encoder_lr")
_SCALINGS = ("none", "sqrt", "linear")


@dataclass(frozen=True)
class Rung:
    """One change that lowers VRAM use, with where the idea comes from."""

    name: str
    source: str
    set: tuple[tuple[str, Any], ...] = ()
    halve: tuple[str, ...] = ()
    minimum: int = 1
    lr_scaling: str = "none"
    skip_if: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Ladder:
    rungs: tuple[Rung, ...]
    adaptive_optimizers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """A rung applied to settings: the options it changes (``--set`` pairs)."""

    rung: Rung
    changes: tuple[tuple[str, Any], ...]

    def describe(self) -> str:
        """``gradient checkpointing (--set gradient_checkpointing=true)``"""
        return f"{self.rung.name} ({as_sets(self.changes)})"


def _rung(data: Mapping[str, Any], where: str) -> Rung:
    try:
        scaling = str(data.get("lr_scaling", "none"))
        if scaling not in _SCALINGS:
            raise ValueError(f"lr_scaling {scaling!r} is not one of {', '.join(_SCALINGS)}")
        if not data.get("set") and not data.get("halve"):
            raise ValueError("a rung needs `set` or `halve`")
        return Rung(
            name=str(data["name"]),
            source=str(data["source"]),
            set=tuple((str(k), v) for k, v in dict(data.get("set") or {}).items()),
            halve=tuple(str(k) for k in data.get("halve") or ()),
            minimum=int(data.get("min", 1)),
            lr_scaling=scaling,
            skip_if=tuple(
                (str(k), tuple(str(w).lower() for w in words))
                for k, words in dict(data.get("skip_if") or {}).items()
            ),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"bad rung in the OOM ladder: {err}", where=where) from err


def load_ladder(family: str, path: Path | None = None) -> Ladder:
    """The rungs for ``family`` (the ``default`` ladder when it has none of its own)."""
    path = path if path is not None else presets_dir() / LADDERS
    data, _ = read_toml(path)
    rungs = data.get(family) or data.get("default") or []
    if not isinstance(rungs, list):
        raise ConfigError(f"[[{family}]] must be a list of rungs", where=str(path))
    adaptive = tuple(str(a).lower() for a in data.get("adaptive_optimizers") or ())
    return Ladder(tuple(_rung(r, f"{path} [[{family}]]") for r in rungs), adaptive)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _scaled_lr(value: Any, factor: float) -> Any:
    def one(v: Any) -> Any:
        x = _number(v)
        return float(f"{x * factor:.3g}") if x is not None else v

    return [one(v) for v in value] if isinstance(value, list) else one(value)


def _halved(rung: Rung, settings: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], float] | None:
    first = _number(settings.get(rung.halve[0]))
    if first is None or first / 2 < rung.minimum:
        return None
    factor = max(rung.minimum, int(first) // 2) / first
    changes: list[tuple[str, Any]] = []
    for key in rung.halve:
        value = _number(settings.get(key))
        if value is None:
            continue
        scaled = value * factor
        changes.append((key, int(scaled) if isinstance(settings[key], int) else scaled))
    return changes, factor


def apply_rung(rung: Rung, settings: Mapping[str, Any], ladder: Ladder) -> Step | None:
    """What ``rung`` changes in ``settings``, or None when it changes nothing (or must be skipped)."""
    for key, words in rung.skip_if:
        if any(word in str(settings.get(key, "")).lower() for word in words):
            return None
    changes = [(k, v) for k, v in rung.set if settings.get(k) != v]
    if rung.halve:
        halved = _halved(rung, settings)
        if halved is None:
            return None
        changes, factor = halved
        optimizer = str(settings.get("optimizer_type") or "AdamW").lower()
        if rung.lr_scaling != "none" and not optimizer.startswith(ladder.adaptive_optimizers):
            power = 0.5 if rung.lr_scaling == "sqrt" else 1.0
            changes += [
                (key, _scaled_lr(settings[key], math.pow(factor, power)))
                for key in _LR_KEYS
                if key in settings
            ]
    return Step(rung, tuple(changes)) if changes else None


def next_step(ladder: Ladder, settings: Mapping[str, Any], tried: Sequence[str]) -> Step | None:
    """The first rung not ``tried`` yet (by name) that changes something."""
    for rung in ladder.rungs:
        if rung.name in tried:
            continue
        step = apply_rung(rung, settings, ladder)
        if step is not None:
            return step
    return None


def as_sets(changes: Sequence[tuple[str, Any]]) -> str:
    """``--set a=1 --set b=true``: the changes as the command line (and a preset) takes them."""
    import tomlkit

    return " ".join(f"--set {k}={tomlkit.item(v).as_string()}" for k, v in changes)
