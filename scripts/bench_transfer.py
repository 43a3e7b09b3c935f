#!/usr/bin/env python3
"""Benchmark kohyawrap's transfers against OpenSSH through a relay that adds latency.

Starts a throwaway sshd on 127.0.0.1 (the test fixture's code), puts a TCP relay with
``--rtt`` milliseconds of round trip in front of it, and times, on the same connection path:

* upload of a dataset (``--files`` files, ``--mb`` MB of random bytes, half images half captions):
  kohyawrap ``upload_tree`` (connect included) vs ``tar c | ssh tar x``;
* re-upload of the unchanged dataset: bytes on the wire (relay counters) vs the dataset size;
* download of a ``--mb`` MB checkpoint: kohyawrap ``download`` (cat over an exec channel,
  connect included) vs SFTP ``getfo`` with prefetch vs ``ssh cat``.

Run from the repository root:  .venv/bin/python scripts/bench_transfer.py [--scale 0.25]
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
    args = parser.parse_args()
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
