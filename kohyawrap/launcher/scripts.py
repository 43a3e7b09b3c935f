"""Render the remote shell scripts in ``templates/remote/`` (bash, every value shell-quoted).

Values reach a script only through the ``q`` filter (one quoted word) or ``join_q`` (a quoted
argument list); StrictUndefined turns a missing value into an error instead of an empty string.
"""

from __future__ import annotations

import shlex
from functools import cache
from typing import TYPE_CHECKING, Any

from kohyawrap.resources import templates_dir

if TYPE_CHECKING:
    import jinja2


@cache
def _env() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "remote")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - shell scripts, not HTML; values go through the q filter
    )
    env.filters["q"] = lambda value: shlex.quote("" if value is None else str(value))
    env.filters["join_q"] = lambda values: " ".join(shlex.quote(str(v)) for v in values)
    return env


def render_script(name: str, **values: Any) -> str:
    """The text of ``templates/remote/<name>.sh.j2`` with ``values`` filled in."""
    return _env().get_template(f"{name}.sh.j2").render(**values)


def parse_kv(output: str) -> dict[str, str]:
    """The ``KW key=value`` lines a remote script printed, as a dict (later lines win)."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("KW ") and "=" in line:
            key, _, value = line[3:].partition("=")
            found[key.strip()] = value.strip()
    return found
