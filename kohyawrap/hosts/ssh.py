"""SshHost: a rented Linux GPU machine driven over SSH with paramiko (pure Python client side).

The connection honours ``~/.ssh/config`` (via :mod:`kohyawrap.hosts.sshconfig`), key files, the
ssh agent and ProxyJump; host keys are checked by :mod:`kohyawrap.hosts.hostkeys`. Every
command runs as ``bash --norc -c <quoted command>`` on its own exec channel, with stdin fed
then closed (secrets travel that way, never in argv or the environment). Output is read by
threads so a command writing megabytes to both stdout and stderr never deadlocks. A
connection that drops mid-command raises HostError; :meth:`SshHost.reconnect` opens a new one.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
from paramiko.auth_strategy import AuthFailure, AuthStrategy, InMemoryPrivateKey

from kohyawrap.errors import (
    ChannelRefused,
    ConnectionLost,
    HostError,
    HostKeyError,
    RemoteCommandError,
    short_command,
)
from kohyawrap.hosts import hostkeys, sshconfig, transfer
from kohyawrap.hosts.base import quote
from kohyawrap.hosts.posix import PosixHost, RawResult, bash_line
from kohyawrap.hosts.sshconfig import SshTarget

# Our receive window per channel. paramiko's default (2 MiB) caps a download at 2 MiB per round
# trip (40 MB/s at 50 ms); 16 MiB lets the cipher, not the latency, set the pace.
WINDOW = 16 << 20
# AES-GCM first: one OpenSSL call per packet instead of AES-CTR plus a separate HMAC; uploads
# ran 25-30% faster on loopback (docs/hosts.md). Every OpenSSH since 6.2 offers them.
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_TAIL = 64 * 1024


class SshHost(PosixHost):
    """A Linux host reached over SSH. Connects on construction; ``close()`` when done."""

    # Channels one upload uses at once. Each is capped by sshd's 2 MiB window per round trip
    # (~13 MB/s at 150 ms). sshd allows 10 sessions per connection (MaxSessions): the lanes
    # beyond the first are shared by all uploads, so two uploads beside an install and a small
    # command stay at 1 + 1 + 5 + 2.
    lanes = 6

    def __init__(
        self,
        target: SshTarget,
        *,
        known_hosts: Path | None = None,
        trusted_hosts: Path | None = None,
        trust_new_host: bool = False,
        use_agent: bool = True,
        connect_timeout: float = 15.0,
        keepalive: int = 15,
        ssh_config: Path | None = None,
    ) -> None:
        self.target = target
        self.label = target.label
        self.known_hosts = known_hosts or hostkeys.default_known_hosts()
        self.trusted_hosts = trusted_hosts or hostkeys.default_trusted_hosts()
        self.trust_new_host = trust_new_host
        self.use_agent = use_agent
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.ssh_config = ssh_config
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._jump: SshHost | None = None
        self.reconnect()

    # --- connection ----------------------------------------------------------------------------

    def reconnect(self) -> None:
        """Drop the current connection (if any) and open a new one."""
        self.close()
        sock = self._open_socket()
        client = paramiko.SSHClient()
        hostkeys.load(client, self.known_hosts, self.trusted_hosts)
        client.set_missing_host_key_policy(
            hostkeys.TrustPolicy(trust_new=self.trust_new_host, record_to=self.trusted_hosts)
        )
        try:
            self._handshake(client, sock)
        except BaseException:
            client.close()
            sock.close()
            self._close_jump()
            raise
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(self.keepalive)
        self._client = client

    def _handshake(self, client: paramiko.SSHClient, sock: Any) -> None:
        t = self.target
        strategy = _KeyAuth(t, use_agent=self.use_agent)
        try:
            client.connect(
                t.hostname,
                port=t.port,
                username=t.user,
                sock=sock,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                auth_strategy=strategy,
                transport_factory=_fast_transport,
            )
        except paramiko.BadHostKeyException as err:
            name = hostkeys.known_name(t.hostname, t.port)
            files = (self.known_hosts, self.trusted_hosts)
            raise hostkeys.changed_key_error(name, err.key, err.expected_key, files) from None
        except AuthFailure as err:
            raise strategy.failure(err) from None
        except HostKeyError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as err:
            raise HostError(
                f"{t.hostname}:{t.port} answered but the SSH handshake failed: {err}",
                hint="is this the SSH port? A fresh machine may need a minute before sshd answers",
            ) from None

    def _open_socket(self) -> Any:
        t = self.target
        if t.proxy_jump:
            return self._jump_channel(t.proxy_jump)
        if t.proxy_command:
            try:
                return paramiko.ProxyCommand(t.proxy_command)
            except (paramiko.SSHException, OSError) as err:
                raise HostError(f"ProxyCommand for {t.alias} failed to start: {err}") from None
        return connect_socket(t.hostname, t.port, self.connect_timeout)

    def _jump_channel(self, jumps: str) -> paramiko.Channel:
        *first, last = [j.strip() for j in jumps.split(",")]
        hop = sshconfig.resolve(last, config_path=self.ssh_config)
        if first:
            hop = _replace_jump(hop, ",".join(first))
        self._jump = SshHost(
            hop,
            known_hosts=self.known_hosts,
            trusted_hosts=self.trusted_hosts,
            trust_new_host=self.trust_new_host,
            use_agent=self.use_agent,
            connect_timeout=self.connect_timeout,
            keepalive=self.keepalive,
            ssh_config=self.ssh_config,
        )
        dest = (self.target.hostname, self.target.port)
        try:
            return self._jump._live().open_channel(
                "direct-tcpip", dest, ("127.0.0.1", 0), timeout=self.connect_timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise HostError(
                f"jump host {self._jump.label} could not reach {dest[0]}:{dest[1]}: {err}"
            ) from None

    def _live(self) -> paramiko.Transport:
        client = self._client
        transport = client.get_transport() if client else None
        if transport is None or not transport.is_active():
            raise self._lost()
        return transport

    def _lost(self, doing: str | None = None) -> HostError:
        what = f" while running: {short_command(doing)}" if doing else ""
        return ConnectionLost(f"the connection to {self.label} was lost{what}")

    def close(self) -> None:
        """Close the connection and any jump host (idempotent)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._close_jump()

    def _close_jump(self) -> None:
        jump, self._jump = self._jump, None
        if jump is not None:
            jump.close()

    # --- primitives ----------------------------------------------------------------------------

    def _channel(
        self, command: str, *, combine: bool = False, timeout: float | None = None
    ) -> paramiko.Channel:
        """Open a session and start ``command`` within ``timeout`` (default: connect timeout)."""
        transport = self._live()
        limit = self.connect_timeout if timeout is None else min(timeout, self.connect_timeout)
        watchdog: threading.Timer | None = None
        try:
            chan = transport.open_session(window_size=WINDOW, timeout=limit)
            chan.set_combine_stderr(combine)
            # paramiko waits for the exec reply without a timeout: closing the channel ends it.
            watchdog = threading.Timer(limit, chan.close)
            watchdog.start()
            chan.exec_command(bash_line(command))
        except (paramiko.SSHException, OSError, EOFError) as err:
            if not transport.is_active():
                raise self._lost(command) from None
            # paramiko keeps one refusal per connection: when channels are opened from several
            # threads, one gets the ChannelException and the others "Unable to open channel."
            if isinstance(err, paramiko.ChannelException) or "Unable to open channel" in str(err):
                raise ChannelRefused(f"{self.label} refused to open a channel: {err}") from None
            if watchdog is None or watchdog.finished.is_set() or "Timeout" in str(err):
                raise self._timed_out(command, limit) from None
            raise HostError(f"{self.label} refused to run a command: {err}") from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
        return chan

    def _timed_out(self, command: str, seconds: float) -> HostError:
        return ConnectionLost(
            f"{self.label}: command timed out after {seconds:g}s: {short_command(command)}",
            hint="the host or the network may be hanging; try again, or reconnect",
        )

    def _execute(self, command: str, stdin: bytes | None, timeout: float | None) -> RawResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        chan = self._channel(command, timeout=timeout)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            out, err = _collect(chan, stdin, left)
        except TimeoutError:
            chan.close()
            raise self._timed_out(command, timeout or 0) from None
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return RawResult(self._exit_code(chan, command, left), out, err)

    def _exit_code(self, chan: paramiko.Channel, command: str, wait: float | None = None) -> int:
        """The exit status (waiting up to ``wait`` s after the output ended); closes ``chan``."""
        if not chan.status_event.wait(wait):
            chan.close()
            raise self._timed_out(command, wait or 0)
        code = chan.exit_status
        chan.close()
        if code == -1:  # closed without an exit-status message
            if not self._transport_active():
                raise self._lost(command)
            raise HostError(f"{self.label}: the command ended without an exit status: {command}")
        return int(code)

    def _transport_active(self) -> bool:
        client = self._client
        transport = client.get_transport() if client else None
        return transport is not None and transport.is_active()

    def _open_pipe(self, command: str) -> transfer.ExecPipe:
        return _ChannelPipe(self, self._channel(command), command)

    def _read_file(self, path: str) -> tuple[int, Iterator[bytes]]:
        # `cat` on an exec channel with a 16 MiB window beat SFTP prefetch 3x at 50 ms RTT
        # (docs/hosts.md); the first line is the size, for progress.
        p = quote(path)
        pipe = _ChannelPipe(self, self._channel(f"stat -L -c %s -- {p} && exec cat -- {p}"), path)
        pipe.close_input()
        head = b""
        while b"\n" not in head:
            more = pipe.read(64)
            if not more:
                code, err = pipe.finish()
                raise HostError(f"cannot read {path} on {self.label}: {err.strip() or code}")
            head += more
        size_text, rest = head.split(b"\n", 1)
        return int(size_text), _pipe_chunks(pipe, rest, path)

    def stream(
        self,
        command: str,
        *,
        timeout: float | None = None,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> Iterator[bytes]:
        """Run ``command`` and yield stdout+stderr bytes as they arrive."""
        # Merge stderr into stdout on the host: two SSH streams arrive in no fixed order.
        chan = self._channel(f"exec 2>&1\n{command}", combine=True, timeout=timeout)
        _feed(chan, stdin)
        deadline = None if timeout is None else time.monotonic() + timeout
        tail = b""
        try:
            while True:
                if deadline is not None:
                    chan.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = chan.recv(65536)
                except TimeoutError:
                    raise HostError(f"{self.label}: command timed out: {command}") from None
                if not chunk:
                    break
                tail = (tail + chunk)[-_TAIL:]
                yield chunk
            code = self._exit_code(chan, command)
        finally:
            chan.close()
        if check and code != 0:
            raise RemoteCommandError(command, code, tail.decode("utf-8", "replace"))


def connect_socket(hostname: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``hostname:port`` with clear errors; Nagle off, TCP keepalive on."""
    where = f"{hostname}:{port}"
    try:
        sock = socket.create_connection((hostname, port), timeout=timeout)
    except socket.gaierror as err:
        raise HostError(
            f"cannot resolve host name {hostname!r}: {err.strerror}",
            hint="check the address for a typo",
        ) from None
    except ConnectionRefusedError:
        raise HostError(
            f"{where} refused the connection",
            hint="check the port (-p): rented machines often listen for SSH on a non-standard port",
        ) from None
    except TimeoutError:
        raise HostError(
            f"no answer from {where} within {timeout:g}s",
            hint="the machine may still be booting, or a firewall drops the traffic",
        ) from None
    except OSError as err:
        raise HostError(f"cannot reach {where}: {err.strerror or err}") from None
    # Without TCP_NODELAY small requests wait for delayed ACKs (~40 ms each; see docs/hosts.md).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _detect_dead_peer(sock)
    return sock


# (option, value): idle seconds before probing, seconds between probes, probes, and the
# milliseconds unacknowledged data may wait before the kernel gives up on the peer.
_TCP_OPTIONS = (
    ("TCP_KEEPIDLE", 30),
    ("TCP_KEEPINTVL", 10),
    ("TCP_KEEPCNT", 6),
    ("TCP_USER_TIMEOUT", 120_000),
)


def _detect_dead_peer(sock: socket.socket) -> None:
    """Let the kernel notice a vanished peer in about two minutes instead of hours.

    paramiko's keepalive sends without waiting for a reply, so it alone never fails; with these
    options a peer that stops acknowledging (laptop asleep, host gone) breaks the socket, and
    the next call raises HostError. Options this OS lacks are skipped.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _TCP_OPTIONS:
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _fast_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """A paramiko Transport that proposes the AES-GCM ciphers first."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    known = tuple(options.ciphers)
    fast = tuple(c for c in FAST_CIPHERS if c in known)
    options.ciphers = fast + tuple(c for c in known if c not in fast)
    return transport


def _replace_jump(target: SshTarget, jump: str) -> SshTarget:
    from dataclasses import replace

    return replace(target, proxy_jump=jump, proxy_command=None)


def _collect(
    chan: paramiko.Channel, stdin: bytes | None, timeout: float | None
) -> tuple[bytes, bytes]:
    """Feed stdin and read stdout and stderr at once (threads), within ``timeout`` seconds."""
    out, err = bytearray(), bytearray()
    readers = [
        threading.Thread(target=_drain, args=(chan.recv, out), daemon=True),
        threading.Thread(target=_drain, args=(chan.recv_stderr, err), daemon=True),
        threading.Thread(target=_feed, args=(chan, stdin), daemon=True),
    ]
    for thread in readers:
        thread.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in readers:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise TimeoutError
    return bytes(out), bytes(err)


def _drain(recv: Any, into: bytearray) -> None:
    with contextlib.suppress(OSError, EOFError):
        while chunk := recv(1 << 16):
            into += chunk


def _feed(chan: paramiko.Channel, data: bytes | None) -> None:
    # A command that exits without reading its stdin closes the channel: that is not an error.
    with contextlib.suppress(OSError, EOFError):
        if data:
            chan.sendall(data)
        chan.shutdown_write()


def _pipe_chunks(pipe: _ChannelPipe, first: bytes, path: str) -> Iterator[bytes]:
    try:
        if first:
            yield first
        while chunk := pipe.read(transfer.CHUNK):
            yield chunk
        code, err = pipe.finish()
        if code != 0:
            raise HostError(f"reading {path} failed: {err.strip() or code}")
    finally:
        pipe.abandon()


class _ChannelPipe:
    """An exec channel whose stdin we stream into; stderr is drained by a thread."""

    def __init__(self, host: SshHost, chan: paramiko.Channel, command: str) -> None:
        self._host = host
        self._chan = chan
        self._command = command
        self._err = bytearray()
        self._drain = threading.Thread(
            target=_drain, args=(chan.recv_stderr, self._err), daemon=True
        )
        self._drain.start()

    def write(self, data: bytes) -> None:
        """Send ``data`` to the command's stdin (raises OSError once the channel is closed)."""
        # paramiko's sendall re-slices what is left after each 32 KiB packet: on bytes that
        # copies the rest every time; a memoryview slices for free (25% of upload CPU time).
        self._chan.sendall(memoryview(data))

    def close_input(self) -> None:
        """Send EOF on stdin."""
        self._chan.shutdown_write()

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of stdout; b"" at the end."""
        return bytes(self._chan.recv(size))

    def finish(self, timeout: float | None = None) -> tuple[int, str]:
        """Wait for the exit status; a lost connection raises HostError."""
        if not self._chan.status_event.wait(timeout):
            self._chan.close()
            raise HostError(
                f"{self._host.label}: no exit status after {timeout:g}s: {self._command}"
            )
        self._drain.join()
        code = self._host._exit_code(self._chan, self._command)
        return code, self._err.decode("utf-8", "replace")

    def abandon(self) -> None:
        """Close the channel without waiting (the command sees a hang-up)."""
        self._chan.close()


class _KeyAuth(AuthStrategy):  # type: ignore[misc]  # paramiko has no type hints
    """Try, in order: the given identity files, agent keys, then ``~/.ssh/id_*``.

    Keys are loaded up front so the failure message can say exactly what was tried and why a
    file was skipped (missing, encrypted, unsupported).
    """

    def __init__(self, target: SshTarget, *, use_agent: bool) -> None:
        super().__init__(ssh_config=None)
        self.target = target
        self.use_agent = use_agent
        self.skipped: list[str] = []
        self.tried: list[str] = []

    def get_sources(self) -> Iterator[InMemoryPrivateKey]:
        """Yield each key to offer the server, loading files as we go."""
        user = self.target.user
        given = list(self.target.identity_files)
        yield from self._from_files(given)
        for key in self._agent_keys():
            self.tried.append(f"ssh-agent key ({hostkeys.describe(key)})")
            yield InMemoryPrivateKey(user, key)
        if self.target.default_identities:
            yield from self._from_files(
                [p for p in sshconfig.default_identity_files() if p not in given]
            )

    def _from_files(self, paths: list[Path]) -> Iterator[InMemoryPrivateKey]:
        for path in paths:
            key = self._load(path)
            if key is not None:
                self.tried.append(f"{path} ({hostkeys.describe(key)})")
                yield InMemoryPrivateKey(self.target.user, key)

    def _load(self, path: Path) -> paramiko.PKey | None:
        try:
            return paramiko.PKey.from_path(path)
        except FileNotFoundError:
            self.skipped.append(f"{path}: no such file")
        except paramiko.PasswordRequiredException:
            self.skipped.append(f"{path}: encrypted (add it to ssh-agent with: ssh-add {path})")
        except TypeError as err:
            # cryptography's loader says "password-protected" this way for OpenSSH-format keys.
            if "password" not in str(err):
                raise
            self.skipped.append(f"{path}: encrypted (add it to ssh-agent with: ssh-add {path})")
        except (paramiko.SSHException, OSError, ValueError) as err:
            self.skipped.append(f"{path}: not a usable private key ({err})")
        return None

    def _agent_keys(self) -> list[Any]:
        if not self.use_agent:
            return []
        try:
            return list(paramiko.Agent().get_keys())
        except (paramiko.SSHException, OSError):
            return []

    def failure(self, err: AuthFailure) -> HostError:
        """The HostError for a server that accepted none of our keys."""
        evidence = [f"offered: {t}" for t in self.tried] or ["no key could be offered"]
        evidence += [f"skipped: {s}" for s in self.skipped]
        return HostError(
            f"{self.target.label} rejected every SSH key we offered (authentication failed)",
            evidence=evidence,
            hint=(
                "pass the right private key with -i, or load it into ssh-agent; the user name "
                f"'{self.target.user}' must be the one the provider set up (often root)"
            ),
        )
