#!/usr/bin/env python3
"""Benchmark: `kohyawrap train` connect -> training launched, on a fresh host and on an already
set-up one (loopback sshd, the fake sd-scripts repo from the tests). Target: the second run
launches in <= 15 s. Baseline in the same run: one OpenSSH `ssh host true`.

Run from the repository root:  .venv/bin/python scripts/bench_setup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.fakesds import build_fake_sdscripts  # noqa: E402
from tests.fixtures.sshd import running_sshd  # noqa: E402

TARGET_S = 15.0


def launch_seconds(runs_dir: Path) -> float:
    """connect -> launched for the newest run, from its manifest."""
    newest = sorted(p for p in runs_dir.iterdir() if p.is_dir())[-1]
    m = json.loads((newest / "manifest.json").read_text())
    return float(m["launched_at"]) - float(m["started_at"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="warm runs to time (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        fake = build_fake_sdscripts(tmp / "sd-scripts")
        from kohyawrap.dataset.example import make_example_photos

        photos = make_example_photos(tmp / "photos")
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["HOME"] = str(tmp)
        kw = [sys.executable, "-m", "kohyawrap"]
        subprocess.run(
            [
                *kw,
                "dataset",
                "build",
                str(photos),
                "--trigger",
                "sks dog",
                "--class-word",
                "dog",
                "--model",
                "sd15",
                "-o",
                str(tmp / "data"),
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        base = tmp / "base.safetensors"
        base.write_bytes(os.urandom(1 << 20))
        with running_sshd(tmp / "sshd") as sshd:
            t0 = time.perf_counter()
            subprocess.run(
                [
                    "ssh",
                    "-i",
                    str(sshd.key_path),
                    "-p",
                    str(sshd.port),
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    f"UserKnownHostsFile={sshd.known_hosts}",
                    sshd.target,
                    "true",
                ],
                check=True,
            )
            ssh_true = time.perf_counter() - t0
            train = [
                *kw,
                "train",
                "--host",
                sshd.target,
                "-p",
                str(sshd.port),
                "-i",
                str(sshd.key_path),
                "--known-hosts",
                str(sshd.known_hosts),
                "--gpu",
                "rtx4090",
                "--model",
                "sd15",
                "--dataset",
                str(tmp / "data"),
                "--base-model",
                str(base),
                "--name",
                "bench",
                "--sd-scripts-repo",
                fake.url,
                "--sd-scripts-ref",
                fake.head,
                "--torch-spec",
                "skip",
                "--work-dir",
                str(tmp / "work"),
                "--runs-dir",
                str(tmp / "runs"),
                "--yes",
                "--force",
                "--poll",
                "0.2",
                "--set",
                "max_train_epochs=1",
            ]
            subprocess.run(train, check=True, env=env, capture_output=True)
            cold = launch_seconds(tmp / "runs")
            warm_times = []
            for _ in range(args.runs):
                subprocess.run(train, check=True, env=env, capture_output=True)
                warm_times.append(launch_seconds(tmp / "runs"))
    warm = statistics.median(warm_times)
    print(f"OpenSSH `ssh host true` (baseline)   {ssh_true:6.2f} s")
    print(
        f"first run:  connect -> launched      {cold:6.2f} s  (clone, venv, model upload, dataset upload)"
    )
    print(
        f"second run: connect -> launched      {warm:6.2f} s  (median of {args.runs}: {', '.join(f'{t:.2f}' for t in warm_times)})"
    )
    print(
        f"ratio second/first {warm / cold:.2f}; second/ssh-true {warm / ssh_true:.1f}x; "
        f"target <= {TARGET_S:.0f} s: {'met' if warm <= TARGET_S else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
