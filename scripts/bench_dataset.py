#!/usr/bin/env python
"""Benchmark: ``kohyawrap dataset build`` against a naive pillow resize loop.

Makes N synthetic 4000x3000 camera-like JPEGs (cached in the temp folder between runs), then in
the same run times (1) a naive loop: open -> resize(LANCZOS) to 1024 px -> save JPEG q95, one
file after another, and (2) the builder (scan, plan, draft-decoding process pool, captions, lint)
to the same 1024 px. Prints both times and the ratio (target: the builder >= 3x faster).

    python scripts/bench_dataset.py            # 100 images
    python scripts/bench_dataset.py --count 20 --jobs 2
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from kohyawrap.dataset.build import BuildRequest, build_dataset

SIZE = (4000, 3000)
MAX_SIDE = 1024


def make_photo(path: Path) -> None:
    """A 12 MP JPEG with smooth colour fields and sensor-like noise (~3 MB at quality 92)."""
    rng = random.Random(path.name)
    colours = bytes(rng.randrange(256) for _ in range(16 * 12 * 3))
    base = Image.frombytes("RGB", (16, 12), colours).resize(SIZE, Image.Resampling.BICUBIC)
    noise = Image.effect_noise(SIZE, 24).convert("RGB")
    Image.blend(base, noise, 0.12).save(path, "JPEG", quality=92)


def photo_set(count: int, jobs: int) -> Path:
    """The cached folder of ``count`` photos (made on first use)."""
    folder = Path(tempfile.gettempdir()) / f"kohyawrap-bench-{count}"
    missing = [folder / f"photo{i:04d}.jpg" for i in range(count)]
    missing = [p for p in missing if not p.is_file()]
    if missing:
        folder.mkdir(exist_ok=True)
        print(f"making {len(missing)} test photos in {folder} (cached for later runs) ...")
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(make_photo, missing))
    return folder


def naive(src: Path, dest: Path) -> float:
    """The obvious loop, one image at a time."""
    dest.mkdir(parents=True)
    start = time.perf_counter()
    for path in sorted(src.glob("*.jpg")):
        with Image.open(path) as image:
            w, h = image.size
            scale = MAX_SIDE / max(w, h)
            small = image.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
            small.save(dest / path.name, "JPEG", quality=95)
    return time.perf_counter() - start


def builder(src: Path, dest: Path, jobs: int | None) -> float:
    """The whole ``dataset build``: scan, plan, write in a process pool, captions, lint."""
    request = BuildRequest(
        inputs=(src,), output=dest, triggers=("bench",), model="sd15", max_side=MAX_SIDE, jobs=jobs
    )
    start = time.perf_counter()
    build_dataset(request)
    return time.perf_counter() - start


def main() -> None:
    """Run both, print the times and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="number of 4000x3000 photos")
    parser.add_argument(
        "--jobs", type=int, default=None, help="builder processes (default: all cores)"
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    src = photo_set(args.count, args.jobs or cores)
    work = Path(tempfile.mkdtemp(prefix="kohyawrap-bench-out-"))
    try:
        t_naive = naive(src, work / "naive")
        t_build = builder(src, work / "built", args.jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.count} photos {SIZE[0]}x{SIZE[1]} -> {MAX_SIDE} px, {cores} cores")
    for label, seconds in (
        ("naive open/resize/save loop", t_naive),
        ("kohyawrap dataset build", t_build),
    ):
        print(f"{label:28}: {seconds:7.2f} s  ({seconds / args.count * 1000:.0f} ms/image)")
    print(f"{'speed-up':28}: {t_naive / t_build:7.2f}x")


if __name__ == "__main__":
    main()
