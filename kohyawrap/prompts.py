"""Sample prompts: the user's own file (``--set sample_prompts=FILE``), checked the way sd-scripts
reads it, and the prompts kohyawrap writes when there is none.

sd-scripts (library/train_util.py ``load_prompts`` at the pinned commit) picks the syntax by the
file's extension: ``.txt`` is one prompt per line (empty lines and lines starting with ``#``
skipped, options after `` --``), ``.toml`` is ``[prompt]`` defaults with ``[[prompt.subset]]``
entries, ``.json`` is a list of prompt strings or tables. Any other extension fails at the first
sample, after an epoch of training. The user's file is copied into the run byte for byte under
``sample_prompts<ext>``, so it travels with the configs and a recorded run re-renders it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kohyawrap.errors import UsageError
from kohyawrap.fileio import read_user_text

if TYPE_CHECKING:
    from kohyawrap.dataset.scan import TrainingDir

PROMPT_FILE_STEM = "sample_prompts"
SYNTAXES = (".txt", ".toml", ".json")
PROMPT_FILES = tuple(PROMPT_FILE_STEM + ext for ext in SYNTAXES)
# Scenes for a subject (estimates: varied framing and light show what the LoRA learned beyond
# its training photos). One subject gets all four; several get the first two each.
SCENES = (
    "{s}, portrait, looking at the camera, soft light",
    "{s}, outdoors in natural light, full body",
    "{s} in a city street at night",
    "close-up photo of {s}, studio lighting",
)
MAX_SUBJECTS = 4


@dataclass(frozen=True)
class PromptFile:
    """A user's prompt file as it will sit in the run: its name there, its text, its prompts."""

    name: str  # sample_prompts.txt / .toml / .json
    text: str
    count: int


def read_prompt_file(path: Path) -> PromptFile:
    """Read and check the prompt file at ``path`` (bounded, UTF-8, sd-scripts' syntax), or a
    UsageError naming the file and what sd-scripts would do with it."""
    ext = path.suffix.lower()
    if ext not in SYNTAXES:
        raise UsageError(
            f"sample prompts file {path}: sd-scripts reads .txt, .toml or .json prompt files, "
            f"not {ext or 'a file without an extension'} (it would stop at the first sample, "
            "after training an epoch)",
            hint="save the prompts as a .txt file, one prompt per line",
        )
    text = read_user_text(path, "sample prompts file")
    try:
        count = len(prompts_in(ext, text))
    except ValueError as err:
        raise UsageError(f"sample prompts file {path}: {err}") from None
    if count == 0:
        raise UsageError(
            f"sample prompts file {path} has no prompt in it",
            hint="one prompt per line; lines starting with # are skipped",
        )
    return PromptFile(PROMPT_FILE_STEM + ext, text, count)


def prompts_in(ext: str, text: str) -> list[Any]:
    """The prompts sd-scripts reads from ``text`` with syntax ``ext``, or ValueError saying why
    it would fail."""
    if ext == ".txt":
        # sd-scripts' test: a stripped line is not empty and the raw line does not start with #.
        return [line.strip() for line in text.splitlines(True) if line.strip() and line[0] != "#"]
    if ext == ".toml":
        return _toml_prompts(text)
    if ext == ".json":
        return _json_prompts(text)
    raise ValueError(f"unknown prompt syntax {ext!r}")


def _toml_prompts(text: str) -> list[Any]:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        data = tomlkit.parse(text).unwrap()
    except TOMLKitError as err:
        raise ValueError(f"not valid TOML: {err}") from None
    table = data.get("prompt")
    subsets = table.get("subset") if isinstance(table, dict) else None
    if not isinstance(subsets, list) or not all(isinstance(s, dict) for s in subsets):
        raise ValueError(
            "a .toml prompt file needs a [prompt] table with [[prompt.subset]] entries "
            "(sd-scripts reads data['prompt']['subset'])"
        )
    return subsets


def _json_prompts(text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"not valid JSON: {err}") from None
    if not isinstance(data, list) or not all(
        isinstance(p, str) or (isinstance(p, dict) and isinstance(p.get("prompt"), str))
        for p in data
    ):
        raise ValueError(
            'a .json prompt file must be a list of prompts: strings, or tables with a "prompt"'
        )
    return data


def count_prompts(name: str, text: str) -> int:
    """How many sample images one sampling round makes from the prompt file ``name``."""
    ext = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    try:
        return len(prompts_in(ext, text))
    except ValueError:
        return 0


def parse_sets(
    texts: Iterable[str], script: str
) -> tuple[tuple[tuple[str, Any], ...], PromptFile | None]:
    """``--set`` values as overrides, with ``sample_prompts=FILE`` taken out and read: the file
    is the run's prompt file (see :func:`read_prompt_file`), not a path for the host."""
    from kohyawrap.presets import parse_override, parse_overrides

    rest: list[str] = []
    prompt_path: Path | None = None
    for text in texts:
        key, _, _ = text.partition("=")
        if key.strip() == "sample_prompts":
            value = parse_override(text, script)[1]
            prompt_path = Path(str(value)).expanduser()
        else:
            rest.append(text)
    overrides = parse_overrides(rest, script)
    return overrides, read_prompt_file(prompt_path) if prompt_path is not None else None


def subjects_from_dataset(tdir: TrainingDir) -> tuple[str, ...]:
    """Who the sample prompts show: each concept folder's class tokens ("sks dog" from
    ``10_sks dog``, i.e. trigger and class word as `dataset build` names them), in order."""
    tokens = [s.class_tokens.strip() for s in tdir.subsets if not s.is_reg]
    return tuple(dict.fromkeys(t for t in tokens if t))


def generated_prompts(subjects: Sequence[str], fallback: str) -> list[str]:
    """Prompts for ``subjects`` in a few scenes; ``fallback`` (the LoRA's name) when none."""
    clean = list(dict.fromkeys(s for s in (_safe(s) for s in subjects) if s))[:MAX_SUBJECTS]
    if not clean:
        subject = _safe(fallback.replace("_", " ")) or "subject"
        return [f"a photo of {subject}", f"{subject}, outdoors, natural light"]
    scenes = SCENES if len(clean) == 1 else SCENES[:2]
    return [scene.format(s=subject) for subject in clean for scene in scenes]


def _safe(text: str) -> str:
    # sd-scripts splits a prompt line at " --": keep a subject from turning into an option.
    return " ".join(text.replace("--", " ").split())
