"""A stand-in for sd-scripts' gen_img.py / sdxl_gen_img.py (image generation with LoRAs).

It accepts the real scripts' options that kohyawrap uses (and refuses unknown ones, exit 2, as
argparse does), reads a prompt file with the real syntax (``--d`` seeds, ``--am`` network
multipliers, ``--n --w --h --s --l``), loads each ``--network_weights`` file (a missing or broken
one fails as in sd-scripts), and writes one real PNG per line: ``im_000001.png`` ... with
``--sequential_file_name``, else ``im_<time>_<index>_<seed>.png``. The pixels depend on prompt,
seed and ``multiplier x the LoRA's effect`` (library/fake_images.py).

``fake_behaviour.json``: ``gen_seconds`` per image, ``gen_fail`` ("oom") at image ``gen_fail_at``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import time
from pathlib import Path

from library import fake_images
from library.fake_console import Console

REPO = Path(__file__).resolve().parent.parent
SAMPLERS = [
    "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver",
    "dpmsolver++", "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
]  # fmt: skip


class OutOfMemoryError(RuntimeError):
    """Shown as ``torch.OutOfMemoryError`` in the traceback, like the real one."""

    __module__ = "torch"


def _behaviour() -> dict:
    path = REPO / "fake_behaviour.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def parser(sdxl: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    if not sdxl:  # gen_img.py only (sdxl_gen_img.py has neither)
        for flag in ("--sdxl", "--v1", "--v2", "--v_parameterization"):
            p.add_argument(flag, action="store_true")
    p.add_argument("--prompt", type=str, default=None)
    p.add_argument("--from_file", type=str, default=None)
    p.add_argument("--images_per_prompt", type=int, default=1)
    p.add_argument("--outdir", type=str, default="outputs")
    p.add_argument("--sequential_file_name", action="store_true")
    p.add_argument("--n_iter", type=int, default=1)
    p.add_argument("--H", type=int, default=None)
    p.add_argument("--W", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", type=str, default="ddim", choices=SAMPLERS)
    p.add_argument("--scale", type=float, default=7.5)
    p.add_argument("--ckpt", type=str, default=None)
    p.add_argument("--vae", type=str, default=None)
    p.add_argument("--tokenizer_cache_dir", type=str, default=None)
    p.add_argument("--seed", type=int, default=None)
    for flag in (
        "--fp16",
        "--bf16",
        "--xformers",
        "--sdpa",
        "--no_half_vae",
        "--network_show_meta",
    ):
        p.add_argument(flag, action="store_true")
    p.add_argument("--network_module", type=str, default=None, nargs="*")
    p.add_argument("--network_weights", type=str, default=None, nargs="*")
    p.add_argument("--network_mul", type=float, default=None, nargs="*")
    p.add_argument("--network_args", type=str, default=None, nargs="*")
    p.add_argument("--clip_skip", type=int, default=None)
    return p


def _options(line: str) -> tuple[str, dict[str, str], list[int]]:
    """Prompt text, options and seeds of one line, split the way gen_img.py splits it."""
    seeds: list[int] = []
    found = re.search(r" --d ([\d+,]+)", line, re.IGNORECASE)
    if found:
        seeds = [int(d) for d in found[0][5:].split(",")]
        line = line[: found.start()] + line[found.end() :]
    prompt, *parts = line.strip().split(" --")
    options = {}
    for part in parts:
        key, _, value = part.partition(" ")
        options[key.lower()] = value
    return prompt, options, seeds


def main(script: str, argv: list[str]) -> None:
    sdxl = script.startswith("sdxl")
    args = parser(sdxl).parse_args(argv)
    con = Console()
    behaviour = _behaviour()
    if not args.ckpt or not Path(args.ckpt).exists():
        raise FileNotFoundError(f"model not found: {args.ckpt}")
    con.info(f"load StableDiffusion checkpoint: {args.ckpt}", "model_util.py:1247")
    networks = []
    for i, module in enumerate(args.network_module or []):
        con.info("import network module: {network_module}", "gen_img.py:1883")
        importlib.import_module(module)
        if args.network_weights is None or len(args.network_weights) <= i:
            raise ValueError("No weight. Weight is required.")
        weights = Path(args.network_weights[i])
        con.info(f"load network weights from: {weights}", "gen_img.py:1901")
        effect, colour = fake_images.lora_effect(weights)
        mul = 1.0 if not args.network_mul or len(args.network_mul) <= i else args.network_mul[i]
        networks.append((effect, colour, mul))
    lines = [
        d
        for d in Path(args.from_file).read_text(encoding="utf-8").splitlines()
        if d.strip() and d[0] != "#"
    ]
    con.info(f"reading prompts from {args.from_file}", "gen_img.py:2164")
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    step = 0
    for index, line in enumerate(lines):
        prompt, options, seeds = _options(line)
        con.info(f"prompt {index + 1}/{len(lines)}: {prompt}", "gen_img.py:2788")
        muls = [m for _, _, m in networks]
        if "am" in options:
            muls = [float(v) for v in options["am"].split(",")]
            while len(muls) < len(networks):
                muls.append(muls[-1])
            con.info(f"network mul: {muls}", "gen_img.py:2894")
        for _ in range(args.images_per_prompt):
            if behaviour.get("gen_fail") == "oom" and step + 1 >= behaviour.get("gen_fail_at", 1):
                raise OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB (fake_behaviour.json)"
                )
            seed = seeds.pop(0) if seeds else (args.seed or 0) + step
            width = int(options.get("w") or args.W or 512)
            height = int(options.get("h") or args.H or 512)
            pull = sum(m * e for (e, _, _), m in zip(networks, muls, strict=False))
            colour = networks[0][1] if networks else (0, 0, 0)
            name = (
                f"im_{step + 1:06d}.png"
                if args.sequential_file_name
                else f"im_{time.strftime('%Y%m%d%H%M%S')}_{step:03d}_{seed}.png"
            )
            text = {"prompt": prompt, "seed": str(seed), "sampler": args.sampler,
                    "steps": options.get("s", str(args.steps)), "scale": options.get("l", str(args.scale))}  # fmt: skip
            if "n" in options:
                text["negative-prompt"] = options["n"]
            time.sleep(float(behaviour.get("gen_seconds", 0.0)))
            fake_images.write_image(out / name, prompt, seed, (width, height), pull, colour, text)
            step += 1
    con.info("done!", "gen_img.py:3115")
