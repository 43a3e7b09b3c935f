"""Images for the fake generation scripts and the fake training samples: real PNG files (written
with the standard library only), whose pixels depend on the prompt, the seed and the LoRA's effect.

The base image (strength 0) is a gradient with three discs, chosen by ``(prompt, seed)``. A LoRA
pulls the image towards its own pattern (stripes whose colour comes from its weights) by
``strength x effect``, where ``effect`` grows with the size of its ``lora_up`` weights: a LoRA whose
up-weights are all zero (what training with a far too low learning rate leaves) changes nothing,
like the real thing.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import zlib
from pathlib import Path

Pixel = tuple[int, int, int]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(width: int, height: int, rows: list[bytes], text: dict[str, str]) -> bytes:
    """An 8-bit RGB PNG with ``tEXt`` chunks (what gen_img.py's PngInfo writes)."""
    raw = b"".join(b"\x00" + row for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    for key, value in text.items():
        chunks.append(
            _chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace"))
        )
    chunks += [_chunk(b"IDAT", zlib.compress(raw, 6)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _mix(a: Pixel, b: Pixel, t: float) -> Pixel:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _colour(rng: random.Random) -> Pixel:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def render(
    prompt: str, seed: int, width: int, height: int, pull: float, lora_colour: Pixel
) -> list[bytes]:
    """Rows of RGB bytes: the base picture of (prompt, seed), pulled towards the LoRA's stripes."""
    rng = random.Random(f"{prompt}|{seed}")
    top, bottom = _colour(rng), _colour(rng)
    discs = [
        (rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.1, 0.3) * width, _colour(rng))
        for _ in range(3)
    ]
    pull = max(0.0, min(1.0, pull))
    rows = []
    for y in range(height):
        row = bytearray()
        for x in range(width):
            pixel = _mix(top, bottom, (x + y) / max(1, width + height - 2))
            for cx, cy, r, colour in discs:
                if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
                    pixel = colour
            if pull:
                stripe = (
                    lora_colour
                    if (y // max(1, height // 8)) % 2 == 0
                    else (255 - lora_colour[0], 255 - lora_colour[1], 255 - lora_colour[2])
                )
                pixel = _mix(pixel, stripe, pull)
            row += bytes(pixel)
        rows.append(bytes(row))
    return rows


def write_image(
    path: Path,
    prompt: str,
    seed: int,
    size: tuple[int, int],
    pull: float,
    lora_colour: Pixel,
    text: dict[str, str],
) -> None:
    """Write one picture at 1/8 of ``size`` (latent size: keeps the tests quick) as a PNG."""
    width, height = max(8, size[0] // 8), max(8, size[1] // 8)
    rows = render(prompt, seed, width, height, pull, lora_colour)
    path.write_bytes(encode_png(width, height, rows, text))


# ---------------------------------------------------------------------------------------------
# What a LoRA file does to a picture


def _floats(data: bytes, dtype: str) -> list[float]:
    if dtype == "F32":
        return [v for (v,) in struct.iter_unpack("<f", data)]
    if dtype == "F16":
        return [v for (v,) in struct.iter_unpack("<e", data)]
    if dtype == "BF16":
        return [
            v
            for (v,) in struct.iter_unpack(
                "<f", b"".join(b"\x00\x00" + data[i : i + 2] for i in range(0, len(data), 2))
            )
        ]
    return []


def lora_effect(path: Path) -> tuple[float, Pixel]:
    """(effect, colour) of a LoRA file: effect = 100 x mean |lora_up| (0 for zero up-weights)."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header.pop("__metadata__", None)
    body = data[8 + size :]
    values: list[float] = []
    for name, info in header.items():
        if name.endswith("lora_up.weight"):
            start, end = info["data_offsets"]
            values += _floats(body[start:end], info["dtype"])
    effect = 100 * sum(abs(v) for v in values) / len(values) if values else 0.0
    digest = hashlib.sha256(body).digest()
    return effect, (digest[0], digest[1], digest[2])
