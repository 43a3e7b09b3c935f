"""sha256 of local files, read once per version of a file.

Planning a run hashes the dataset and a local base model (the run id, the remote model name and
the incremental upload all rest on those digests), and the upload needs them again. A 2 GB
checkpoint takes seconds to read each time, so each digest is kept in a small SQLite table in the
user cache dir, keyed by the file's absolute path and its ``stat``: size, mtime_ns, and on POSIX
the inode and ctime_ns as well. Any write to the file changes one of those, so a changed file is
hashed again; ctime cannot be set back by ``touch`` or ``cp -p``, which closes the gap where a
rewrite keeps the size and the mtime.

A file modified in the last :data:`RECENT_S` seconds is hashed but not remembered: a writer still
at work could change it again within the same timestamp tick (git's "racy" case).

The cache only ever saves time: a cache that cannot be opened, read or written is skipped, and
the file is hashed as if there were none. ``KOHYAWRAP_CACHE_DIR`` moves it (tests, CI);
``KOHYAWRAP_CACHE_DIR=off`` turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

CACHE_DIR_ENV = "KOHYAWRAP_CACHE_DIR"
RECENT_S = 2.0
CHUNK = 1 << 20
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sha256 (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
    "ctime_ns INTEGER, inode INTEGER, digest TEXT)"
)


def read_sha256(path: Path) -> str:
    """sha256 hex digest of a local file, read in chunks (no cache)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def default_location() -> Path | None:
    """``$KOHYAWRAP_CACHE_DIR/hashes.sqlite3`` or platformdirs' user cache dir; None when off."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env == "off":
        return None
    if env:
        return Path(env) / "hashes.sqlite3"
    import platformdirs

    return Path(platformdirs.user_cache_dir("kohyawrap")) / "hashes.sqlite3"


def _key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a file: size, mtime, and (POSIX) change time and inode."""
    posix = os.name == "posix"  # on Windows st_ctime is the creation time: no use here
    return (
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns if posix else 0,
        st.st_ino if posix else 0,
    )


class HashCache:
    """Digests of local files by (absolute path, size, mtime, ctime, inode)."""

    def __init__(self, location: Path | None) -> None:
        self.location = location
        self.hashed = 0  # files actually read (for tests and benchmarks)

    @classmethod
    def default(cls) -> HashCache:
        """The user's cache (or a disabled one, see :func:`default_location`)."""
        return cls(default_location())

    def sha256(self, path: Path) -> str:
        """The sha256 of ``path``, read only when this version of it has not been seen."""
        return self.sha256_many([path])[path]

    def sha256_many(self, paths: Iterable[Path]) -> dict[Path, str]:
        """The sha256 of each path (one cache transaction for all of them)."""
        wanted = list(paths)
        stats = {p: p.stat() for p in wanted}  # OSError (missing file) is the caller's to report
        names = _names(wanted)
        with self._open() as db:
            known = self._lookup(db, stats, names)
            fresh: list[tuple[str, int, int, int, int, str]] = []
            out: dict[Path, str] = {}
            for path in wanted:
                digest = known.get(path)
                if digest is None:
                    digest = read_sha256(path)
                    self.hashed += 1
                    if _settled(path, stats[path]):
                        fresh.append((names[path], *_key(stats[path]), digest))
                out[path] = digest
            self._store(db, fresh)
        return out

    def forget(self, path: Path) -> None:
        """Drop what is known of ``path`` (its content did not match the digest we had)."""
        with self._open() as db:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("DELETE FROM sha256 WHERE path = ?", (_name(path),))
                    db.commit()

    # -- storage --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open(self) -> Iterator[sqlite3.Connection | None]:
        db = None
        if self.location is not None:
            try:
                self.location.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.location, timeout=5)
                db.execute(_SCHEMA)
            except (OSError, sqlite3.Error):
                db = None
        try:
            yield db
        finally:
            if db is not None:
                db.close()

    def _lookup(
        self,
        db: sqlite3.Connection | None,
        stats: dict[Path, os.stat_result],
        names: dict[Path, str],
    ) -> dict[Path, str]:
        if db is None:
            return {}
        found: dict[Path, str] = {}
        try:
            for path, st in stats.items():
                row = db.execute(
                    "SELECT size, mtime_ns, ctime_ns, inode, digest FROM sha256 WHERE path = ?",
                    (names[path],),
                ).fetchone()
                if row is not None and tuple(row[:4]) == _key(st):
                    found[path] = str(row[4])
        except sqlite3.Error:
            return {}
        return found

    def _store(
        self, db: sqlite3.Connection | None, rows: list[tuple[str, int, int, int, int, str]]
    ) -> None:
        if db is None or not rows:
            return
        with contextlib.suppress(sqlite3.Error):
            db.executemany("INSERT OR REPLACE INTO sha256 VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.commit()


def _settled(path: Path, before: os.stat_result) -> bool:
    """The file did not change while it was read, and was not written just now."""
    try:
        after = path.stat()
    except OSError:
        return False
    return _key(after) == _key(before) and time.time() - after.st_mtime > RECENT_S


def _name(path: Path) -> str:
    return _names([path])[path]


def _names(paths: list[Path]) -> dict[Path, str]:
    """Each path's key: its folder with links resolved (once per folder: a dataset has thousands
    of files in a few folders), plus the file name, so two spellings share one entry."""
    folders: dict[Path, str] = {}
    out = {}
    for path in paths:
        folder = path.parent
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        out[path] = os.path.join(folders[folder], path.name)
    return out
