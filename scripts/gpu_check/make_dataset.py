#!/usr/bin/env python3
"""Write the check's dataset: N pillow noise images of SIZE px with captions, in FOLDER.

    python make_dataset.py FOLDER [--n 10] [--size 1024]

Deterministic (Pillow's effect_noise with fixed sigmas), so the same images come out everywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--caption", default="sks dog, a photo")
    args = ap.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    for i in range(args.n):
        grey = Image.effect_noise((args.size, args.size), 40 + i * 5)
        bands = [grey.point(lambda v, k=k, i=i: (v + 37 * k + 11 * i) % 256) for k in range(3)]
        Image.merge("RGB", bands).save(args.folder / f"img{i:02d}.png")
        (args.folder / f"img{i:02d}.txt").write_text(args.caption + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
