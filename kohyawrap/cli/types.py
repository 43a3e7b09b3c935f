"""Click parameter types for the values people type: prices, sizes, durations, names.

Each refuses a value that cannot work (a negative price, zero VRAM, ``nan``, an empty LoRA name)
before anything is rendered or rented, with a message about the value itself. Commands share
them, so ``plan --price``, ``train --max-dollars`` and ``presets show --vram`` refuse alike.
The list of refusals is in docs/cli.md ("Names and values that are refused, and why").
"""

from __future__ import annotations

import math
import unicodedata
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    _Type = click.ParamType[Any]  # generic from click 8.2; plain before (runtime below)
else:
    _Type = click.ParamType


class Number(_Type):
    """A finite number above (or, with ``inclusive``, at least) ``minimum``, in ``unit``."""

    name = "number"

    def __init__(self, minimum: float, unit: str, *, inclusive: bool = False) -> None:
        self.minimum = minimum
        self.unit = unit
        self.inclusive = inclusive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float | int) and not isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        if number < self.minimum or (number == self.minimum and not self.inclusive):
            need = f"{self.minimum:g} or more" if self.inclusive else f"more than {self.minimum:g}"
            self.fail(f"must be {need} {self.unit}, not {value}", param, ctx)
        return number


class OutputName(_Type):
    """A LoRA's file name (``output_name``): any script, no path, nothing a file system refuses."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from kohyawrap.names import output_name_problem

        text = str(value)
        problem = output_name_problem(text)
        if problem:
            self.fail(f"{text!r}: {problem}", param, ctx)
        return text


class Words(_Type):
    """A trigger or class word: text on one line, which sd-scripts' prompt syntax can carry."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not text.strip():
            self.fail("is empty", param, ctx)
        if any(unicodedata.category(c) == "Cc" for c in text):
            self.fail(f"{text!r} holds a control character (a tab or a line break)", param, ctx)
        if " --" in f" {text}":
            self.fail(
                f"{text!r} holds ' --', which sd-scripts reads as the start of a prompt option",
                param,
                ctx,
            )
        return " ".join(text.split())


class CaptionExtension(_Type):
    """A caption file extension such as ``.txt``: the dataset builder's rule, at the prompt."""

    name = "extension"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from kohyawrap.dataset.layout import check_caption_extension
        from kohyawrap.errors import UsageError

        try:
            check_caption_extension(str(value))
        except UsageError as err:
            self.fail(f"{value!r} is not a caption extension: {err.hint}", param, ctx)
        return str(value)


class Resolution(_Type):
    """A training resolution as sd-scripts writes it: "N" or "W,H", whole pixels above 0."""

    name = "resolution"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        parts = [p.strip() for p in str(value).split(",")]
        if len(parts) > 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            self.fail(
                f"{value!r} is not a size: write it as 512 or 768,1024 (width,height)", param, ctx
            )
        return ",".join(parts)


PRICE = Number(0, "dollars per hour", inclusive=True)
DOLLARS = Number(0, "dollars")
HOURS = Number(0, "hours")
SECONDS = Number(0, "seconds")
MINUTES = Number(0, "minutes")
VRAM_GB = Number(0, "GB")
BANDWIDTH = Number(0, "MB/s")
OUTPUT_NAME = OutputName()
WORDS = Words()
CAPTION_EXTENSION = CaptionExtension()
RESOLUTION = Resolution()
