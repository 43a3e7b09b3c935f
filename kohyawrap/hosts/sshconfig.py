"""Where to connect: a target string plus ``~/.ssh/config`` resolved into one SshTarget.

Precedence follows OpenSSH: what the user typed (``user@host``, ``-p``, ``-i``) wins over the
config file, which wins over the defaults (port 22, the local user name, ``~/.ssh/id_*``).
``Host`` aliases, ``HostName``, ``Port``, ``User``, ``IdentityFile``, ``IdentitiesOnly``,
``ProxyJump`` and ``ProxyCommand`` are honoured.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from pathlib import Path

from kohyawrap.errors import UsageError

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
_TARGET_RE = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@:\s\[\]]+)(?::(?P<port>\d+))?$"
)


@dataclass(frozen=True)
class SshTarget:
    """A fully resolved SSH destination."""

    alias: str  # what the user typed (a config Host alias or the address itself)
    hostname: str
    port: int
    user: str
    identity_files: tuple[Path, ...]  # tried in this order, before the agent
    default_identities: bool  # also try ~/.ssh/id_* when present (False with IdentitiesOnly)
    proxy_jump: str | None = None
    proxy_command: str | None = None

    @property
    def label(self) -> str:
        """``user@host:port`` for messages."""
        return f"{self.user}@{self.hostname}:{self.port}"


def default_config_path() -> Path:
    """The user's OpenSSH client configuration file."""
    return Path.home() / ".ssh" / "config"


def parse_target(text: str) -> tuple[str | None, str, int | None]:
    """Split ``[user@]host[:port]`` (IPv6 in brackets) into its parts."""
    match = _TARGET_RE.match(text.strip())
    if not match:
        raise UsageError(
            f"not an SSH target: {text!r}",
            hint="use user@host (e.g. root@1.2.3.4) with -p PORT, or a Host alias of ~/.ssh/config",
        )
    host = match["host"].strip("[]")
    return match["user"], host, int(match["port"]) if match["port"] else None


def resolve(
    target: str,
    *,
    port: int | None = None,
    identity: Path | None = None,
    config_path: Path | None = None,
) -> SshTarget:
    """Resolve ``target`` against the ssh config into an :class:`SshTarget`."""
    user, alias, target_port = parse_target(target)
    if port is not None and target_port is not None and port != target_port:
        raise UsageError(f"two ports given for {target}: {target_port} in the target and -p {port}")
    options = _lookup(alias, config_path)
    only = str(options.get("identitiesonly", "no")).lower() == "yes"
    files = [identity.expanduser()] if identity else []
    configured = options.get("identityfile", [])
    files += [Path(p).expanduser() for p in (configured if isinstance(configured, list) else [])]
    return SshTarget(
        alias=alias,
        hostname=str(options.get("hostname", alias)),
        port=_port(port or target_port or options.get("port") or 22),
        user=user or str(options.get("user") or getpass.getuser()),
        identity_files=tuple(dict.fromkeys(files)),
        default_identities=not only,
        proxy_jump=_none_is_absent(options.get("proxyjump")),
        proxy_command=_none_is_absent(options.get("proxycommand")),
    )


def default_identity_files() -> list[Path]:
    """The ``~/.ssh/id_*`` private keys that exist, in OpenSSH's order of preference."""
    ssh_dir = Path.home() / ".ssh"
    return [ssh_dir / name for name in DEFAULT_KEYS if (ssh_dir / name).is_file()]


def _lookup(alias: str, config_path: Path | None) -> dict[str, object]:
    import paramiko

    path = config_path if config_path is not None else default_config_path()
    if not path.is_file():
        if config_path is not None:
            raise UsageError(f"ssh config file not found: {path}")
        return {}
    try:
        config = paramiko.SSHConfig.from_path(str(path))
        return dict(config.lookup(alias))
    except (OSError, ValueError, paramiko.SSHException, ImportError) as err:
        raise UsageError(f"cannot read ssh config {path}: {err}") from err


def _port(value: object) -> int:
    try:
        port = int(str(value))
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise UsageError(f"not a TCP port: {value!r}")
    return port


def _none_is_absent(value: object) -> str | None:
    if value is None or str(value).lower() == "none":
        return None
    return str(value)
