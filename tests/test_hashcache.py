"""The local hash cache: a file is read once per version, and any change is noticed."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from kohyawrap.hashcache import CACHE_DIR_ENV, HashCache, default_location


def _settled(path: Path, data: bytes, age: float = 60.0) -> Path:
    path.write_bytes(data)
    old = time.time() - age
    os.utime(path, (old, old))
    return path


def test_a_file_is_read_once_per_version(tmp_path: Path) -> None:
    model = _settled(tmp_path / "基础 model.safetensors", os.urandom(300_000))
    cache = HashCache(tmp_path / "cache" / "hashes.sqlite3")
    want = hashlib.sha256(model.read_bytes()).hexdigest()
    assert cache.sha256(model) == want
    assert HashCache(cache.location).sha256(model) == want  # another process, same file
    assert cache.hashed == 1
    again = HashCache(cache.location)
    again.sha256(model)
    assert again.hashed == 0, "an unchanged file is not read again"


def test_a_changed_file_is_hashed_again(tmp_path: Path) -> None:
    path = _settled(tmp_path / "data.bin", b"a" * 1000)
    cache = HashCache(tmp_path / "hashes.sqlite3")
    first = cache.sha256(path)
    st = path.stat()
    # Same size, same mtime, different bytes: the change time (and inode) still tell.
    replacement = tmp_path / "other.bin"
    replacement.write_bytes(b"b" * 1000)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, path)
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    fresh = HashCache(cache.location)
    assert fresh.sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest() != first
    assert fresh.hashed == 1
    _settled(path, b"grown" * 1000)  # a new size
    assert fresh.sha256(path) == hashlib.sha256(b"grown" * 1000).hexdigest()


def test_a_file_written_just_now_is_not_remembered(tmp_path: Path) -> None:
    path = tmp_path / "still being written.bin"
    path.write_bytes(b"x" * 10)
    cache = HashCache(tmp_path / "hashes.sqlite3")
    cache.sha256(path)
    cache.sha256(path)
    assert cache.hashed == 2


def test_many_files_in_one_call_and_forget(tmp_path: Path) -> None:
    paths = [_settled(tmp_path / f"{i}.txt", f"sks dog {i}".encode()) for i in range(50)]
    cache = HashCache(tmp_path / "hashes.sqlite3")
    got = cache.sha256_many(paths)
    assert got == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    cache.forget(paths[3])
    again = HashCache(cache.location)
    assert again.sha256_many(paths) == got
    assert again.hashed == 1


def test_a_broken_cache_never_breaks_hashing(tmp_path: Path) -> None:
    path = _settled(tmp_path / "f", b"content")
    want = hashlib.sha256(b"content").hexdigest()
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    assert HashCache(garbage).sha256(path) == want
    blocked = tmp_path / "a file" / "hashes.sqlite3"
    (tmp_path / "a file").write_text("a file where the folder should be")
    assert HashCache(blocked).sha256(path) == want
    assert HashCache(None).sha256(path) == want
    with pytest.raises(FileNotFoundError):
        HashCache(None).sha256(tmp_path / "missing")


def test_the_location_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    assert default_location() == tmp_path / "hashes.sqlite3"
    monkeypatch.setenv(CACHE_DIR_ENV, "off")
    assert default_location() is None
