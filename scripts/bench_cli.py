#!/usr/bin/env python3
"""Start-up time of the CLI (run by hand): median wall time of `kohyawrap --help` and
`kohyawrap plan --help` next to `python -c pass`, over N runs. Target: `kohyawrap --help` <= 0.2 s.

    python scripts/bench_cli.py [--runs 15]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_seconds(command: list[str], runs: int) -> float:
    """Median wall time of ``runs`` runs of ``command`` (after one warm-up run)."""
    subprocess.run(command, capture_output=True, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Time the commands and print seconds and the ratio to a bare interpreter."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    entry = shutil.which("kohyawrap") or str(Path(sys.executable).parent / "kohyawrap")
    base = median_seconds([sys.executable, "-c", "pass"], args.runs)
    print(f"{'python -c pass':<28}{base:.3f} s")
    for label, command in (
        ("kohyawrap --help", [entry, "--help"]),
        ("kohyawrap plan --help", [entry, "plan", "--help"]),
        ("python -m kohyawrap --help", [sys.executable, "-m", "kohyawrap", "--help"]),
    ):
        seconds = median_seconds(command, args.runs)
        verdict = "ok" if seconds <= 0.2 or label != "kohyawrap --help" else "OVER the 0.2 s target"
        print(f"{label:<28}{seconds:.3f} s  ({seconds / base:.1f}x python -c pass)  {verdict}")


if __name__ == "__main__":
    main()
