"""Host-key checking: known hosts are verified, unknown ones need an explicit opt-in.

Two known_hosts files are read: the user's own (``~/.ssh/known_hosts``, never written) and
kohyawrap's (``<user data dir>/known_hosts``), where a key accepted with ``--trust-new-host`` is
recorded, like OpenSSH's ``StrictHostKeyChecking=accept-new``. A key that differs from a
recorded one is always refused (paramiko raises ``BadHostKeyException`` for it before any policy
runs); we turn that into a HostKeyError showing both fingerprints.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from kohyawrap.errors import HostKeyError
from kohyawrap.fileio import atomic_write

if TYPE_CHECKING:
    from paramiko.pkey import PKey


def default_known_hosts() -> Path:
    """The user's OpenSSH known_hosts file (read, never written)."""
    return Path.home() / ".ssh" / "known_hosts"


def default_trusted_hosts() -> Path:
    """kohyawrap's own known_hosts, where trusted-on-first-use keys are recorded."""
    import platformdirs

    return Path(platformdirs.user_data_dir("kohyawrap")) / "known_hosts"


def fingerprint(key: PKey) -> str:
    """The key's ``SHA256:...`` fingerprint, as ``ssh-keygen -l`` and OpenSSH print it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def describe(key: PKey) -> str:
    """``ssh-ed25519 SHA256:...`` for messages."""
    return f"{key.get_name()} {fingerprint(key)}"


def known_name(hostname: str, port: int) -> str:
    """How known_hosts names a host: ``host`` on port 22, ``[host]:port`` otherwise."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


def record(path: Path, name: str, key: PKey) -> None:
    """Append ``name key`` to the known_hosts file at ``path`` atomically (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    atomic_write(path, old + line, mode=0o600)


def load(client: paramiko.SSHClient, known_hosts: Path, trusted_hosts: Path) -> None:
    """Give ``client`` the keys of both files (missing files are simply empty)."""
    for path in (known_hosts, trusted_hosts):
        if path.is_file():
            try:
                client.get_host_keys().load(str(path))
            except (OSError, paramiko.SSHException, ValueError) as err:
                raise HostKeyError(f"cannot read known hosts file {path}: {err}") from err


def where_recorded(name: str, files: tuple[Path, ...]) -> Path | None:
    """The first of ``files`` that holds a key for ``name``."""
    for path in files:
        if path.is_file():
            keys = paramiko.HostKeys()
            try:
                keys.load(str(path))
            except (OSError, paramiko.SSHException, ValueError):
                continue
            if keys.lookup(name) is not None:
                return path
    return None


class TrustPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Refuse unknown hosts, or (with ``trust_new``) record their key and go on.

    Never a silent accept: the key is written to ``record_to``, so the next connection checks
    against it, and a changed key is refused from then on.
    """

    def __init__(self, *, trust_new: bool, record_to: Path) -> None:
        self.trust_new = trust_new
        self.record_to = record_to

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: PKey) -> None:
        """Called by paramiko for a host that is in neither known_hosts file."""
        if not self.trust_new:
            raise HostKeyError(
                f"{hostname} is not a known host",
                evidence=[f"its host key: {describe(key)}"],
                hint=(
                    "compare this fingerprint with the one your provider shows, then connect "
                    f"again with --trust-new-host to record it in {self.record_to}"
                ),
            )
        record(self.record_to, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)


def changed_key_error(
    name: str, got: PKey, expected: PKey, files: tuple[Path, ...]
) -> HostKeyError:
    """The error for a host whose key differs from the recorded one."""
    where = where_recorded(name, files)
    source = str(where) if where else "known_hosts"
    return HostKeyError(
        f"the host key of {name} has CHANGED: refusing to connect",
        evidence=[
            f"recorded key: {describe(expected)} (in {source})",
            f"offered key:  {describe(got)}",
        ],
        hint=(
            "someone may be intercepting the connection. If you rented a new machine at the same "
            f"address, remove the stale entry with: ssh-keygen -R '{name}' -f {source} "
            "and connect again with --trust-new-host"
        ),
    )
