"""SshHost against a real sshd: host keys, authentication, errors, ssh config, dropped links."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from kohyawrap.errors import HostError, HostKeyError, UsageError
from kohyawrap.hosts.connect import ConnectOptions, open_host
from kohyawrap.hosts.sshconfig import parse_target, resolve
from tests.fixtures.sshd import Sshd, TcpRelay, free_port, generate_key, known_hosts_line


def _fingerprint(pub: Path) -> str:
    """The SHA256 fingerprint as OpenSSH's own ssh-keygen prints it."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[1]


def test_unknown_host_is_refused_with_its_fingerprint(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    trusted = tmp_path / "trusted"
    with pytest.raises(HostKeyError) as info:
        sshd.connect(known_hosts=empty, trusted_hosts=trusted)
    text = str(info.value)
    assert _fingerprint(sshd.workdir / "ssh_host_ed25519_key.pub") in text
    assert "--trust-new-host" in text and "not a known host" in text
    assert not trusted.exists()


def test_trust_new_host_records_the_key_and_the_next_connect_checks_it(
    sshd: Sshd, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    trusted = tmp_path / "data" / "known_hosts"
    with sshd.connect(known_hosts=empty, trusted_hosts=trusted, trust_new_host=True) as host:
        assert host.run("echo hi").stdout == "hi\n"
    assert trusted.read_text() == known_hosts_line("127.0.0.1", sshd.port, sshd.host_public_key)
    with sshd.connect(known_hosts=empty, trusted_hosts=trusted) as host:
        assert host.run("echo again").stdout == "again\n"


def test_changed_host_key_is_refused_with_both_fingerprints(sshd: Sshd, tmp_path: Path) -> None:
    other_pub = generate_key(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line("127.0.0.1", sshd.port, other_pub))
    for trust in (False, True):  # --trust-new-host never overrides a changed key
        with pytest.raises(HostKeyError) as info:
            sshd.connect(
                known_hosts=known, trusted_hosts=tmp_path / "trusted", trust_new_host=trust
            )
        text = str(info.value)
        assert "CHANGED" in text
        assert _fingerprint(tmp_path / "other_host_key.pub") in text
        assert _fingerprint(sshd.workdir / "ssh_host_ed25519_key.pub") in text
        assert "ssh-keygen -R" in text and str(known) in text
    assert not (tmp_path / "trusted").exists()


def test_auth_failure_says_which_keys_were_tried(sshd: Sshd, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    generate_key(stranger)
    locked = tmp_path / "locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "pass phrase", "-f", str(locked)], check=True
    )
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n  IdentityFile {locked}\n  IdentitiesOnly yes\n")
    with pytest.raises(HostError) as info:
        sshd.connect(identity=stranger, ssh_config=config)
    text = str(info.value)
    assert "authentication failed" in text
    assert f"offered: {stranger} (ssh-ed25519 {_fingerprint(stranger.with_suffix('.pub'))})" in text
    assert f"skipped: {locked}: encrypted" in text


def test_refused_port_and_unresolvable_name(sshd: Sshd) -> None:
    with pytest.raises(HostError, match="refused the connection"):
        sshd.connect(port=free_port())
    with pytest.raises(HostError, match="cannot resolve host name"):
        open_host("root@no-such-host.invalid", ConnectOptions(connect_timeout=5))


def test_silent_port_times_out(tmp_path: Path) -> None:
    import socket

    config = tmp_path / "ssh_config"
    config.write_text("")
    with socket.socket() as quiet:  # accepts the TCP connection, never says a word
        quiet.bind(("127.0.0.1", 0))
        quiet.listen(1)
        started = time.monotonic()
        with pytest.raises(HostError, match="handshake failed"):
            open_host(
                f"root@127.0.0.1:{quiet.getsockname()[1]}",
                ConnectOptions(connect_timeout=1, ssh_config=str(config), use_agent=False),
            )
        assert time.monotonic() - started < 10


def test_ssh_config_alias_is_resolved(sshd: Sshd, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        f"Host gpu-box\n  HostName 127.0.0.1\n  Port {sshd.port}\n"
        f"  User {sshd.user}\n  IdentityFile {sshd.key_path}\n"
    )
    target = resolve("gpu-box", config_path=config)
    assert (target.hostname, target.port, target.user) == ("127.0.0.1", sshd.port, sshd.user)
    assert target.identity_files == (sshd.key_path,)
    options = ConnectOptions(
        ssh_config=str(config),
        known_hosts=str(sshd.known_hosts),
        trusted_hosts=str(tmp_path / "t"),
        use_agent=False,
    )
    with open_host("gpu-box", options) as host:
        assert host.label == f"{sshd.user}@127.0.0.1:{sshd.port}"
        assert host.run("echo via alias").stdout == "via alias\n"
    # What the user types wins over the config file.
    assert resolve("other@gpu-box", port=2222, config_path=config).port == 2222
    assert resolve("other@gpu-box", config_path=config).user == "other"


def test_proxy_jump_through_a_second_hop(sshd: Sshd, ssh_relay: TcpRelay, tmp_path: Path) -> None:
    # The jump host is reached through the relay; the target is not. If the inner connection
    # really goes through the jump host, its bytes show up in the relay's counters.
    key = sshd.key_path
    config = tmp_path / "config"
    config.write_text(
        f"Host jump\n  HostName 127.0.0.1\n  Port {ssh_relay.port}\n"
        f"  User {sshd.user}\n  IdentityFile {key}\n"
        f"Host inside\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {key}\n  ProxyJump jump\n"
    )
    known = tmp_path / "known_hosts"
    known.write_text(
        sshd.known_hosts.read_text() + sshd.known_hosts_for(ssh_relay.port).read_text()
    )
    options = ConnectOptions(
        ssh_config=str(config),
        known_hosts=str(known),
        trusted_hosts=str(tmp_path / "t"),
        use_agent=False,
    )
    with open_host("inside", options) as host:
        assert host.label == f"{sshd.user}@127.0.0.1:{sshd.port}"
        ssh_relay.reset_counters()
        assert len(host.run("head -c 1000000 /dev/zero").stdout) == 1_000_000
        assert ssh_relay.bytes_down > 1_000_000


def test_target_parsing() -> None:
    assert parse_target("root@1.2.3.4") == ("root", "1.2.3.4", None)
    assert parse_target("root@1.2.3.4:22022") == ("root", "1.2.3.4", 22022)
    assert parse_target("[::1]:2222") == (None, "::1", 2222)
    assert parse_target("gpu-box") == (None, "gpu-box", None)
    for bad in ("", "a@@b", "root@", "root@host:port"):
        with pytest.raises(UsageError):
            parse_target(bad)
    with pytest.raises(UsageError, match="two ports"):
        resolve("root@1.2.3.4:22", port=2222, config_path=None)


def test_dropped_connection_raises_host_error_and_reconnect_works(
    sshd: Sshd, ssh_relay: TcpRelay
) -> None:
    host = sshd.connect(port=ssh_relay.port)
    try:
        assert host.run("echo up").stdout == "up\n"
        threading.Timer(0.5, ssh_relay.cut).start()
        started = time.monotonic()
        with pytest.raises(HostError, match=r"connection .* was lost"):
            host.run("sleep 30")
        assert time.monotonic() - started < 10
        with pytest.raises(HostError, match="was lost"):
            host.read_from("/etc/hostname", 0)
        host.reconnect()
        assert host.run("echo back").stdout == "back\n"
        threading.Timer(0.5, ssh_relay.cut).start()
        with pytest.raises(HostError, match="was lost"):
            for _ in host.stream("for i in $(seq 60); do echo $i; sleep 0.5; done"):
                pass
    finally:
        host.close()


def test_dropped_connection_during_upload(sshd: Sshd, ssh_relay: TcpRelay, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(64 << 20)
    host = sshd.connect(port=ssh_relay.port)
    try:

        def cut_when_sending(done: int, total: int) -> None:
            if done > 4 << 20:
                ssh_relay.cut()

        with pytest.raises(HostError, match="was lost"):
            host.upload_tree({"big.bin": big}, str(tmp_path / "up"), progress=cut_when_sending)
    finally:
        host.close()


def test_hung_network_is_bounded_by_the_timeout(sshd: Sshd, ssh_relay: TcpRelay) -> None:
    with sshd.connect(port=ssh_relay.port) as host:
        ssh_relay.freeze()
        started = time.monotonic()
        with pytest.raises(HostError, match="timed out"):
            host.run("echo never seen", timeout=1)
        assert time.monotonic() - started < 5
        ssh_relay.thaw()
        assert host.run("echo flowing again", timeout=10).stdout == "flowing again\n"
