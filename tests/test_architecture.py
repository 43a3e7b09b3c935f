"""The layering in design.md, enforced on the code's imports (lazy ones inside functions included):

- no import cycles anywhere in the package;
- a lower layer never imports a higher one (core < hosts < launcher < console < cli);
- the pure core talks to nothing (no network, no subprocess, no rich, no click);
- rich only in console/, click only in cli/.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kohyawrap"

PURE_CORE = [
    "errors.py",
    "models.py",
    "names.py",
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
    "dataset/caption.py",
    "optimizers.py",
    "launcher/layout.py",
    "launcher/runplan.py",
    "launcher/manifest.py",
    "launcher/budget.py",
    "ladder.py",
    "slowrun.py",
    "launcher/states.py",
    "launcher/legs.py",
    "launcher/installfail.py",
    "launcher/queuefile.py",
    "evaluate/options.py",
    "evaluate/prompts.py",
    "evaluate/gridplan.py",
    "evaluate/record.py",
    "evaluate/loss.py",
    "evaluate/effect.py",
    "evaluate/sheets.py",
    "evaluate/chart.py",
]
WORLD = {"subprocess", "socket", "paramiko", "urllib", "http", "huggingface_hub", "git", "requests"}
# Adapters over these live outside the pure core (dataset/imaging.py, dataset/tagger.py).
HEAVY = {"PIL", "numpy", "onnxruntime"}

# Higher layers may import lower ones, never the reverse. Unlisted modules are core (layer 0).
LAYERS = {
    "kohyawrap.hosts": 1,
    "kohyawrap.launcher": 2,
    "kohyawrap.console": 3,
    "kohyawrap.cli": 4,
    "kohyawrap.__main__": 4,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def internal_imports(name: str) -> set[str]:
    """The package's own modules that module ``name`` imports (``from a import b`` may name a
    module ``a.b`` or an attribute of ``a``: whichever exists)."""
    known = modules()
    out = set()
    for imported in imports(known[name]):
        if imported in known and imported != name:
            out.add(imported)
    return out


def layer(name: str) -> int:
    for prefix, rank in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            return rank
    return 0


def roots(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def package_graph() -> dict[str, set[str]]:
    """Each of the package's modules -> the package's modules it imports."""
    return {name: internal_imports(name) for name in modules()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    # A checker that can never fail proves nothing: a planted cycle, also through a third module.
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_never_import_higher_ones() -> None:
    bad = []
    for name in modules():
        for imported in internal_imports(name):
            if layer(imported) > layer(name):
                bad.append(
                    f"{name} (layer {layer(name)}) imports {imported} (layer {layer(imported)})"
                )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_talks_to_nothing(module: str) -> None:
    names = imports(PACKAGE / module)
    assert not roots(names) & (WORLD | HEAVY | {"rich", "click"}), names
    internal = {n for n in names if n.startswith("kohyawrap.")}
    higher = {n for n in internal if layer(n) > 0 and not n.startswith("kohyawrap.launcher")}
    assert not higher, f"{module} imports a higher layer: {higher}"


def test_rich_only_in_console_and_click_only_in_cli() -> None:
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        top = roots(imports(path))
        if "rich" in top:
            assert rel.startswith("console/"), rel
        if "click" in top:
            assert rel.startswith("cli/") or rel == "__main__.py", rel


# CLI modules every command may use; a command module never imports another command's module.
SHARED_CLI = {"kohyawrap.cli", "kohyawrap.cli.options", "kohyawrap.cli.types",
              "kohyawrap.cli.complete", "kohyawrap.cli.runspec"}  # fmt: skip


def test_cli_commands_do_not_import_each_other() -> None:
    bad = []
    for name in modules():
        if not name.startswith("kohyawrap.cli.") or name in SHARED_CLI:
            continue
        for imported in internal_imports(name):
            if imported.startswith("kohyawrap.cli.") and imported not in SHARED_CLI:
                bad.append(f"{name} imports {imported}")
    assert not bad, "\n".join(bad)
