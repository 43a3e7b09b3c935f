"""The Host contract, run over LocalHost and over SshHost (a real sshd on 127.0.0.1).

Both hosts are this machine, so a test writes under ``tmp_path`` through the host and checks
the result with plain Python (and the other way round).
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from pathlib import Path

import pytest

from kohyawrap.errors import HostError, RemoteCommandError, UsageError
from kohyawrap.hosts.base import Host, quote, sh

HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    'it\'s "quoted"',
    "two  spaces and\ttab",
    "ünïcødé ✓ 日本",
    "back\\slash",
    "-leading-dash",
    ";touch {marker};",
]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path, files: dict[str, bytes]) -> dict[str, Path]:
    out = {}
    for rel, data in files.items():
        path = root / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[rel] = path
    return out


def test_run_returns_output_and_exit_code(any_host: Host) -> None:
    result = any_host.run("echo out; echo err >&2; exit 3", check=False)
    assert (result.exit_code, result.stdout, result.stderr, result.ok) == (
        3,
        "out\n",
        "err\n",
        False,
    )
    assert any_host.run("true").ok


def test_failed_command_raises_with_code_and_output_tail(any_host: Host) -> None:
    with pytest.raises(RemoteCommandError) as info:
        any_host.run("echo something broke >&2; exit 7")
    assert info.value.returncode == 7
    assert "something broke" in str(info.value)


def test_commands_run_under_bash_in_the_home_directory(any_host: Host) -> None:
    result = any_host.run('echo "${BASH_VERSION:+bash}"; pwd; [[ -n "$HOME" ]] && echo ok')
    assert result.stdout.split() == ["bash", any_host.home(), "ok"]
    assert any_host.home() == str(Path.home())


def test_stdin_reaches_the_command_and_ends(any_host: Host) -> None:
    secret = os.urandom(3_000_000)
    result = any_host.run("sha256sum | cut -c1-64", stdin=secret)
    assert result.stdout.strip() == _sha(secret)
    # Without stdin the command sees end of file at once instead of hanging.
    assert any_host.run("cat; echo done", timeout=20).stdout == "done\n"


def test_large_output_on_both_streams_does_not_deadlock(any_host: Host) -> None:
    chunk = "head -c 10000 /dev/zero | tr '\\0'"
    script = f"for i in $(seq 400); do {chunk} o; {chunk} e >&2; done"
    result = any_host.run(script, timeout=60)
    assert (len(result.stdout), len(result.stderr)) == (4_000_000, 4_000_000)
    assert set(result.stdout) == {"o"} and set(result.stderr) == {"e"}


def test_timeout_raises_host_error(any_host: Host) -> None:
    with pytest.raises(HostError, match="timed out"):
        any_host.run("sleep 20", timeout=0.5)


def test_stream_yields_output_as_it_comes_and_checks_exit(any_host: Host) -> None:
    chunks = list(any_host.stream("echo one; echo two >&2; echo three"))
    assert b"".join(chunks).split() == [b"one", b"two", b"three"]
    with pytest.raises(RemoteCommandError) as info:
        list(any_host.stream("echo the last words; exit 4"))
    assert info.value.returncode == 4 and "the last words" in str(info.value)


def test_hostile_names_are_quoted_everywhere(any_host: Host, tmp_path: Path) -> None:
    marker = f"pwned-{uuid.uuid4().hex[:8]}"
    names = [n.format(marker=marker) for n in HOSTILE]
    files = _tree(tmp_path, {f"{n}/{n}.txt": n.encode() for n in names})
    dest = tmp_path / "dest dir $(x)"
    stats = any_host.upload_tree(files, str(dest))
    assert stats.files_sent == len(names)
    for n in names:
        assert (dest / n / f"{n}.txt").read_bytes() == n.encode()
    paths = [str(dest / n / f"{n}.txt") for n in names]
    assert any_host.sha256(paths) == {p: _sha(Path(p).read_bytes()) for p in paths}
    first = paths[0]
    assert any_host.stat(first) is not None
    assert any_host.read_from(first, 2) == names[0].encode()[2:]
    any_host.put_bytes(b"x", str(dest / names[0] / "put $(y)"))
    any_host.run(sh("test", "-f", dest / names[1] / f"{names[1]}.txt"))
    for place in (tmp_path, Path.home(), dest, Path.cwd()):
        assert not (place / marker).exists(), f"a name was executed as a command in {place}"


def test_upload_is_incremental(any_host: Host, tmp_path: Path) -> None:
    data = {f"10_sks dog/img{i}.png": os.urandom(20_000 + i) for i in range(5)}
    data |= {f"10_sks dog/img{i}.txt": b"sks dog" for i in range(5)}
    files = _tree(tmp_path, data)
    seen: list[tuple[int, int]] = []
    first = any_host.upload_tree(
        files, str(tmp_path / "remote"), progress=lambda d, t: seen.append((d, t))
    )
    total = sum(len(v) for v in data.values())
    assert (first.files_total, first.files_sent, first.bytes_total) == (10, 10, total)
    assert first.bytes_sent >= total and seen[-1] == (total, total)
    again = any_host.upload_tree(files, str(tmp_path / "remote"))
    assert (again.files_sent, again.bytes_sent) == (0, 0)
    files["10_sks dog/img3.txt"].write_bytes(b"sks dog, on a beach")
    (tmp_path / "remote/10_sks dog/img1.png").write_bytes(b"damaged on the host")
    third = any_host.upload_tree(files, str(tmp_path / "remote"))
    assert third.files_sent == 2
    for rel, path in files.items():
        assert (tmp_path / "remote" / rel).read_bytes() == path.read_bytes()


def test_upload_refuses_unsafe_names(any_host: Host, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for bad in ("../escape", "/etc/abs", "a\nb", "a//b", "./a"):
        with pytest.raises(UsageError):
            any_host.upload_tree({bad: src}, str(tmp_path / "remote"))
    assert not (tmp_path / "remote").exists() and not (tmp_path / "escape").exists()


def test_download_is_verified_and_atomic(any_host: Host, tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    remote = tmp_path / "host side" / "lora $(x).safetensors"
    remote.parent.mkdir()
    remote.write_bytes(data)
    local = tmp_path / "local" / "lora.safetensors"
    seen: list[int] = []
    stats = any_host.download(
        str(remote), local, expected_sha256=_sha(data), progress=lambda d, t: seen.append(d)
    )
    assert local.read_bytes() == data and stats.bytes_total == len(data) and seen[-1] == len(data)
    assert not local.with_name("lora.safetensors.part").exists()


def test_download_never_overwrites(any_host: Host, tmp_path: Path) -> None:
    remote = tmp_path / "new.bin"
    remote.write_bytes(b"new")
    local = tmp_path / "mine.bin"
    local.write_bytes(b"the user's file")
    with pytest.raises(UsageError, match="overwrite"):
        any_host.download(str(remote), local, expected_sha256=_sha(b"new"))
    assert local.read_bytes() == b"the user's file"


def test_download_checksum_mismatch_keeps_nothing(any_host: Host, tmp_path: Path) -> None:
    remote = tmp_path / "ckpt.bin"
    remote.write_bytes(b"what the host has")
    local = tmp_path / "out" / "ckpt.bin"
    with pytest.raises(HostError, match="checksum mismatch"):
        any_host.download(str(remote), local, expected_sha256=_sha(b"what we expected"))
    assert not local.exists() and not (tmp_path / "out" / "ckpt.bin.part").exists()
    with pytest.raises(HostError):
        any_host.download(str(tmp_path / "missing"), tmp_path / "m", expected_sha256=_sha(b""))
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.part").exists()


def test_read_from_offsets(any_host: Host, tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_bytes(b"0123456789")
    assert any_host.read_from(str(log), 0) == b"0123456789"
    assert any_host.read_from(str(log), 4, limit=3) == b"456"
    assert any_host.read_from(str(log), 10) == b""
    assert any_host.read_from(str(log), 99) == b""
    with log.open("ab") as fh:
        fh.write(b"\rstep 2\n")
    assert any_host.read_from(str(log), 10) == b"\rstep 2\n"
    assert any_host.read_from(str(tmp_path / "not yet"), 0) == b""


def test_stat(any_host: Host, tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1234)
    got = any_host.stat(str(path))
    assert got is not None
    assert (got.size, got.is_dir) == (1234, False)
    assert got.mtime == pytest.approx(path.stat().st_mtime, abs=1e-3)
    folder = any_host.stat(str(tmp_path))
    assert folder is not None and folder.is_dir
    assert any_host.stat(str(tmp_path / "missing")) is None
    home = any_host.stat("~")
    assert home is not None and home.is_dir


def test_put_bytes_is_atomic_with_mode(any_host: Host, tmp_path: Path) -> None:
    secret = tmp_path / "deep" / "er" / "token"
    any_host.put_bytes(b"hf_secret\x00\xff", str(secret), mode=0o600)
    assert secret.read_bytes() == b"hf_secret\x00\xff"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    any_host.put_bytes(b"replaced", str(secret), mode=0o644)
    assert secret.read_bytes() == b"replaced"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o644
    assert sorted(p.name for p in secret.parent.iterdir()) == ["token"]


def test_sha256_skips_missing_and_directories(any_host: Host, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    wanted = [str(tmp_path / "a"), str(tmp_path / "nope"), str(tmp_path)]
    assert any_host.sha256(wanted) == {str(tmp_path / "a"): _sha(b"a")}
    assert any_host.sha256([]) == {}


def test_quote_keeps_values_whole(any_host: Host) -> None:
    value = "a b'c\"d$(e)`f`\\g"
    assert any_host.run(f"printf %s {quote(value)}").stdout == value


def test_timeout_covers_a_command_that_closed_its_output(any_host: Host) -> None:
    with pytest.raises(HostError, match="timed out"):
        any_host.run("exec >&- 2>&-; sleep 20", timeout=1)
