"""Sources a reader can open: nothing in the repository cites the developers' private notes
(``shared/reference``, "field notes"); facts cite public URLs, listed in docs/sources.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "docs" / "sources.md"
PRIVATE = re.compile(r"shared/reference|field[_ ]notes|config_file_semantics", re.IGNORECASE)
# Tests that compare the committed copies with the developers' originals when those happen to be
# beside the checkout (../shared); they name that folder on purpose and cite nothing with it.
READS_SHARED_ON_PURPOSE = {
    "tests/test_logparse.py",
    "tests/test_tensorboard.py",
    "tests/test_validate.py",
    "tests/test_render_families.py",
    "tests/test_sources.py",
}


def repository_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if listed.returncode != 0:  # an sdist without .git: walk the tree
        skip = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        return [
            p.relative_to(ROOT).as_posix()
            for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        ]
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


def test_nothing_cites_the_private_notes() -> None:
    offenders = []
    for name in repository_files():
        if name in READS_SHARED_ON_PURPOSE:
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # images, tensorboard events, safetensors
        offenders += [
            f"{name}:{n}: {line.strip()}"
            for n, line in enumerate(text.splitlines(), 1)
            if PRIVATE.search(line)
        ]
    assert offenders == [], "cite the public source (docs/sources.md) instead:\n" + "\n".join(
        offenders
    )


def test_the_check_finds_a_citation(tmp_path: Path) -> None:
    assert PRIVATE.search("price_range = [0.3, 0.4]  # RunPod listings (field_notes §10)")
    assert PRIVATE.search("see ../shared/reference/sd-scripts/sample_run")
    assert not PRIVATE.search("RunPod $0.34 spot (deploybase.ai, 2026-03 [32])")


def test_every_sd_scripts_link_is_pinned_to_the_commit_kohyawrap_installs() -> None:
    from kohyawrap.sdscripts import PINNED_COMMIT

    text = SOURCES.read_text(encoding="utf-8")
    links = re.findall(r"https://github\.com/kohya-ss/sd-scripts/blob/([0-9a-f]+)/", text)
    assert links and set(links) == {PINNED_COMMIT}


def test_docs_cite_existing_entries() -> None:
    keys = set(re.findall(r"^\| \[(\d+)\] \|", SOURCES.read_text("utf-8"), flags=re.MULTILINE))
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page == SOURCES:
            continue
        text = page.read_text("utf-8")
        if "sources.md" not in text:
            continue
        cited = set(re.findall(r"(?<![\w`])\[(\d+)\](?![(\w])", text))
        assert cited <= keys, f"{page.name} cites {sorted(cited - keys)}, not in docs/sources.md"
