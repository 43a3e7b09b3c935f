"""What both hosts share: file operations written once as small POSIX shell commands.

A concrete host supplies four primitives — ``_execute`` (run and collect bytes), ``_open_pipe``
(a command whose stdin we stream into), ``_read_file`` (a file's bytes, for downloads) and
``stream``/``close`` — and inherits ``run``, ``home``, ``put_bytes``, ``sha256``, ``stat``,
``read_from``, ``upload_tree`` and ``download`` from here. Every path reaches the shell through
:func:`quote`; ``~`` and ``~/...`` are expanded here (a quoted ``~`` would not be).
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from kohyawrap.errors import ChannelRefused, ConnectionLost, HostError, RemoteCommandError
from kohyawrap.hosts import transfer
from kohyawrap.hosts.base import CommandResult, ProgressFn, RemoteStat, TransferStats, quote

_FRACTION_RE = re.compile(r":\d\d\.(\d+)")
# --norc: over SSH, bash sources ~/.bashrc when started by sshd; the login shell already did,
# and a second pass (pyenv, conda init) can cost 100 ms a command for nothing.
BASH = ("bash", "--norc", "--noprofile", "-c")


def bash_line(command: str) -> str:
    """The command line that runs ``command`` under bash, for a remote login shell to parse."""
    return " ".join([*BASH[:-1], "-c", quote(command)])


@dataclass(frozen=True)
class RawResult:
    """A finished command's exit code and raw output bytes."""

    exit_code: int
    stdout: bytes
    stderr: bytes


# The small commands a follower repeats (stat, read a log chunk) must not hang on a network that
# stopped answering: after this long they fail with HostError and the caller can reconnect.
POLL_TIMEOUT = 60.0


class PosixHost(ABC):
    """Shared implementation of the Host protocol over a POSIX shell (bash, coreutils, tar)."""

    label: str = "host"
    _home: str | None = None
    lanes: int = 1  # channels one upload may use at once (SshHost: several)
    _spare: threading.Semaphore | None = None

    def _spare_lanes(self) -> threading.Semaphore:
        """Lanes beyond the first, shared by every upload running on this host at once, so
        that two uploads beside an install stay within sshd's MaxSessions."""
        with _SPARE_LOCK:
            if self._spare is None:
                self._spare = threading.Semaphore(max(0, self.lanes - 1))
            return self._spare

    # --- primitives a concrete host provides -------------------------------------------------

    @abstractmethod
    def _execute(self, command: str, stdin: bytes | None, timeout: float | None) -> RawResult:
        """Run ``command`` under bash, feed ``stdin`` then EOF, collect both outputs."""

    @abstractmethod
    def _open_pipe(self, command: str) -> transfer.ExecPipe:
        """Start ``command`` under bash with its stdin open for streaming."""

    @abstractmethod
    def _read_file(self, path: str) -> tuple[int, Iterator[bytes]]:
        """Size and chunks of the file at absolute ``path`` (raises HostError when unreadable)."""

    @abstractmethod
    def stream(
        self,
        command: str,
        *,
        timeout: float | None = None,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> Iterator[bytes]:
        """Run ``command`` and yield stdout+stderr bytes as they arrive.

        ``stdin`` is fed to the command then closed. With ``check`` a non-zero exit raises
        RemoteCommandError once the output is exhausted.
        """

    @abstractmethod
    def reconnect(self) -> None:
        """Open the connection again after a drop (a no-op where there is none)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent)."""

    def __enter__(self) -> PosixHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the Host protocol ---------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run ``command`` with bash on the host and wait (see ``Host.run``)."""
        raw = self._execute(command, stdin, timeout)
        result = CommandResult(
            command=command,
            exit_code=raw.exit_code,
            stdout=raw.stdout.decode("utf-8", "replace"),
            stderr=raw.stderr.decode("utf-8", "replace"),
        )
        if check and not result.ok:
            raise RemoteCommandError(command, result.exit_code, result.stdout + result.stderr)
        return result

    def home(self) -> str:
        """The host user's home directory (absolute), asked once and remembered."""
        if self._home is None:
            raw = self._checked('printf %s "$HOME"')
            home = raw.stdout.decode("utf-8", "surrogateescape")
            if not home.startswith("/"):
                raise HostError(f"{self.label}: $HOME is not an absolute path: {home!r}")
            self._home = home.rstrip("/") or "/"
        return self._home

    def abspath(self, path: str) -> str:
        """``path`` with ``~`` expanded and relative paths taken from the home directory."""
        if path == "~":
            return self.home()
        if path.startswith("~/"):
            return self.home() + path[1:]
        if not path.startswith("/"):
            return f"{self.home()}/{path}"
        return path

    def put_bytes(self, data: bytes, path: str, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``path`` atomically with ``mode``; the data travels on stdin."""
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"bad file mode {mode:o}")
        p = quote(self.abspath(path))
        # mktemp creates the file 0600, so a secret is never readable by others, even briefly.
        script = (
            f'set -e; p={p}; mkdir -p -- "$(dirname -- "$p")"; '
            't=$(mktemp -- "$p.tmp.XXXXXX"); trap \'rm -f -- "$t"\' EXIT; '
            f'cat > "$t"; chmod {mode:o} -- "$t"; mv -f -- "$t" "$p"; trap - EXIT'
        )
        self._checked(script, stdin=data)

    def sha256(self, paths: list[str]) -> dict[str, str]:
        """sha256 of each existing file among ``paths`` (keys are the paths as given)."""
        if not paths:
            return {}
        absolute = {self.abspath(p): p for p in paths}
        listing = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in absolute)
        raw = self._execute(transfer.hash_command(), listing, None)
        found = transfer.parse_sha256sum(raw.stdout, absolute)
        return {absolute[a]: digest for a, digest in found.items()}

    def stat(self, path: str) -> RemoteStat | None:
        """Size and mtime of ``path`` (links followed), or None when it does not exist."""
        p = self.abspath(path)
        raw = self._execute(f"stat -L -c '%s|%Y|%y|%F' -- {quote(p)}", None, POLL_TIMEOUT)
        if raw.exit_code != 0:
            return None
        size, seconds, human, kind = raw.stdout.decode("utf-8", "replace").strip().split("|", 3)
        frac = _FRACTION_RE.search(human)
        mtime = int(seconds) + (float("0." + frac.group(1)) if frac else 0.0)
        return RemoteStat(path=path, size=int(size), mtime=mtime, is_dir=kind == "directory")

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Up to ``limit`` bytes of ``path`` from ``offset`` (b"" when missing or nothing new)."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        if limit == 0:
            return b""
        p = quote(self.abspath(path))
        # tail seeks on a regular file, so following a large log stays cheap.
        command = f"[ -f {p} ] || exit 0; tail -c +{offset + 1} -- {p} | head -c {limit}"
        return self._checked(command, timeout=POLL_TIMEOUT).stdout

    def upload_tree(
        self,
        files: Mapping[str, Path],
        remote_dir: str,
        *,
        progress: ProgressFn | None = None,
        sidecars: bool = False,
    ) -> TransferStats:
        """Make ``remote_dir/<rel>`` hold each local file; only changed files travel.

        Small files go as tar streams, large ones in ranged parts, over up to ``lanes`` channels
        at once. With ``sidecars`` each large file gets ``<file>.sha256`` beside it once it is
        verified, so the next check reads that instead of the whole file.
        """
        t0 = time.monotonic()
        local = transfer.describe_local(files)
        base = self.abspath(remote_dir).rstrip("/") or "/"
        remote = self._remote_digests(local, base, sidecars=sidecars)
        todo = transfer.changed_files(local, remote)
        wire = self._send(todo, base, progress, sidecars=sidecars) if todo else 0
        return transfer.upload_stats(local, todo, wire, t0)

    def _remote_digests(
        self, local: list[transfer.LocalFile], base: str, *, sidecars: bool
    ) -> dict[str, str]:
        """rel -> sha256 of what the host already holds (large files via their sidecars)."""
        # Names relative to ``base`` (the command starts there): a dataset of thousands of files
        # sends a quarter of the bytes. No folder, nothing there yet.
        large = [f.rel for f in local if f.size >= transfer.LARGE]
        small = [f.rel for f in local if f.size < transfer.LARGE]
        listing = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in small)
        command = (
            transfer.sidecar_hash_command(large, write=sidecars)
            if large
            else transfer.hash_command()
        )
        raw = self._execute(f"cd -- {quote(base)} 2>/dev/null || exit 0; {command}", listing, None)
        return transfer.parse_sha256sum(raw.stdout, [f.rel for f in local])

    def _send(
        self,
        todo: list[transfer.LocalFile],
        base: str,
        progress: ProgressFn | None,
        *,
        sidecars: bool,
    ) -> int:
        """Send ``todo`` over up to ``lanes`` channels; returns the bytes written."""
        meter = _Meter(sum(f.size for f in todo), progress)
        small = [f for f in todo if f.size < transfer.LARGE]
        large = [f for f in todo if f.size >= transfer.LARGE]
        jobs: list[_Job] = [
            partial(self._tar_job, group, base, meter)
            for group in transfer.tar_groups(small, self.lanes)
        ]
        staged = [(item, self._stage(item, base, meter)) for item in large]
        for item, (staging, parts) in staged:
            jobs += [
                partial(self._parts_job, item, staging, share, meter)
                for share in transfer.lane_parts(parts, self.lanes)
            ]
        wire = _run_lanes(jobs, self.lanes, self._spare_lanes())
        for item, _ in staged:
            if not transfer.unchanged(item):
                raise transfer.changed_during_upload(item)
        if staged:
            self._checked(
                "; ".join(
                    transfer.finish_command(
                        staging, f"{base}/{item.rel}", item.sha256, sidecar=sidecars
                    )
                    for item, (staging, _) in staged
                )
            )
        meter.done()
        return wire

    def _tar_job(
        self,
        group: list[transfer.LocalFile],
        base: str,
        meter: _Meter,
        stop: Callable[[], bool],
    ) -> int:
        return self._send_tar(group, base, meter.stream(stop))

    def _stage(
        self, item: transfer.LocalFile, base: str, meter: _Meter
    ) -> tuple[str, list[transfer.Part]]:
        """Prepare the host for ``item``'s parts; the parts still to send (earlier tries count)."""
        staging = transfer.staging_dir(f"{base}/{item.rel}", item.sha256)
        raw = self._checked(transfer.begin_command(staging, item.size))
        have = transfer.parse_markers(raw.stdout)
        todo = []
        for part in transfer.parts_of(item.size):
            if part in have and have[part] == transfer.part_sha256(item.path, part):
                meter.add(part.length)
            else:
                todo.append(part)
        return staging, todo

    def _parts_job(
        self,
        item: transfer.LocalFile,
        staging: str,
        parts: list[transfer.Part],
        meter: _Meter,
        stop: Callable[[], bool],
    ) -> int:
        """Send ``parts`` of ``item`` over one channel; check each against the host's digest."""
        command = transfer.receive_command(staging)
        pipe = self._open_pipe(command)
        sent: dict[transfer.Part, str] = {}
        try:
            sent = transfer.send_parts(pipe, item, parts, meter.add, stop)
        except (OSError, EOFError):
            pass  # the receiver died early: its exit code and stderr below say why
        except BaseException:
            with contextlib.suppress(HostError):
                _quietly_close(pipe)
                pipe.finish(timeout=30)
            raise
        _quietly_close(pipe)
        out = b""
        with contextlib.suppress(OSError, EOFError):
            while more := pipe.read(4096):
                out += more
        code, err = pipe.finish()
        if stop():
            return 0
        if code != 0:
            raise RemoteCommandError(
                f"receiving {item.rel}", code, err, hint="is the disk on the host full?"
            )
        got = transfer.parse_markers(out)
        for part in parts:
            if got.get(part) != sent.get(part):
                raise HostError(
                    f"{item.rel}: bytes {part.offset}+{part.length} arrived damaged",
                    evidence=[f"sent sha256 {sent.get(part)}", f"received sha256 {got.get(part)}"],
                    hint="run it again: the parts that arrived whole are not sent again",
                )
        return sum(p.length for p in parts)

    def download(
        self,
        path: str,
        local_path: Path,
        *,
        expected_sha256: str,
        progress: ProgressFn | None = None,
    ) -> TransferStats:
        """Fetch ``path`` to ``local_path`` via a verified ``.part`` file; never overwrite."""
        transfer.check_sha256(expected_sha256)
        transfer.refuse_existing(local_path)
        size, chunks = self._read_file(self.abspath(path))
        try:
            return transfer.receive(
                chunks, local_path, expected_sha256=expected_sha256, size=size, progress=progress
            )
        finally:
            close = getattr(chunks, "close", None)  # a generator: release its channel or file
            if close is not None:
                close()

    # --- helpers -------------------------------------------------------------------------------

    def _checked(
        self, command: str, stdin: bytes | None = None, *, timeout: float | None = None
    ) -> RawResult:
        raw = self._execute(command, stdin, timeout)
        if raw.exit_code != 0:
            output = (raw.stdout + raw.stderr).decode("utf-8", "replace")
            raise RemoteCommandError(command, raw.exit_code, output)
        return raw

    def _send_tar(
        self, todo: list[transfer.LocalFile], base: str, progress: ProgressFn | None
    ) -> int:
        command = transfer.extract_command(base)
        pipe = self._open_pipe(command)
        wrote = 0
        try:
            wrote = transfer.send_tar(pipe, todo, progress)
        except (OSError, EOFError):
            pass  # the command died early; its exit code and stderr below say why
        except BaseException:
            with contextlib.suppress(HostError):
                _quietly_close(pipe)
                pipe.finish(timeout=30)
            raise
        _quietly_close(pipe)
        code, err = pipe.finish()
        if code != 0:
            raise RemoteCommandError(command, code, err, hint="is the disk on the host full?")
        return wrote


def _quietly_close(pipe: transfer.ExecPipe) -> None:
    with contextlib.suppress(OSError, EOFError):
        pipe.close_input()


_SPARE_LOCK = threading.Lock()
# One unit of upload work on one channel; it is told to stop early when another one failed.
_Job = Callable[[Callable[[], bool]], int]


class _Stopped(Exception):
    """Another lane failed: this one gives up its stream quietly."""


class _Meter:
    """Progress of one upload summed over its lanes (called from several threads)."""

    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.total = total
        self.progress = progress
        self._moved = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._moved += n
            if self.progress is not None:
                self.progress(min(self._moved, self.total), self.total)

    def stream(self, stop: Callable[[], bool]) -> ProgressFn:
        """A per-stream progress callback (absolute counts) feeding this meter; it raises
        :class:`_Stopped` once ``stop()`` says another lane failed."""
        seen = [0]

        def moved(done: int, _total: int) -> None:
            if stop():
                raise _Stopped
            self.add(done - seen[0])
            seen[0] = done

        return moved

    def done(self) -> None:
        """Report the end once (the streams usually did already)."""
        if self.progress is not None and self._moved != self.total:
            self.progress(self.total, self.total)


def _run_lanes(jobs: list[_Job], lanes: int, spare: threading.Semaphore) -> int:
    """Run ``jobs`` on up to ``lanes`` threads; the bytes they wrote. The first lane always
    runs; each further one needs a ``spare`` lane of the host. The first failure stops the rest
    and is raised once every lane has ended (so no channel is left writing)."""
    if len(jobs) <= 1 or lanes <= 1:
        return sum(job(lambda: False) for job in jobs)
    pending: queue.SimpleQueue[_Job] = queue.SimpleQueue()
    for job in jobs:
        pending.put(job)
    stop = threading.Event()
    errors: list[BaseException] = []
    wrote = [0]
    busy = [0]
    lock = threading.Lock()

    def lane() -> None:
        try:
            while not stop.is_set():
                try:
                    job = pending.get_nowait()
                except queue.Empty:
                    return
                n = job(stop.is_set)
                with lock:
                    wrote[0] += n
        except _Stopped:
            return
        except ChannelRefused:
            with lock:
                alone = busy[0] <= 1
            if not alone:  # the host allows fewer channels: the other lanes take this job
                pending.put(job)
                return
            raise
        except BaseException as err:
            errors.append(err)
            stop.set()
        finally:
            with lock:
                busy[0] -= 1

    def spare_lane() -> None:
        try:
            lane()
        finally:
            spare.release()

    threads = [threading.Thread(target=lane, daemon=True)]
    while len(threads) < min(lanes, len(jobs)) and spare.acquire(blocking=False):
        threads.append(threading.Thread(target=spare_lane, daemon=True))
    busy[0] = len(threads)
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        stop.set()
        raise
    if errors:
        lost = [e for e in errors if isinstance(e, ConnectionLost)]
        raise (lost or errors)[0]
    while not pending.empty():  # lanes refused at the same moment left work behind: finish it
        wrote[0] += pending.get_nowait()(lambda: False)
    return wrote[0]
