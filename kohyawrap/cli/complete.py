"""Shell completion of preset names for ``--gpu`` and ``--model``, from the catalog.

Click completes commands and options by itself (``docs/cli.md``: shell completion); these add
the values: shipped presets and the user's own. A catalog that cannot be read completes nothing
(completion must never print an error into the user's prompt).
"""

from __future__ import annotations

from collections.abc import Iterable

import click
from click.shell_completion import CompletionItem


def _matching(names: Iterable[str], incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(name) for name in sorted(names) if name.startswith(incomplete)]


def gpu_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """GPU preset names that start with what was typed."""
    from kohyawrap.errors import KohyawrapError
    from kohyawrap.presets import load_catalog

    try:
        return _matching(load_catalog().gpus, incomplete)
    except KohyawrapError:
        return []


def model_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Model preset names that start with what was typed."""
    from kohyawrap.errors import KohyawrapError
    from kohyawrap.presets import load_catalog

    try:
        return _matching(load_catalog().models, incomplete)
    except KohyawrapError:
        return []
