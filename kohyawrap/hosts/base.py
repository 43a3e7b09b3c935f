"""The Host protocol: what the launcher needs from a machine that runs sd-scripts.

Two implementations share it: ``SshHost`` (paramiko, a rented Linux GPU host) and ``LocalHost``
(subprocess, the user's own Linux GPU). They differ in a handful of primitives; everything the
launcher does is written once on top of these. The host side is always POSIX (bash, coreutils,
sha256sum, tar); the caller's side is pure Python so it runs on Windows and macOS too.

Commands are shell strings. Build them with :func:`sh` (or :func:`quote` per argument) so that
every user-controlled value is quoted: a concept folder is ``10_sks dog``, and a name may hold
quotes or ``$()``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# progress(done_bytes, total_bytes)
ProgressFn = Callable[[int, int], None]


def quote(value: str | Path | int) -> str:
    """One shell word, safely quoted for a POSIX shell."""
    return shlex.quote(str(value))


def sh(*argv: str | Path | int) -> str:
    """A command line with every argument quoted: ``sh("ls", "-l", "10_sks dog")``."""
    return " ".join(quote(a) for a in argv)


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: exit code, stdout and stderr as text."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class RemoteStat:
    """Size and modification time of a file on the host."""

    path: str
    size: int
    mtime: float
    is_dir: bool


@dataclass(frozen=True)
class TransferStats:
    """What an upload or download moved."""

    files_total: int
    files_sent: int
    bytes_total: int
    bytes_sent: int
    seconds: float


class Host(Protocol):
    """A Linux machine that can run sd-scripts. All paths are host paths (POSIX strings)."""

    label: str  # "root@1.2.3.4:22022" or "local", for messages

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run ``command`` with bash on the host and wait.

        ``stdin`` is fed to the command (this is how secrets travel: never in argv or environment).
        With ``check`` a non-zero exit raises ``RemoteCommandError`` (command, code, output tail).
        A lost connection raises ``HostError``.
        """
        ...

    def stream(
        self,
        command: str,
        *,
        timeout: float | None = None,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> Iterator[bytes]:
        """Run ``command`` and yield its stdout+stderr bytes as they arrive (set-up progress).

        ``stdin`` is fed to the command then closed (a token travels this way, as with ``run``).
        With ``check`` a non-zero exit raises RemoteCommandError once the output is exhausted.
        """
        ...

    def home(self) -> str:
        """The remote user's home directory (absolute)."""
        ...

    def put_bytes(self, data: bytes, path: str, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``path`` atomically (temp file + rename), creating parent folders."""
        ...

    def upload_tree(
        self,
        files: Mapping[str, Path],
        remote_dir: str,
        *,
        progress: ProgressFn | None = None,
        sidecars: bool = False,
    ) -> TransferStats:
        """Make ``remote_dir/<rel>`` hold the content of each local file ``files[rel]``.

        Incremental: a file already there with the same sha256 is not sent again. Everything that
        is sent travels in as few round trips as possible: tar streams for small files (never
        per-file SFTP), ranged parts hashed by the host for large ones, spread over several
        channels where the host has them. With ``sidecars`` a large file gets ``<file>.sha256``
        (digest, size, inode, times) once verified, so later checks need not read it again.
        ``rel`` are POSIX relative paths (may contain spaces, quotes, unicode; never ``..``).
        """
        ...

    def sha256(self, paths: list[str]) -> dict[str, str]:
        """sha256 hex digest of each existing file (missing files are left out)."""
        ...

    def stat(self, path: str) -> RemoteStat | None:
        """Size and mtime of ``path``, or None when it does not exist."""
        ...

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Up to ``limit`` bytes of ``path`` from byte ``offset`` (b"" when nothing new)."""
        ...

    def download(
        self,
        path: str,
        local_path: Path,
        *,
        expected_sha256: str,
        progress: ProgressFn | None = None,
    ) -> TransferStats:
        """Fetch ``path`` to ``local_path`` safely.

        Written to ``local_path.part`` first, its sha256 checked against ``expected_sha256``
        (computed on the host), then renamed into place. Never overwrites an existing
        ``local_path`` (raises instead). A mismatch deletes the .part file and raises HostError.
        """
        ...

    def reconnect(self) -> None:
        """Drop the connection and open a new one (after a drop); a no-op for this machine.

        Raises HostError when the host cannot be reached again.
        """
        ...

    def close(self) -> None:
        """Release the connection (idempotent)."""
        ...
