"""Local files, safely: the one atomic write (temp file in the same folder, fsync, ``os.replace``),
so a crash or Ctrl-C never leaves half a file where a whole one was; and the one bounded read of a
file a user points us at, so a device, a pipe or a huge file is refused instead of read."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kohyawrap.errors import KohyawrapError


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


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a local file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while data := fh.read(chunk):
            digest.update(data)
    return digest.hexdigest()


def dump_json(data: Any) -> bytes:
    """Stable, readable JSON bytes (sorted keys, non-ASCII kept, trailing newline)."""
    return (
        json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    ).encode("utf-8")


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is what it wrote into the lock file."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


@contextlib.contextmanager
def exclusive_lock(path: Path, note: str) -> Iterator[None]:
    """Hold an OS lock on ``path`` for the ``with`` block; raise LockHeld if another process has it.

    The operating system releases the lock when the holder exits or is killed, so a crashed
    process never leaves a stale lock. ``note`` (who holds it) is written into the file for the
    message the next process shows.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise LockHeld(_read_note(fd))
        os.ftruncate(fd, 0)
        os.write(fd, note.encode("utf-8"))
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            _unlock(fd)
    finally:
        os.close(fd)


def _read_note(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace").strip()


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Reading what a user points us at (configs, presets, prompt files, captions), bounded

# A training config, preset or prompt file is a few kilobytes; a thousand times that is no config
# (a 50 MB TOML took tomlkit 98 s, /dev/zero never ends). Captions are one line of text.
MAX_TEXT_FILE_BYTES = 1024 * 1024
MAX_CAPTION_BYTES = 64 * 1024


class FileRefused(ValueError):
    """A file we will not read: not a regular file, too large, or unreadable (the message says
    which, without the path: callers wrap it in their own error with the path)."""


def read_limited(path: Path, limit: int = MAX_TEXT_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them, or :class:`FileRefused`.

    Devices, FIFOs and folders are refused before they are opened (opening a FIFO would block,
    reading /dev/zero would never end); the read itself stops one byte past ``limit``, so a file
    that grows while we read it is still bounded.
    """
    try:
        info = os.stat(path)
    except OSError as err:
        raise FileRefused(f"cannot read it ({err.strerror or err})") from err
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(f"it is not a regular file ({_kind(info.st_mode)})")
    if info.st_size > limit:
        raise FileRefused(f"it is {_size(info.st_size)}; more than {_size(limit)} is not accepted")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise FileRefused(f"cannot read it ({err.strerror or err})") from err
    if len(data) > limit:
        raise FileRefused(f"it grew past {_size(limit)} while being read")
    return data


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


def read_user_text(
    path: Path,
    what: str,
    *,
    limit: int = MAX_TEXT_FILE_BYTES,
    error: type[KohyawrapError] | None = None,
) -> str:
    """The UTF-8 text of a file the user named (``what`` says which: "config", "preset", ...),
    bounded as :func:`read_limited`; anything else is a UsageError (or ``error``) naming the file."""
    from kohyawrap.errors import UsageError

    kind = error or UsageError
    try:
        data = read_limited(path, limit)
    except FileRefused as err:
        raise kind(f"{what} {path} refused: {err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise kind(
            f"{what} {path} is not UTF-8 text (byte {err.start} is {data[err.start]:#04x})",
            hint="save it as UTF-8",
        ) from None
