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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from kohyawrap.errors import HostError, UsageError
from kohyawrap.hashcache import HashCache, read_sha256
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
    mtime_ns: int = 0  # when it was hashed: a large file sent in parts is checked against it


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


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a local file, read in chunks (no cache: for files just received)."""
    return read_sha256(path)


def describe_local(files: Mapping[str, Path], cache: HashCache | None = None) -> list[LocalFile]:
    """Validate names and hash every local file (sorted by name, so streams are deterministic).

    Digests come from the hash cache (``HashCache.default()`` unless given) when the file has not
    changed since it was last hashed, e.g. by the plan a moment ago.
    """
    cache = cache if cache is not None else HashCache.default()
    rels = sorted(files)
    paths = [Path(files[rel]) for rel in rels]
    try:
        digests = cache.sha256_many(paths)
    except OSError as err:
        raise UsageError(f"cannot read {err.filename}: {err.strerror}") from err
    out = []
    for rel, path in zip(rels, paths, strict=True):
        st = path.stat()
        out.append(LocalFile(check_relpath(rel), path, st.st_size, digests[path], st.st_mtime_ns))
    return out


def unchanged(item: LocalFile) -> bool:
    """``item`` still has the size and mtime it had when it was hashed."""
    try:
        st = item.path.stat()
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (item.size, item.mtime_ns)


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
        raise changed_during_upload(item)


def changed_during_upload(item: LocalFile) -> UsageError:
    """The error for a file edited mid-upload; its cached digest is dropped, so that "run it
    again" hashes it afresh."""
    HashCache.default().forget(item.path)
    return UsageError(f"{item.path} changed while it was being uploaded", hint="run it again")


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


# ---------------------------------------------------------------------------------------------
# Several channels at once
#
# One SSH channel carries at most the server's receive window per round trip: OpenSSH's sshd
# gives a session 2 MiB, so one channel uploads ~13 MB/s at 150 ms whatever the link. Uploads
# therefore spread over several channels of the same connection: small files as several tar
# streams (one per group of files, balanced by bytes), and each large file in ranged parts that
# the host writes at their offsets and hashes as they arrive.

LARGE = 64 << 20  # files at least this big travel in ranged parts
GROUP_BYTES = 4 << 20  # below this much data a second tar stream costs more than it saves
_MIN_PART = 16 << 20
_MAX_PART = 128 << 20
# stat fields that identify one version of a file on the host; a sidecar holds them.
STAT_KEY = "%s %i %.9Y %.9Z"


@dataclass(frozen=True)
class Part:
    """A byte range of a large file."""

    offset: int
    length: int


def parts_of(size: int) -> list[Part]:
    """The ranges a file of ``size`` bytes is sent in (the same every time for the same size,
    so parts received before a dropped connection are recognised on the next try)."""
    step = min(_MAX_PART, max(_MIN_PART, (size // 32) >> 20 << 20))
    return [Part(off, min(step, size - off)) for off in range(0, size, step)] or [Part(0, 0)]


def tar_groups(items: list[LocalFile], count: int) -> list[list[LocalFile]]:
    """``items`` in at most ``count`` groups of about equal bytes (each becomes one tar stream).

    Largest first into the lightest group; each group keeps name order, so a stream is
    deterministic for the same files.
    """
    total = sum(i.size + _BLOCK for i in items)
    count = max(1, min(count, len(items), total // GROUP_BYTES or 1))
    groups: list[list[LocalFile]] = [[] for _ in range(count)]
    loads = [0] * count
    for item in sorted(items, key=lambda i: (-i.size, i.rel)):
        lightest = loads.index(min(loads))
        groups[lightest].append(item)
        loads[lightest] += item.size + _BLOCK
    return [sorted(g, key=lambda i: i.rel) for g in groups if g]


def staging_dir(final: str, sha256: str) -> str:
    """Where the parts of ``final`` gather before it is put in place (one per content)."""
    folder, _, name = final.rpartition("/")
    return f"{folder}/.{name}.{sha256[:16]}.upload"


def begin_command(staging: str, size: int) -> str:
    """Create the staging file at its full size; print the markers of parts already received."""
    s = quote(staging)
    return (
        f"set -e; mkdir -p -- {s}; [ -f {s}/data ] || truncate -s {size} -- {s}/data; "
        f"cat -- {s}/*.part 2>/dev/null || true"
    )


def parse_markers(output: bytes) -> dict[Part, str]:
    """``offset length sha256`` lines -> the digest the host computed for each part."""
    found: dict[Part, str] = {}
    for line in output.decode("ascii", "replace").splitlines():
        fields = line.split()
        if (
            len(fields) == 3
            and fields[0].isdigit()
            and fields[1].isdigit()
            and _SHA256_RE.match(fields[2])
        ):
            found[Part(int(fields[0]), int(fields[1]))] = fields[2]
    return found


# Runs on the host with python3 (which every sd-scripts host has). stdin holds parts, each an
# "OFFSET LENGTH" line and then exactly LENGTH bytes; each is written at its offset, hashed on the
# way, and recorded (a marker file and a line on stdout) only once all of it arrived. One channel
# carries many parts, so a part costs no channel set-up round trips.
_RECEIVE = """
import hashlib, os, sys
data, staging = sys.argv[1], sys.argv[2]
fd = os.open(data, os.O_WRONLY)
src = sys.stdin.buffer
while True:
    head = src.readline()
    if not head:
        break
    offset, length = (int(x) for x in head.split())
    digest, left, pos = hashlib.sha256(), length, offset
    while left:
        chunk = src.read(min(left, 1 << 20))
        if not chunk:
            sys.exit("a part ended %d bytes early" % left)
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.pwrite(fd, view, pos):]
        pos += len(chunk)
        left -= len(chunk)
    os.fsync(fd)
    line = "%d %d %s\\n" % (offset, length, digest.hexdigest())
    marker = os.path.join(staging, "%d.part" % offset)
    with open(marker + ".tmp", "w") as out:
        out.write(line)
    os.replace(marker + ".tmp", marker)
    sys.stdout.write(line)
    sys.stdout.flush()
os.close(fd)
"""


def receive_command(staging: str) -> str:
    """Host command that receives parts into ``staging/data`` (see ``_RECEIVE``)."""
    return " ".join(quote(a) for a in ("python3", "-c", _RECEIVE, f"{staging}/data", staging))


def lane_parts(parts: list[Part], lanes: int) -> list[list[Part]]:
    """``parts`` dealt round-robin to at most ``lanes`` channels (equal parts: equal loads)."""
    count = max(1, min(lanes, len(parts)))
    return [parts[i::count] for i in range(count) if parts[i::count]]


def finish_command(staging: str, final: str, sha256: str, *, sidecar: bool) -> str:
    """Put the assembled file in place (and its sidecar beside it); drop the staging folder."""
    s, f = quote(staging), quote(final)
    keep = (
        f"k=$(stat -L -c {quote(STAT_KEY)} -- {f}); t=$(mktemp -- {f}.sha256.XXXXXX); "
        f'printf "%s %s\\n" {sha256} "$k" >"$t"; mv -f -- "$t" {f}.sha256; '
        if sidecar
        else f"rm -f -- {f}.sha256; "
    )
    return f"set -e; mv -f -- {s}/data {f}; {keep}rm -rf -- {s}"


def sidecar_hash_command(large: list[str], *, write: bool) -> str:
    """Host command printing ``sha256sum`` lines for ``large`` files (trusting a sidecar whose
    recorded size, inode, mtime and ctime all match the file's), then for the NUL-separated
    paths on stdin like :func:`hash_command`.

    A sidecar only stands for the exact file it was written beside: a file whose size or times
    differ is read again (and, with ``write``, gets a fresh sidecar).
    """
    store = (
        't=$(mktemp -- "$p.sha256.XXXXXX") && printf "%s %s\\n" "$d" "$k" >"$t" && '
        'mv -f -- "$t" "$p.sha256"; '
        if write
        else ""
    )
    loop = (
        'for p in "$@"; do [ -f "$p" ] || continue; '
        f'k=$(stat -L -c {quote(STAT_KEY)} -- "$p") || continue; '
        'if [ -f "$p.sha256" ] && read -r d rest <"$p.sha256" && [ "$rest" = "$k" ]; then '
        'printf \'%s  %s\\n\' "$d" "$p"; continue; fi; '
        'd=$(sha256sum <"$p") || continue; d=${d%% *}; '
        f'{store}printf \'%s  %s\\n\' "$d" "$p"; done; '
    )
    args = " ".join(quote(p) for p in large)
    return f"set -- {args}; {loop}{hash_command()}"


def send_parts(
    pipe: ExecPipe,
    item: LocalFile,
    parts: list[Part],
    moved: Callable[[int], None],
    stop: Callable[[], bool],
) -> dict[Part, str]:
    """Stream ``parts`` of ``item`` into a receiver; the sha256 of each part as it was read."""
    sent: dict[Part, str] = {}
    with item.path.open("rb") as fh:
        for part in parts:
            if stop():
                break
            pipe.write(f"{part.offset} {part.length}\n".encode())
            digest = hashlib.sha256()
            fh.seek(part.offset)
            left = part.length
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk or stop():
                    if not chunk:
                        raise changed_during_upload(item)
                    return sent
                digest.update(chunk)
                pipe.write(chunk)
                left -= len(chunk)
                moved(len(chunk))
            sent[part] = digest.hexdigest()
    return sent


def part_sha256(path: Path, part: Part) -> str:
    """The local sha256 of one part (to trust a part the host received on an earlier try)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        fh.seek(part.offset)
        left = part.length
        while left > 0 and (chunk := fh.read(min(CHUNK, left))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()
