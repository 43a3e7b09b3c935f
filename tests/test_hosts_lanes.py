"""Uploads over several channels: small files as parallel tar streams, large files in ranged
parts verified by the host, sidecars that spare a warm run from hashing gigabytes, and what
happens when the connection drops or the host allows fewer channels."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from kohyawrap.errors import HostError, UsageError
from kohyawrap.hashcache import HashCache
from kohyawrap.hosts import transfer
from kohyawrap.hosts.local import LocalHost
from tests.fixtures.sshd import Sshd, TcpRelay, running_sshd

MB = 1 << 20


def _big(path: Path, size: int) -> Path:
    with path.open("wb") as fh:
        left = size
        while left:
            n = min(left, 8 * MB)
            fh.write(os.urandom(n))
            left -= n
    old = time.time() - 60
    os.utime(path, (old, old))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_parts_and_groups_are_planned_deterministically() -> None:
    parts = transfer.parts_of(2_000_000_000)
    assert sum(p.length for p in parts) == 2_000_000_000
    assert [p.offset for p in parts] == sorted({p.offset for p in parts})
    step = parts[0].length
    assert step % MB == 0 and 16 * MB <= step <= 128 * MB
    assert len(parts) == -(-2_000_000_000 // step) and parts == transfer.parts_of(2_000_000_000)
    assert transfer.parts_of(0) == [transfer.Part(0, 0)]
    dealt = transfer.lane_parts(parts, 6)
    assert len(dealt) == 6
    assert sorted((p for d in dealt for p in d), key=lambda p: p.offset) == parts
    items = [
        transfer.LocalFile(f"10_sks dog/{i:03d}.png", Path("x"), 30_000 + i, "0" * 64)
        for i in range(600)
    ]
    groups = transfer.tar_groups(items, 4)
    loads = [sum(i.size for i in g) for g in groups]
    assert len(groups) == 4 and max(loads) - min(loads) < 40_000
    assert sorted(i.rel for g in groups for i in g) == sorted(i.rel for i in items)
    assert all(g == sorted(g, key=lambda i: i.rel) for g in groups)
    assert len(transfer.tar_groups(items[:10], 4)) == 1, "a little data stays one stream"


@pytest.mark.slow
def test_a_large_file_goes_in_parts_verified_with_a_sidecar(sshd: Sshd, tmp_path: Path) -> None:
    model = _big(tmp_path / "基础 model $(x).safetensors", 70 * MB + 12345)
    dest = tmp_path / "models dir"
    seen: list[tuple[int, int]] = []
    with sshd.connect() as host:
        stats = host.upload_tree(
            {"uploads/m.safetensors": model},
            str(dest),
            progress=lambda d, t: seen.append((d, t)),
            sidecars=True,
        )
        assert (stats.files_sent, stats.bytes_sent) == (1, model.stat().st_size)
        assert seen[-1] == (model.stat().st_size,) * 2
        there = dest / "uploads" / "m.safetensors"
        assert _sha(there) == _sha(model)
        digest, size, inode, mtime, ctime = (
            (dest / "uploads" / "m.safetensors.sha256").read_text().split()
        )
        st = there.stat()
        assert (digest, int(size), int(inode)) == (_sha(model), st.st_size, st.st_ino)
        assert float(mtime) == pytest.approx(st.st_mtime) and float(ctime) == pytest.approx(
            st.st_ctime
        )
        assert [p.name for p in (dest / "uploads").iterdir()] != [], "no staging folder left"
        assert not list((dest / "uploads").glob(".*upload"))
        again = host.upload_tree({"uploads/m.safetensors": model}, str(dest), sidecars=True)
        assert again.files_sent == 0


@pytest.mark.slow
def test_a_sidecar_is_trusted_only_for_the_exact_file(sshd: Sshd, tmp_path: Path) -> None:
    model = _big(tmp_path / "m.bin", 65 * MB)
    dest = tmp_path / "up"
    there, side = dest / "m.bin", dest / "m.bin.sha256"
    with sshd.connect() as host:
        host.upload_tree({"m.bin": model}, str(dest), sidecars=True)
        digest, key = side.read_text().split(" ", 1)
        # A sidecar that matches the file's size and times is believed without reading the file:
        # here it lies, so the file is sent again (and the lie replaced).
        side.write_text("f" * 64 + " " + key)
        assert host.upload_tree({"m.bin": model}, str(dest), sidecars=True).files_sent == 1
        assert side.read_text().split()[0] == digest
        key = side.read_text().split(" ", 1)[1]  # the file was replaced: a new inode and times
        # A sidecar written for another size is never believed: the host reads the file, finds
        # it whole, and nothing travels.
        size = key.split()[0]
        side.write_text(digest + " " + key.replace(size, str(int(size) + 1), 1))
        assert host.upload_tree({"m.bin": model}, str(dest), sidecars=True).files_sent == 0
        assert side.read_text().split(" ", 1)[1].strip() == key.strip()
        # The file changed on the host behind the sidecar's back (new times): sent again.
        there.write_bytes(b"\0" * there.stat().st_size)
        assert host.upload_tree({"m.bin": model}, str(dest), sidecars=True).files_sent == 1
        assert _sha(there) == digest


@pytest.mark.slow
def test_a_drop_mid_upload_resends_only_the_missing_parts(
    sshd: Sshd, ssh_relay: TcpRelay, tmp_path: Path
) -> None:
    model = _big(tmp_path / "m.bin", 96 * MB)
    size = model.stat().st_size
    dest = tmp_path / "up"
    host = sshd.connect(port=ssh_relay.port)
    host.lanes = 2  # six 16 MiB parts, three a lane: at half way each lane has finished one
    try:
        cut = []

        def cut_halfway(done: int, total: int) -> None:
            if done > total // 2 and not cut:
                cut.append(ssh_relay.cut())

        with pytest.raises(HostError, match="lost"):
            host.upload_tree({"m.bin": model}, str(dest), progress=cut_halfway, sidecars=True)
        assert not (dest / "m.bin").exists(), "nothing half-written is put in place"
        host.reconnect()
        again = host.upload_tree({"m.bin": model}, str(dest), sidecars=True)
        assert again.files_sent == 1 and 0 < again.bytes_sent < size
        assert _sha(dest / "m.bin") == _sha(model)
    finally:
        host.close()


@pytest.mark.slow
def test_fewer_channels_than_lanes_still_finish(tmp_path: Path) -> None:
    files = {}
    for i in range(200):
        path = tmp_path / "src" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(60_000))
        files[f"10_sks dog/{i:03d}.png"] = path
    files["m.bin"] = _big(tmp_path / "m.bin", 65 * MB)
    with (
        running_sshd(tmp_path / "sshd", extra_config="MaxSessions 2\n") as server,
        server.connect() as host,
    ):
        stats = host.upload_tree(files, str(tmp_path / "up"), sidecars=True)
    assert stats.files_sent == len(files)
    for rel, path in files.items():
        assert _sha(tmp_path / "up" / rel) == _sha(path), rel


def test_a_large_file_edited_mid_upload_fails_and_is_hashed_afresh(tmp_path: Path) -> None:
    model = _big(tmp_path / "m.bin", 65 * MB)
    cache = HashCache.default()
    cache.sha256(model)

    def edit(done: int, total: int) -> None:
        if done > 20 * MB:
            with model.open("r+b") as fh:
                fh.write(b"edited")

    with pytest.raises(UsageError, match="changed while"):
        LocalHost().upload_tree({"m.bin": model}, str(tmp_path / "up"), progress=edit)
    assert not (tmp_path / "up" / "m.bin").exists()
    LocalHost().upload_tree({"m.bin": model}, str(tmp_path / "up"))
    assert _sha(tmp_path / "up" / "m.bin") == _sha(model)


def test_many_small_files_over_several_streams(sshd: Sshd, tmp_path: Path) -> None:
    files = {}
    for i in range(400):
        for ext, data in ((".png", os.urandom(30_000)), (".txt", f"sks 狗, photo {i}".encode())):
            path = tmp_path / "src" / f"{i:03d}{ext}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            files[f"10_sks 狗/{i:03d}{ext}"] = path
    with sshd.connect() as host:
        stats = host.upload_tree(files, str(tmp_path / "up"))
    assert stats.files_sent == 800
    for rel, path in files.items():
        assert (tmp_path / "up" / rel).read_bytes() == path.read_bytes(), rel


@pytest.mark.slow  # kills a receiver mid-transfer: timing that many parallel tests can starve
def test_one_channel_dropped_mid_way_fails_cleanly_and_the_rest_is_kept(
    sshd: Sshd, tmp_path: Path
) -> None:
    """One lane's receiver dies (its channel ends) while the others go on: the upload fails
    with the host's words, nothing half-made is put in place, and the next try sends only the
    parts that did not arrive."""
    import signal

    model = _big(tmp_path / "m.bin", 96 * MB)
    dest = tmp_path / "up"
    killed: list[int] = []

    def receivers() -> list[int]:
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                argv = proc.joinpath("cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-c" in argv[:3] and any(str(dest).encode() in a for a in argv[2:]):
                found.append(int(proc.name))
        return found

    def kill_one(done: int, total: int) -> None:
        if done > total // 4 and not killed:
            for pid in receivers()[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    with sshd.connect() as host:
        host.lanes = 2
        with pytest.raises(HostError):
            host.upload_tree({"m.bin": model}, str(dest), progress=kill_one, sidecars=True)
        assert killed, "a receiver was running"
        assert not (dest / "m.bin").exists()
        again = host.upload_tree({"m.bin": model}, str(dest), sidecars=True)
        assert again.files_sent == 1 and 0 < again.bytes_sent < model.stat().st_size
    assert _sha(dest / "m.bin") == _sha(model)
