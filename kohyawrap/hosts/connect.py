"""Open a host from what the user typed: ``local`` or an SSH target such as ``root@1.2.3.4``."""

from __future__ import annotations

from pathlib import Path

from kohyawrap.hosts.base import Host

LOCAL = "local"


def open_host(
    target: str,
    *,
    port: int | None = None,
    identity: Path | None = None,
    trust_new_host: bool = False,
    known_hosts: Path | None = None,
    trusted_hosts: Path | None = None,
    ssh_config: Path | None = None,
    use_agent: bool = True,
    connect_timeout: float = 15.0,
) -> Host:
    """Connect to ``target`` and return a ready Host (``"local"`` is this machine).

    ``known_hosts`` is an extra OpenSSH known_hosts file to trust (default ``~/.ssh/known_hosts``);
    ``trusted_hosts`` is where ``trust_new_host`` records keys (default: kohyawrap's data dir);
    ``ssh_config`` replaces ``~/.ssh/config``. Raises HostError / HostKeyError / UsageError.
    """
    if target == LOCAL:
        from kohyawrap.hosts.local import LocalHost

        return LocalHost()
    from kohyawrap.hosts.ssh import SshHost
    from kohyawrap.hosts.sshconfig import resolve

    resolved = resolve(target, port=port, identity=identity, config_path=ssh_config)
    return SshHost(
        resolved,
        known_hosts=known_hosts,
        trusted_hosts=trusted_hosts,
        trust_new_host=trust_new_host,
        use_agent=use_agent,
        connect_timeout=connect_timeout,
        ssh_config=ssh_config,
    )
