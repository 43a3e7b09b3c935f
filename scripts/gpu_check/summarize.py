#!/usr/bin/env python3
"""Summarise a GPU check: seconds per step after warm-up and memory peaks, per run.

    python summarize.py OUT_DIR [--warmup 3]

Reads OUT_DIR/meas_<run>.jsonl (kw_measure.py's step lines, plus nvidia-smi samples tagged "smi")
and writes OUT_DIR/summary.json. Step times are the gaps between consecutive optimizer steps; the
first --warmup steps (CUDA kernels chosen, allocator growing) are left out of the median and mean.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any


def summarise(path: Path, warmup: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    smi_mib: list[float] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("smi") is not None:
            smi_mib.append(float(rec["smi"]))
        elif "step" in rec:
            steps.append(rec)
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(steps)]
    after = gaps[warmup:] if len(gaps) > warmup else []
    result: dict[str, Any] = {"steps": len(steps)}
    if after:
        ordered = sorted(after)
        result.update(
            {
                "warmup_steps_left_out": warmup,
                "first_step_gap_s": round(gaps[0], 3),
                "median_s_per_step": round(statistics.median(after), 3),
                "mean_s_per_step": round(statistics.fmean(after), 3),
                "min_s_per_step": round(ordered[0], 3),
                "p90_s_per_step": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
                "max_s_per_step": round(ordered[-1], 3),
            }
        )
    if steps:
        alloc = max(s["max_alloc_gib"] for s in steps)
        reserved = max(s["max_reserved_gib"] for s in steps)
        result["peak_allocated_gib"] = alloc
        result["peak_allocated_gb"] = round(alloc * 2**30 / 1e9, 2)
        result["peak_reserved_gib"] = reserved
        result["peak_reserved_gb"] = round(reserved * 2**30 / 1e9, 2)
    if smi_mib:
        result["nvidia_smi_peak_used_gb"] = round(max(smi_mib) * 2**20 / 1e9, 2)
        result["nvidia_smi_peak_used_gib"] = round(max(smi_mib) / 1024, 2)
        result["nvidia_smi_samples"] = len(smi_mib)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    summary = {
        p.stem.removeprefix("meas_"): summarise(p, args.warmup)
        for p in sorted(args.out.glob("meas_*.jsonl"))
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
