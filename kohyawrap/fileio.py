"""Writing local files safely: the one atomic write (temp file in the same folder, fsync,
``os.replace``), so a crash or Ctrl-C never leaves half a file where a whole one was."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Write ``data`` (text is UTF-8, ``\\n`` line ends) to ``path`` atomically.

    The parent folder is created. ``mode`` sets the permission bits (0o600 for secrets, 0o755 for
    scripts); without it the file gets the usual umask-based bits.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def dump_json(data: Any) -> bytes:
    """Stable, readable JSON bytes (sorted keys, non-ASCII kept, trailing newline)."""
    return (
        json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    ).encode("utf-8")
