"""The report page: ``templates/report/index.html.j2`` rendered with autoescaping, checked to
reference nothing outside its own folder.

The page must open from disk on a laptop with no network and no server: styles are inline, images
and plots are files next to it under relative paths, and :func:`external_references` refuses any
``src``/``href``/CSS ``url()``/``@import`` that would leave the folder.
"""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from kohyawrap.errors import KohyawrapError
from kohyawrap.resources import templates_dir

if TYPE_CHECKING:
    import jinja2

# src="..." href='...' srcset, poster, action, data=..., CSS url(...) and @import "..."
_REFERENCE = re.compile(
    r"""(?:\b(?:src|href|srcset|poster|action|data|formaction|background)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))"""
    r"""|(?:url\(\s*['"]?([^'")]*)['"]?\s*\))|(?:@import\s+['"]([^'"]+)['"])""",
    re.IGNORECASE,
)


def _is_local(reference: str) -> bool:
    """A path inside the page's folder (or a fragment): no scheme, no host, not absolute, no ``..``."""
    ref = reference.strip()
    if not ref or ref.startswith("#"):
        return True
    if ":" in ref.split("/", 1)[0] or ref.startswith(("/", "\\")):
        return False
    return ".." not in ref.replace("\\", "/").split("/")


def external_references(html: str) -> list[str]:
    """Every reference in ``html`` that would leave the page's folder (should be none)."""
    found = []
    for match in _REFERENCE.finditer(html):
        value = next((g for g in match.groups() if g is not None), "")
        for part in value.split(",") if "srcset" in match.group(0).lower() else [value]:
            ref = part.strip().split(" ")[0]
            if not _is_local(ref):
                found.append(ref)
    return found


def duration(value: float | None) -> str:
    """``5 min 07 s``, ``1 h 02 min``; ``-`` for no value."""
    if value is None:
        return "-"
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _plain_url(value: str) -> str:
    """``https://github.com/x`` shown as ``github.com/x``: text only, never a link."""
    return re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", value)


@cache
def _env() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "report")),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        keep_trailing_newline=True,
    )
    env.filters["href"] = lambda path: quote(str(path))
    env.filters["duration"] = duration
    env.filters["plain_url"] = _plain_url
    env.filters["pct"] = lambda value: f"{value:.1%}"
    return env


def render_page(context: dict[str, Any]) -> str:
    """The report's HTML; refuses (a bug, not user input) to produce one that points outside."""
    html = _env().get_template("index.html.j2").render(**context)
    outside = external_references(html)
    if outside:
        raise KohyawrapError(
            "the report would reference files outside its folder", evidence=outside[:10]
        )
    return html
