"""The layering in docs (design.md): the pure core talks to nothing, rich lives only in console/,
click only in cli/, and lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kohyawrap"

PURE_CORE = [
    "errors.py",
    "models.py",
    "sdscripts.py",
    "presets.py",
    "render.py",
    "validate.py",
    "forecast.py",
    "models_fetch.py",
    "logparse.py",
    "tensorboard.py",
    "safetensors_header.py",
    "dataset/buckets.py",
    "dataset/layout.py",
    "dataset/lint.py",
    "launcher/layout.py",
]
WORLD = {"subprocess", "socket", "paramiko", "urllib", "http", "huggingface_hub", "git", "requests"}
HIGHER = {"kohyawrap.cli", "kohyawrap.console", "kohyawrap.launcher", "kohyawrap.hosts"}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def roots(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_talks_to_nothing(module: str) -> None:
    names = imports(PACKAGE / module)
    assert not roots(names) & (WORLD | {"rich", "click"}), names
    higher = {n for n in names if any(n == h or n.startswith(h + ".") for h in HIGHER)}
    if module.startswith("launcher/"):
        higher = {n for n in higher if not n.startswith("kohyawrap.launcher")}
    assert not higher, f"{module} imports a higher layer: {higher}"


def test_rich_only_in_console_and_click_only_in_cli() -> None:
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        top = roots(imports(path))
        if "rich" in top:
            assert rel.startswith("console/"), rel
        if "click" in top:
            assert rel.startswith("cli/") or rel == "__main__.py", rel


def test_console_and_launcher_never_import_the_cli() -> None:
    for folder in ("console", "launcher", "hosts", "dataset"):
        for path in (PACKAGE / folder).rglob("*.py"):
            assert not any(n.startswith("kohyawrap.cli") for n in imports(path)), path
