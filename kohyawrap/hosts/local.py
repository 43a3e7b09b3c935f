"""LocalHost: this machine as the GPU host (Linux with bash), through subprocess.

Commands run under ``bash --norc -c`` in the home directory, exactly as they would over SSH, so
relative paths and ``~`` mean the same on both hosts. Each command gets its own process group:
a timeout kills the whole group, not just bash, so no orphan keeps a pipe open.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from kohyawrap.errors import HostError, RemoteCommandError
from kohyawrap.hosts import transfer
from kohyawrap.hosts.posix import BASH, PosixHost, RawResult

_TAIL = 64 * 1024  # output kept for the error message of a failed stream()


class LocalHost(PosixHost):
    """This machine, driven through ``bash -c`` subprocesses."""

    label = "local"

    def __init__(self) -> None:
        self._cwd = str(Path.home())

    def _popen(self, command: str, *, stdin: int, stderr: int) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                [*BASH, command],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=self._cwd,
                start_new_session=True,
            )
        except OSError as err:
            raise HostError(f"cannot start bash on this machine: {err.strerror}") from err

    def _execute(self, command: str, stdin: bytes | None, timeout: float | None) -> RawResult:
        proc = self._popen(
            command,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            raise HostError(f"command timed out after {timeout:g}s: {command}") from None
        except BaseException:
            _kill_group(proc)
            raise
        return RawResult(proc.returncode, out, err)

    def _open_pipe(self, command: str) -> transfer.ExecPipe:
        return _ProcessPipe(self._popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE))

    def _read_file(self, path: str) -> tuple[int, Iterator[bytes]]:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the generator below
        except OSError as err:
            raise HostError(f"cannot read {path}: {err.strerror}") from err
        size = os.fstat(fh.fileno()).st_size

        def chunks() -> Iterator[bytes]:
            with fh:
                yield from transfer.read_chunks(fh)

        return size, chunks()

    def stream(
        self,
        command: str,
        *,
        timeout: float | None = None,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> Iterator[bytes]:
        """Run ``command`` and yield stdout+stderr bytes as they arrive."""
        proc = self._popen(
            command,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        if proc.stdin is not None:
            with contextlib.suppress(OSError):  # a command that never reads its input
                proc.stdin.write(stdin or b"")
            with contextlib.suppress(OSError):
                proc.stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        tail = b""
        try:
            for chunk in _read_until_eof(proc.stdout, deadline, command):
                tail = (tail + chunk)[-_TAIL:]
                yield chunk
            code = proc.wait()
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            proc.stdout.close()
        if check and code != 0:
            raise RemoteCommandError(command, code, tail.decode("utf-8", "replace"))

    def reconnect(self) -> None:
        """This machine is always there: nothing to reopen."""

    def close(self) -> None:
        """Nothing to release for this machine."""


def _read_until_eof(out: IO[bytes], deadline: float | None, command: str) -> Iterator[bytes]:
    with selectors.DefaultSelector() as sel:
        sel.register(out, selectors.EVENT_READ)
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not sel.select(wait):
                raise HostError(f"command timed out: {command}")
            chunk = os.read(out.fileno(), 65536)
            if not chunk:
                return
            yield chunk


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class _ProcessPipe:
    """A subprocess whose stdin we stream into; stderr is drained by a thread so it never blocks."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self._proc = proc
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._err = bytearray()
        self._drain = threading.Thread(target=self._drain_stderr, args=(proc.stderr,), daemon=True)
        self._drain.start()

    def _drain_stderr(self, err: IO[bytes]) -> None:
        while chunk := err.read(65536):
            self._err += chunk

    def write(self, data: bytes) -> None:
        """Send ``data`` to stdin."""
        self._stdin.write(data)

    def close_input(self) -> None:
        """Close stdin so the command sees end of file."""
        if not self._stdin.closed:
            self._stdin.close()

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of stdout."""
        return os.read(self._stdout.fileno(), size)

    def finish(self, timeout: float | None = None) -> tuple[int, str]:
        """Wait for the process; its exit code and stderr."""
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(self._proc)
            code = self._proc.returncode
        self._drain.join()
        self._stdout.close()
        return code, self._err.decode("utf-8", "replace")
