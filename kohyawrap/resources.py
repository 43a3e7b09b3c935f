"""Where the shipped ``templates/`` and ``presets/`` folders are.

In a checkout they sit at the top level beside the package; in an installed wheel hatchling's
``force-include`` puts them inside the package. Both are looked for, the wheel layout first.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"kohyawrap is installed without its {name}/ folder (looked in {_PACKAGE})"
    )


def templates_dir() -> Path:
    """The folder holding the Jinja templates."""
    return _find("templates")


def presets_dir() -> Path:
    """The folder holding the shipped GPU and model presets."""
    return _find("presets")


def data_dir() -> Path:
    """The folder holding facts about sd-scripts as JSON (argument lists, dataset schema)."""
    return _PACKAGE / "data"
