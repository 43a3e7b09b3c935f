#!/usr/bin/env python3
"""Benchmark kohyawrap's transfers against OpenSSH through a relay that adds latency.

Starts a throwaway sshd on 127.0.0.1 (the test fixture's code), puts a TCP relay with
``--rtt`` milliseconds of round trip in front of it, and times, on the same connection path:

* upload of a dataset (``--files`` files, ``--mb`` MB of random bytes, half images half captions):
  kohyawrap ``upload_tree`` (connect included) vs ``tar c | ssh tar x``;
* re-upload of the unchanged dataset: bytes on the wire (relay counters) vs the dataset size;
* download of a ``--mb`` MB checkpoint: kohyawrap ``download`` (cat over an exec channel,
  connect included) vs SFTP ``getfo`` with prefetch vs ``ssh cat``;
* ``--case small``: many small files (``--small-files`` images + as many captions, 48 MB in all)
  vs ``tar c | ssh tar x``;
* ``--case big``: one ``--big-mb`` MB file (a local base model) uploaded with sidecars, ranged
  parts over several channels, vs ``cat | ssh 'cat > f'``; both copies are then sha256-checked on
  the host.

Run from the repository root:  .venv/bin/python scripts/bench_transfer.py [--scale 0.25]
                               .venv/bin/python scripts/bench_transfer.py --case big --rtt 150
                               .venv/bin/python scripts/bench_transfer.py --case small
Needs /usr/sbin/sshd, ssh and ssh-keygen. Read the ratios: absolute MB/s depend on the CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kohyawrap.hosts.ssh import SshHost
from tests.fixtures.sshd import Sshd, TcpRelay, running_sshd


def make_dataset(root: Path, files: int, total_bytes: int) -> dict[str, Path]:
    """Half 'images' (random, incompressible) carrying the bytes, half short captions."""
    images = files // 2
    size = total_bytes // images
    out = {}
    for i in range(images):
        for ext, data in ((".png", os.urandom(size)), (".txt", f"sks dog, photo {i}".encode())):
            rel = f"10_sks dog/img_{i:04d}{ext}"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            out[rel] = path
    # Settled files, as a dataset is by the time it is uploaded: the hash cache keeps their
    # digests (a real run hashes them when it plans, and the upload reuses them).
    old = time.time() - 60
    for path in out.values():
        os.utime(path, (old, old))
    return out


def best_of(repeat: int, fn: Callable[[int], None]) -> float:
    """Median wall time of ``fn(attempt)`` over ``repeat`` attempts."""
    times = []
    for attempt in range(repeat):
        t0 = time.perf_counter()
        fn(attempt)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ssh_argv(server: Sshd, port: int, known_hosts: Path) -> list[str]:
    """The OpenSSH client command line for the baseline (same key, same relay)."""
    return [
        "ssh", "-F", "/dev/null", "-p", str(port), "-i", str(server.key_path),
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "BatchMode=yes", server.target,
    ]  # fmt: skip


def connect(server: Sshd, port: int) -> SshHost:
    """A fresh kohyawrap connection through the relay."""
    return server.connect(port=port)


def bench_upload(
    server: Sshd, relay: TcpRelay, files: dict[str, Path], src: Path, work: Path, repeat: int
) -> dict[str, float]:
    """Upload timings (s) and the re-upload's wire bytes."""
    kh = server.known_hosts_for(relay.port)
    total = sum(p.stat().st_size for p in files.values())

    def ours(i: int) -> None:
        with connect(server, relay.port) as host:
            host.upload_tree(files, str(work / f"ours{i}"))

    def openssh(i: int) -> None:
        remote = f"mkdir -p {work}/ssh{i} && tar -x -C {work}/ssh{i}"
        tar = subprocess.Popen(["tar", "-c", "-C", str(src), "."], stdout=subprocess.PIPE)
        subprocess.run([*ssh_argv(server, relay.port, kh), remote], stdin=tar.stdout, check=True)
        tar.wait()

    t_ours = best_of(repeat, ours)
    t_ssh = best_of(repeat, openssh)
    with connect(server, relay.port) as host:
        relay.reset_counters()
        t0 = time.perf_counter()
        again = host.upload_tree(files, str(work / "ours0"))
        t_again = time.perf_counter() - t0
        wire = relay.bytes_up + relay.bytes_down
    assert again.files_sent == 0
    return {
        "ours": t_ours,
        "openssh": t_ssh,
        "again_s": t_again,
        "again_wire": wire,
        "total": total,
    }


def bench_download(
    server: Sshd, relay: TcpRelay, ckpt: Path, work: Path, repeat: int
) -> dict[str, float]:
    """Download timings (s): ours (cat), SFTP getfo with prefetch, ssh cat."""
    kh = server.known_hosts_for(relay.port)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()

    def ours(i: int) -> None:
        with connect(server, relay.port) as host:
            host.download(str(ckpt), work / f"ours{i}.safetensors", expected_sha256=digest)

    def sftp(i: int) -> None:
        import paramiko

        with connect(server, relay.port) as host:
            client = paramiko.SFTPClient.from_transport(host._live(), window_size=16 << 20)
            assert client is not None
            with (work / f"sftp{i}").open("wb") as fh:
                client.getfo(str(ckpt), fh, prefetch=True, max_concurrent_prefetch_requests=64)
            client.close()

    def openssh(i: int) -> None:
        with (work / f"ssh{i}").open("wb") as fh:
            subprocess.run(
                [*ssh_argv(server, relay.port, kh), f"cat {ckpt}"], stdout=fh, check=True
            )

    return {
        "ours": best_of(repeat, ours),
        "sftp": best_of(repeat, sftp),
        "openssh": best_of(repeat, openssh),
    }


def bench_big(server: Sshd, relay: TcpRelay, big: Path, work: Path) -> dict[str, float]:
    """One large file: kohyawrap (parts over several channels, sidecar) vs cat | ssh 'cat > f'."""
    kh = server.known_hosts_for(relay.port)
    digest = hashlib.sha256()
    with big.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    t0 = time.perf_counter()
    with connect(server, relay.port) as host:
        host.upload_tree({big.name: big}, str(work / "ours"), sidecars=True)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    with big.open("rb") as fh:
        subprocess.run(
            [*ssh_argv(server, relay.port, kh), f"cat > {work / 'ssh.bin'}"], stdin=fh, check=True
        )
    t_ssh = time.perf_counter() - t0
    with connect(server, relay.port) as host:
        there = host.sha256([str(work / "ours" / big.name), str(work / "ssh.bin")])
        t0 = time.perf_counter()
        again = host.upload_tree({big.name: big}, str(work / "ours"), sidecars=True)
        t_again = time.perf_counter() - t0
    assert set(there.values()) == {digest.hexdigest()}, "a copy differs from the local file"
    assert again.files_sent == 0
    return {"ours": t_ours, "openssh": t_ssh, "again_s": t_again}


def run_big(args: argparse.Namespace, tmp: Path) -> None:
    """--case big: make the file, time both uploads, print the ratio."""
    size = int(args.big_mb * args.scale * 1e6)
    big = tmp / "base model.safetensors"
    with big.open("wb") as fh:
        for _ in range(size // (1 << 20)):
            fh.write(os.urandom(1 << 20))
        fh.write(os.urandom(size % (1 << 20)))
    old = time.time() - 60  # settled: the hash cache keeps its digest, as for a real model
    os.utime(big, (old, old))
    with (
        running_sshd(tmp / "sshd") as server,
        TcpRelay(server.port, delay=args.rtt / 2000) as relay,
    ):
        (tmp / "up").mkdir()
        r = bench_big(server, relay, big, tmp / "up")
    ratio = r["ours"] / r["openssh"]
    mb = size / 1e6
    print(
        f"RTT {args.rtt:.0f} ms, one {mb:.0f} MB file, connection set-up included, both sha256-verified on the host"
    )
    print(
        f"upload    kohyawrap {r['ours']:.2f}s ({mb / r['ours']:.1f} MB/s)  "
        f"cat|ssh {r['openssh']:.2f}s ({mb / r['openssh']:.1f} MB/s)  ratio {ratio:.2f}x  "
        f"target <= 0.40x: {'met' if ratio <= 0.40 else 'MISSED'}"
    )
    print(f"re-upload of the unchanged file (sidecar): {r['again_s']:.2f}s")


def run_small(args: argparse.Namespace, tmp: Path) -> None:
    """--case small: many small files vs tar c | ssh tar x."""
    size = int(48e6 * args.scale)
    files = make_dataset(tmp / "src", args.small_files * 2, size)
    with (
        running_sshd(tmp / "sshd") as server,
        TcpRelay(server.port, delay=args.rtt / 2000) as relay,
    ):
        (tmp / "up").mkdir()
        up = bench_upload(server, relay, files, tmp / "src", tmp / "up", args.repeat)
    ratio = up["ours"] / up["openssh"]
    print(
        f"RTT {args.rtt:.0f} ms, {len(files)} files / {size / 1e6:.0f} MB, median of "
        f"{args.repeat}, connection set-up included"
    )
    print(
        f"upload    kohyawrap {up['ours']:.2f}s  tar|ssh {up['openssh']:.2f}s  ratio {ratio:.2f}x"
        f"  target <= 1.10x: {'met' if ratio <= 1.10 else 'MISSED'}"
    )


def main() -> None:
    """Parse arguments, run both benchmarks, print the table and the ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rtt", type=float, default=50.0, help="round trip added by the relay, ms")
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument(
        "--mb", type=float, default=150.0, help="dataset size and checkpoint size, MB"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply --mb (e.g. 0.25 on a slow box)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--case", choices=("dataset", "small", "big"), default="dataset", help="what to time"
    )
    parser.add_argument("--big-mb", type=float, default=2000.0, help="--case big: file size, MB")
    parser.add_argument(
        "--small-files", type=int, default=2000, help="--case small: images (and as many captions)"
    )
    args = parser.parse_args()
    cache = tempfile.TemporaryDirectory(prefix="kw-bench-cache-")
    os.environ["KOHYAWRAP_CACHE_DIR"] = cache.name  # never the user's own hash cache
    if args.case != "dataset":
        with tempfile.TemporaryDirectory(prefix="kw-bench-") as tmp_name:
            (run_big if args.case == "big" else run_small)(args, Path(tmp_name))
        return
    size = int(args.mb * args.scale * 1e6)
    with tempfile.TemporaryDirectory(prefix="kw-bench-") as tmp_name:
        tmp = Path(tmp_name)
        files = make_dataset(tmp / "src", args.files, size)
        ckpt = tmp / "ckpt.safetensors"
        ckpt.write_bytes(os.urandom(size))
        with (
            running_sshd(tmp / "sshd") as server,
            TcpRelay(server.port, delay=args.rtt / 2000) as relay,
        ):
            (tmp / "up").mkdir()
            (tmp / "down").mkdir()
            up = bench_upload(server, relay, files, tmp / "src", tmp / "up", args.repeat)
            down = bench_download(server, relay, ckpt, tmp / "down", args.repeat)
    mb = size / 1e6
    print(
        f"RTT {args.rtt:.0f} ms, {args.files} files / {mb:.0f} MB dataset, {mb:.0f} MB checkpoint"
    )
    print(f"median of {args.repeat} runs, connection set-up included")
    ratio = up["ours"] / up["openssh"]
    print(
        f"upload    kohyawrap {up['ours']:.2f}s  tar|ssh {up['openssh']:.2f}s  ratio {ratio:.2f}x"
    )
    share = up["again_wire"] / up["total"] * 100
    wire_kb = up["again_wire"] / 1e3
    print(
        f"re-upload {up['again_s']:.2f}s, {wire_kb:.0f} kB on the wire = {share:.3f}% of the data"
    )
    ratio = down["ours"] / down["openssh"]
    print(
        f"download  kohyawrap {down['ours']:.2f}s  sftp getfo {down['sftp']:.2f}s"
        f"  ssh cat {down['openssh']:.2f}s  ratio {ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
