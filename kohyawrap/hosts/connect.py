"""Open a host from what the user typed: ``local`` or an SSH target such as ``root@1.2.3.4``.

:class:`ConnectOptions` is the one value that says how to reach a host; a run records it (as
JSON) so ``attach``, ``stop`` and ``pull`` reconnect the same way later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kohyawrap.hosts.base import Host

LOCAL = "local"


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach a host: port, key, host-key policy, ssh config. All optional."""

    port: int | None = None
    identity: str | None = None  # a private key file to try first
    trust_new_host: bool = False  # accept (and record) the key of a host seen for the first time
    known_hosts: str | None = None  # an OpenSSH known_hosts file to check keys against
    ssh_config: str | None = None  # an OpenSSH client config instead of ~/.ssh/config
    connect_timeout: float = 15.0
    trusted_hosts: str | None = None  # where trust_new_host records keys (default: our data dir)
    use_agent: bool = True  # also try the keys of a running ssh-agent

    def to_json(self) -> dict[str, Any]:
        """The options as JSON data (for the run record)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConnectOptions:
        """Options recorded by :meth:`to_json` (unknown keys ignored, missing ones default)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def recorded(self) -> ConnectOptions:
        """What a run records: never the opt-in to trust a new key (it must be given again)."""
        return replace(self, trust_new_host=False)

    def overlaid(self, given: ConnectOptions) -> ConnectOptions:
        """These (recorded) options with every value ``given`` anew taking precedence."""
        return ConnectOptions(
            port=given.port or self.port,
            identity=given.identity or self.identity,
            trust_new_host=given.trust_new_host,
            known_hosts=given.known_hosts or self.known_hosts,
            ssh_config=given.ssh_config or self.ssh_config,
            connect_timeout=given.connect_timeout,
            trusted_hosts=given.trusted_hosts or self.trusted_hosts,
            use_agent=given.use_agent,
        )


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def open_host(target: str, options: ConnectOptions | None = None) -> Host:
    """Connect to ``target`` and return a ready Host (``"local"`` is this machine).

    Raises HostError / HostKeyError / UsageError with a message fit for the user.
    """
    opts = options or ConnectOptions()
    if target == LOCAL:
        from kohyawrap.hosts.local import LocalHost

        return LocalHost()
    from kohyawrap.hosts.ssh import SshHost
    from kohyawrap.hosts.sshconfig import resolve

    config = _path(opts.ssh_config)
    resolved = resolve(target, port=opts.port, identity=_path(opts.identity), config_path=config)
    return SshHost(
        resolved,
        known_hosts=_path(opts.known_hosts),
        trusted_hosts=_path(opts.trusted_hosts),
        trust_new_host=opts.trust_new_host,
        use_agent=opts.use_agent,
        connect_timeout=opts.connect_timeout,
        ssh_config=config,
    )
