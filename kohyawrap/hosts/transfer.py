"""Moving files to and from a host: the tar stream, the sha256 manifest and the safe download.

Both hosts use these. An upload is two round trips whatever the number of files: one command
hashes what is already on the host (names go in on stdin, NUL-separated, so no name ever
reaches a shell parser), then everything missing or changed travels as ONE tar stream into
``tar -x`` (per-file SFTP costs 3-4 round trips a file; see docs/hosts.md). A download is
written to ``<name>.part``, fsynced, its sha256 compared with the host's, and only then put in
place, never over an existing file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from kohyawrap.errors import HostError, UsageError
from kohyawrap.fileio import file_sha256 as file_sha256
from kohyawrap.hosts.base import ProgressFn, TransferStats, quote
from kohyawrap.names import remote_name_problem

CHUNK = 1 << 20  # 1 MiB: large enough that per-write overhead vanishes, small enough for progress
_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar's default record; GNU tar is happiest when the stream ends on one
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Names we accept for files fetched back from a host: no separators, no control characters.


class ExecPipe(Protocol):
    """A running host command whose stdin we write and whose stdout we read."""

    def write(self, data: bytes) -> None:
        """Send ``data`` to the command's stdin (blocks while the command is slow to read)."""
        ...

    def close_input(self) -> None:
        """Close the command's stdin so it sees end of file."""
        ...

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of stdout; b"" at end of output."""
        ...

    def finish(self, timeout: float | None = None) -> tuple[int, str]:
        """Wait for the command to end; its exit code and stderr text."""
        ...


@dataclass(frozen=True)
class LocalFile:
    """One file to upload: where it lives here, its size and sha256."""

    rel: str
    path: Path
    size: int
    sha256: str


def check_relpath(rel: str) -> str:
    """``rel`` if it is a safe POSIX relative path for the host, else raise UsageError."""
    parts = rel.split("/")
    bad = (
        not rel
        or rel.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or any(c in rel for c in "\n\r\x00")
    )
    if bad:
        raise UsageError(
            f"cannot upload a file named {rel!r}",
            hint="upload paths are relative, without '..', empty parts or line breaks; rename it",
        )
    return rel


def local_target(target_dir: Path, remote_name: str) -> Path:
    """Where a file the host calls ``remote_name`` may be written under ``target_dir``.

    Host names are untrusted (a hostile host could answer ``../../.ssh/authorized_keys``): only a
    plain file name is accepted.
    """
    problem = remote_name_problem(remote_name)
    if problem is not None:
        raise HostError(
            f"the host returned an unsafe file name ({problem}): {remote_name!r}",
            hint="only plain file names are fetched; nothing was written",
        )
    return target_dir / remote_name


def describe_local(files: Mapping[str, Path]) -> list[LocalFile]:
    """Validate names and hash every local file (sorted by name, so streams are deterministic)."""
    out = []
    for rel in sorted(files):
        path = Path(files[rel])
        try:
            size = path.stat().st_size
        except OSError as err:
            raise UsageError(f"cannot read {path}: {err.strerror}") from err
        out.append(LocalFile(check_relpath(rel), path, size, file_sha256(path)))
    return out


def hash_command() -> str:
    """Shell command printing ``sha256sum`` lines for the NUL-separated paths on its stdin.

    Missing paths and directories are skipped silently (sha256sum complains on stderr only).
    """
    return "xargs -0 -r sha256sum -- 2>/dev/null; exit 0"


def parse_sha256sum(output: bytes, wanted: Iterable[str]) -> dict[str, str]:
    """Map each wanted path to its digest from ``sha256sum`` output; anything else is ignored.

    sha256sum escapes names holding a backslash or newline: the line then starts with ``\\``.
    """
    want = set(wanted)
    found: dict[str, str] = {}
    for raw in output.split(b"\n"):
        line = raw.decode("utf-8", "surrogateescape")
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, name = line[:64], line[66:]
        if escaped:
            name = name.replace("\\n", "\n").replace("\\\\", "\\")
        if _SHA256_RE.match(digest) and name in want:
            found[name] = digest
    return found


def changed_files(local: list[LocalFile], remote: Mapping[str, str]) -> list[LocalFile]:
    """The files whose content on the host differs from here (or is missing)."""
    return [f for f in local if remote.get(f.rel) != f.sha256]


def extract_command(remote_dir: str) -> str:
    """Shell command that unpacks a tar stream from stdin into ``remote_dir`` (created)."""
    d = quote(remote_dir)
    return f"mkdir -p -- {d} && tar -x --no-same-owner -f - -C {d}"


def _header(item: LocalFile) -> bytes:
    info = tarfile.TarInfo(item.rel)
    info.size = item.size
    info.mode = 0o644
    info.mtime = int(item.path.stat().st_mtime)
    # GNU format stores names as raw UTF-8 bytes: no pax charset conversion on a C-locale host.
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _file_body(item: LocalFile) -> Iterator[bytes]:
    """The file's bytes, checked against the hash taken before (a file edited mid-upload fails)."""
    digest = hashlib.sha256()
    left = item.size
    with item.path.open("rb") as fh:
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
            yield chunk
    if left or digest.hexdigest() != item.sha256:
        raise UsageError(f"{item.path} changed while it was being uploaded", hint="run it again")


def tar_stream(items: list[LocalFile]) -> Iterator[bytes]:
    """A tar archive of ``items`` as a stream of chunks (headers, bodies, padding, end marker)."""
    written = 0
    for item in items:
        head = _header(item)
        yield head
        yield from _file_body(item)
        pad = -item.size % _BLOCK
        yield b"\0" * pad
        written += len(head) + item.size + pad
    end = 2 * _BLOCK
    yield b"\0" * (end + (-(written + end) % _RECORD))


def send_tar(pipe: ExecPipe, items: list[LocalFile], progress: ProgressFn | None) -> int:
    """Write the tar stream of ``items`` into ``pipe``; return the bytes written.

    Small pieces (headers, padding) are gathered so the channel sees few large writes.
    """
    total = sum(i.size for i in items)
    sent = done = 0
    pending: list[bytes] = []
    pending_len = 0
    for piece in tar_stream(items):
        pending.append(piece)
        pending_len += len(piece)
        if pending_len >= CHUNK:
            pipe.write(b"".join(pending))
            sent += pending_len
            pending, pending_len = [], 0
            done = min(total, sent)
            if progress:
                progress(done, total)
    if pending:
        pipe.write(b"".join(pending))
        sent += pending_len
    if progress:
        progress(total, total)
    return sent


def upload_stats(
    local: list[LocalFile], sent: list[LocalFile], wire: int, t0: float
) -> TransferStats:
    """TransferStats for an upload that began at ``t0`` (time.monotonic)."""
    return TransferStats(
        files_total=len(local),
        files_sent=len(sent),
        bytes_total=sum(f.size for f in local),
        bytes_sent=wire,
        seconds=time.monotonic() - t0,
    )


def check_sha256(value: str) -> str:
    """``value`` lower-cased if it is a sha256 hex digest, else raise UsageError."""
    low = value.lower()
    if not _SHA256_RE.match(low):
        raise UsageError(f"not a sha256 digest: {value!r}")
    return low


def part_path(local_path: Path) -> Path:
    """The temporary name a download is written to before it is verified."""
    return local_path.with_name(local_path.name + ".part")


def receive(
    chunks: Iterable[bytes],
    local_path: Path,
    *,
    expected_sha256: str,
    size: int,
    progress: ProgressFn | None = None,
) -> TransferStats:
    """Write ``chunks`` to ``local_path`` via a verified ``.part`` file; never overwrite."""
    t0 = time.monotonic()
    expected = check_sha256(expected_sha256)
    refuse_existing(local_path)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(local_path)
    try:
        got, digest = _write_part(chunks, part, size, progress)
        if digest != expected:
            raise HostError(
                f"checksum mismatch for {local_path.name}: nothing was kept",
                evidence=[f"expected sha256 {expected}", f"received sha256 {digest} ({got} bytes)"],
                hint="the file may have changed on the host while it was read; fetch it again",
            )
        place(part, local_path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return TransferStats(1, 1, got, got, time.monotonic() - t0)


def refuse_existing(local_path: Path) -> None:
    """Raise UsageError when ``local_path`` already exists (downloads never overwrite)."""
    if local_path.exists() or local_path.is_symlink():
        raise UsageError(
            f"refusing to overwrite {local_path}",
            hint="downloads never replace a file; move it away if you meant to replace it",
        )


def _write_part(
    chunks: Iterable[bytes], part: Path, size: int, progress: ProgressFn | None
) -> tuple[int, str]:
    digest = hashlib.sha256()
    got = 0
    with part.open("wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            digest.update(chunk)
            got += len(chunk)
            if progress:
                progress(got, max(size, got))
        fh.flush()
        os.fsync(fh.fileno())
    return got, digest.hexdigest()


def place(part: Path, final: Path) -> None:
    """Move a verified ``part`` to ``final`` without ever replacing an existing file.

    A hard link fails atomically when ``final`` exists; filesystems without links fall back to a
    check followed by a rename.
    """
    try:
        os.link(part, final)
    except FileExistsError:
        raise UsageError(
            f"refusing to overwrite {final}: it appeared during the download"
        ) from None
    except OSError:
        refuse_existing(final)
        os.replace(part, final)
        return
    part.unlink()


def read_chunks(fh: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """Chunks of an open binary file until end of file."""
    while chunk := fh.read(size):
        yield chunk
