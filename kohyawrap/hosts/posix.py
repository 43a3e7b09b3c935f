"""What both hosts share: file operations written once as small POSIX shell commands.

A concrete host supplies four primitives — ``_execute`` (run and collect bytes), ``_open_pipe``
(a command whose stdin we stream into), ``_read_file`` (a file's bytes, for downloads) and
``stream``/``close`` — and inherits ``run``, ``home``, ``put_bytes``, ``sha256``, ``stat``,
``read_from``, ``upload_tree`` and ``download`` from here. Every path reaches the shell through
:func:`quote`; ``~`` and ``~/...`` are expanded here (a quoted ``~`` would not be).
"""

from __future__ import annotations

import contextlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from kohyawrap.errors import HostError, RemoteCommandError
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
        self, command: str, *, timeout: float | None = None, check: bool = True
    ) -> Iterator[bytes]:
        """Run ``command`` and yield stdout+stderr bytes as they arrive.

        With ``check`` a non-zero exit raises RemoteCommandError once the output is exhausted.
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
    ) -> TransferStats:
        """Make ``remote_dir/<rel>`` hold each local file; only changed files travel (one tar)."""
        t0 = time.monotonic()
        local = transfer.describe_local(files)
        base = self.abspath(remote_dir).rstrip("/") or "/"
        there = self.sha256([f"{base}/{f.rel}" for f in local])
        remote = {path[len(base) + 1 :]: digest for path, digest in there.items()}
        todo = transfer.changed_files(local, remote)
        wire = self._send_tar(todo, base, progress) if todo else 0
        return transfer.upload_stats(local, todo, wire, t0)

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
