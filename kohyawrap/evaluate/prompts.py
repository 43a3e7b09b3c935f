"""Prompt lines in sd-scripts' syntax: ``a photo of sks dog --n blurry --w 512 --h 512 --d 3``.

sd-scripts splits a line at ``" --"``: the first part is the prompt, each other part is an option
``<key> <value>`` (``n`` negative prompt, ``w``/``h`` size, ``d`` seed, ``s`` steps, ``l`` CFG
scale; gen_img.py adds ``am`` network multipliers). Training samples (train_util.line_to_prompt_dict)
and gen_img.py / sdxl_gen_img.py read the same syntax.

The grid's prompts come from the dataset's concept folders (``<repeats>_<trigger> <class>``) or from
the user's ``--sample-prompts`` file, read here with bounds and checks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kohyawrap.errors import UsageError
from kohyawrap.models import RenderedRun

MAX_PROMPT_LINES = 20
MAX_LINE_CHARS = 1000
MAX_CONCEPTS = 3  # prompts are made for the first three concepts of a dataset
# Options the grid keeps from a user's line; seed and multiplier are the grid's own.
KEPT_OPTIONS = ("n", "w", "h", "s", "l")
# gen_img.py expands {a|b} into several prompts (sd-dynamic-prompts syntax): one grid cell would
# become several images under one name.
_DYNAMIC = re.compile(r"\{[^{}]*\|[^{}]*\}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class PromptDefaults:
    """What a prompt line gets when it does not say: negative prompt, size, steps, CFG scale."""

    negative: str
    width: int
    height: int
    steps: int
    cfg: float

    def options(self) -> tuple[tuple[str, str], ...]:
        return (
            ("n", self.negative),
            ("w", str(self.width)),
            ("h", str(self.height)),
            ("s", str(self.steps)),
            ("l", f"{self.cfg:g}"),
        )


@dataclass(frozen=True)
class Concept:
    """A concept folder's words: the whole phrase, and its trigger and class parts."""

    phrase: str  # "sks dog": the folder's class tokens (used for images without a caption)
    trigger: str
    class_word: str


def split_line(line: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``prompt --n neg --w 512`` -> ("prompt", (("n", "neg"), ("w", "512"))), as sd-scripts splits."""
    text, *parts = line.split(" --")
    options = []
    for part in parts:
        key, _, value = part.strip().partition(" ")
        if key:
            options.append((key.lower(), value.strip()))
    return text.strip(), tuple(options)


def join_line(text: str, options: Sequence[tuple[str, str]]) -> str:
    """The inverse of :func:`split_line`."""
    return text + "".join(f" --{key} {value}" for key, value in options)


def read_prompt_file(text: str, source: str) -> tuple[str, ...]:
    """The prompt lines of a ``--sample-prompts`` file (``#`` comments and blank lines skipped).

    Refused, naming the line: more than 20 prompts, a line over 1000 characters, an empty prompt,
    control characters, or ``{a|b}`` variants (gen_img.py would make several images of one line).
    """
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        if len(line) > MAX_LINE_CHARS:
            raise UsageError(f"prompt line is over {MAX_LINE_CHARS} characters", where=where)
        if _CONTROL.search(line):
            raise UsageError("prompt line holds control characters", where=where)
        prompt, _ = split_line(line)
        if not prompt or prompt.startswith("--"):
            raise UsageError("prompt line has options but no prompt", where=where)
        if _DYNAMIC.search(prompt):
            raise UsageError(
                "{a|b} variants are not supported in sample prompts",
                where=where,
                hint="write one line per variant",
            )
        lines.append(line)
    if not lines:
        raise UsageError("no prompts in the file (only blank or # lines)", where=source)
    if len(lines) > MAX_PROMPT_LINES:
        raise UsageError(
            f"{len(lines)} prompts; at most {MAX_PROMPT_LINES} (each one multiplies the grid)",
            where=source,
        )
    return tuple(lines)


def _clean(phrase: str) -> str:
    # " --" would start an option and braces a variant: neither belongs in a concept's words.
    text = phrase.replace("--", " ").replace("{", " ").replace("}", " ")
    return " ".join(text.split())


def concepts_from_folders(
    folders: Sequence[str], reg_classes: Sequence[str] = ()
) -> tuple[Concept, ...]:
    """Concepts from the class tokens of the training folders (``10_sks dog`` -> ``sks dog``).

    The class word is a regularisation folder's class when the phrase ends with it, else the last
    of several words; the rest is the trigger.
    """
    classes = [_clean(c).casefold() for c in reg_classes if _clean(c)]
    found: list[Concept] = []
    for folder in folders:
        phrase = _clean(folder)
        if not phrase or any(c.phrase == phrase for c in found):
            continue
        words = phrase.split()
        class_word = next((c for c in classes if phrase.casefold().endswith(" " + c)), "") or (
            words[-1] if len(words) > 1 else ""
        )
        trigger = phrase[: len(phrase) - len(class_word)].strip() if class_word else phrase
        found.append(Concept(phrase, trigger, phrase[len(trigger) :].strip()))
    return tuple(found)


def concept_prompts(concepts: Sequence[Concept]) -> tuple[str, ...]:
    """The grid's default prompts: the concept plainly, and in a scene (two per concept)."""
    prompts = []
    for concept in concepts[:MAX_CONCEPTS]:
        prompts += [f"a photo of {concept.phrase}", f"{concept.phrase}, outdoors, natural light"]
    return tuple(prompts)


def defaults_from(sample_prompts: str, width: int, height: int) -> PromptDefaults:
    """The options of the run's rendered sample prompts (their first line), else sensible ones.

    The grid then draws at the settings the in-training samples used.
    """
    fallback = PromptDefaults("lowres, blurry, bad anatomy", width, height, 28, 7.0)
    for raw in sample_prompts.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        options = dict(split_line(line)[1])
        return PromptDefaults(
            negative=options.get("n", fallback.negative),
            width=_number(options.get("w"), width),
            height=_number(options.get("h"), height),
            steps=_number(options.get("s"), fallback.steps),
            cfg=_float(options.get("l"), fallback.cfg),
        )
    return fallback


def _number(value: str | None, default: int) -> int:
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else default


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


def completed(line: str, defaults: PromptDefaults, *, keep: Sequence[str] = KEPT_OPTIONS) -> str:
    """A prompt line with the options it does not give taken from ``defaults``.

    Options outside ``keep`` are dropped (the grid sets the seed and the multiplier itself).
    """
    text, options = split_line(line)
    own = [(k, v) for k, v in options if k in keep]
    given = {k for k, _ in own}
    return join_line(text, [*own, *((k, v) for k, v in defaults.options() if k not in given)])


def training_prompts(rendered: str, user_lines: Sequence[str], header: str) -> str:
    """The in-training ``sample_prompts.txt`` when the user gave ``--sample-prompts``: their lines,
    completed with the rendered file's size, steps, CFG and negative prompt, seed N for line N
    unless the line sets one."""
    first = defaults_from(rendered, 512, 512)
    out = [f"# {line}" for line in header.splitlines()]
    for number, line in enumerate(user_lines, start=1):
        keep = (*KEPT_OPTIONS, "d")
        full = completed(line, first, keep=keep)
        if "d" not in dict(split_line(full)[1]):
            full += f" --d {number}"
        out.append(full)
    return "\n".join(out) + "\n"


def with_sample_prompts(rendered: RenderedRun, user_lines: Sequence[str]) -> RenderedRun:
    """The run's files with ``sample_prompts.txt`` made from the user's lines (when the run
    samples at all); unchanged without user lines. ``train`` and ``reproduce`` both apply it."""
    from kohyawrap.render import SAMPLE_PROMPTS

    rendered_text = rendered.files.get(SAMPLE_PROMPTS)
    if not user_lines or rendered_text is None:
        return rendered
    header = (
        "Sample prompts for sd-scripts (--sample_prompts), from --sample-prompts; lines starting "
        "with # are skipped.\nOptions a line does not set come from the presets: --n, --w/--h, "
        "--l, --s; --d is the line's number."
    )
    files = {**rendered.files, SAMPLE_PROMPTS: training_prompts(rendered_text, user_lines, header)}
    return replace(rendered, files=dict(sorted(files.items())))
