"""Names a user types and names a host returns: which are accepted, and how they become local
file names on Linux, macOS and Windows. Pure.

A LoRA's ``--name`` becomes sd-scripts' ``output_name``, the stem of every checkpoint. Any name
that makes a file name somewhere works (``Hündin_v2``, ``dog(v2)``, ``o'neil``, ``柴犬``); a name
that would be a path (``a/b``, ``../x``), is empty, or holds control characters is refused before
anything is rented.
"""

from __future__ import annotations

import re
import sys
import unicodedata

from kohyawrap.errors import UsageError

WINDOWS_RESERVED = frozenset(
    {
        "CON",
        "PRN",
        "AUX",
        "NUL",
        *(f"COM{i}" for i in range(1, 10)),
        *(f"LPT{i}" for i in range(1, 10)),
    }
)
_WINDOWS_FORBIDDEN = set('<>:"/\\|?*')
# 255 bytes per file name, less the longest suffix sd-scripts adds ("-step00000200.safetensors",
# 25 bytes) and a margin for ".part" files while pulling.
MAX_NAME_BYTES = 200
ON_WINDOWS = sys.platform == "win32"


def _control(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") or c == "\0"]


def output_name_problem(name: str, *, windows: bool = ON_WINDOWS) -> str | None:
    """Why ``name`` cannot name a LoRA's files on this machine's file system, or None when it can.

    The LoRA's files are pulled to this machine, so its rules decide: on Windows the characters it
    forbids in file names are refused too; elsewhere only what no file name may hold.
    """
    text = unicodedata.normalize("NFC", name)
    bad = sorted({c for c in text if c in _WINDOWS_FORBIDDEN and c not in "/\\"}) if windows else []
    problems = (
        (not text.strip(), "it is empty"),
        (text != text.strip(), "it starts or ends with a space"),
        (
            "/" in text or "\\" in text,
            "it holds a path separator (/ or \\): it would put the files in another folder",
        ),
        (text.startswith("."), "it starts with a dot (a hidden file, or a path)"),
        (
            bool(_control(text)),
            f"it holds control characters ({', '.join(repr(c) for c in _control(text)[:3])})",
        ),
        (
            bool(bad),
            "it holds "
            + ", ".join(repr(c) for c in bad)
            + ", which Windows file names cannot hold",
        ),
        (
            len(text.encode("utf-8")) > MAX_NAME_BYTES,
            f"it is longer than {MAX_NAME_BYTES} bytes as UTF-8",
        ),
    )
    return next((why for found, why in problems if found), None)


def check_output_name(name: str, *, windows: bool = ON_WINDOWS) -> str:
    """``name`` (NFC-normalised) if it can name a LoRA's files, else raise UsageError."""
    problem = output_name_problem(name, windows=windows)
    if problem:
        raise UsageError(
            f"--name {name!r} cannot name the LoRA's files: {problem}",
            hint="use letters (any language), digits, spaces and punctuation such as _ - ( ) '",
        )
    return unicodedata.normalize("NFC", name)


def remote_name_problem(name: str) -> str | None:
    """Why a file name the host returned may not be written locally, or None when it may.

    A rented host is untrusted: only a plain name is accepted (never a path or ``..``).
    """
    if name in ("", ".", ".."):
        return "not a file name"
    if "/" in name or "\\" in name:
        return "a path, not a file name"
    if _control(name):
        return "control characters in the name"
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        return "longer than 255 bytes"
    return None


def local_file_name(name: str, *, windows: bool) -> str:
    """A file name for ``name`` that the laptop's file system accepts.

    On Linux and macOS a name the host accepted is kept as it is. On Windows the characters it
    forbids become ``_``, trailing dots and spaces go, and reserved device names get a ``_``.
    """
    if not windows:
        return name
    text = "".join("_" if c in _WINDOWS_FORBIDDEN else c for c in name).rstrip(" .") or "_"
    stem = text.split(".", 1)[0]
    return f"_{text}" if stem.upper() in WINDOWS_RESERVED else text


_SLUG = re.compile(r"[^\w.-]+")  # letters and digits of any script stay


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe version of ``text`` for run ids and host folder names: letters and digits
    of any script, ``.``, ``_`` and ``-``; anything else becomes ``-``."""
    cleaned = _SLUG.sub("-", text).strip("-.") or "x"
    return cleaned[:limit]
