#!/usr/bin/env python3
"""Build a RANDOM-WEIGHT SDXL 1.0 checkpoint in the single-file layout sdxl_train_network.py loads.

No download: the U-Net is sd-scripts' own SdxlUNet2DConditionModel (its shapes are fixed in the
class), the two text encoders are transformers CLIP models with SDXL base's configs (the values
sd-scripts' library/sdxl_model_util.py builds them with), the VAE is diffusers' AutoencoderKL with
sd-scripts' VAE config. The weights are converted to the original (Stability) key layout with
sd-scripts' own converters, so its loader reads them back exactly as it reads sd_xl_base_1.0.

Random weights train at the speed and memory of real ones: only shapes and dtypes matter there.

    python make_random_sdxl.py --sd-scripts SDS --out random-sdxl.safetensors [--device cuda]

The file is written tensor by tensor (fp16), so the peak memory is the models plus one tensor.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

# SDXL base's two text encoders (CLIP ViT-L/14 and OpenCLIP ViT-bigG/14), as sd-scripts builds them.
TE1_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "projection_dim": 768,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
TE2_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-05,
    "projection_dim": 1280,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}

_DTYPE_NAMES = {"float16": "F16", "float32": "F32", "int64": "I64", "int32": "I32"}


def write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> int:
    """Stream tensors into a .safetensors file (the format: u64 header length, JSON header, data).

    safetensors' own save_file serialises every tensor to bytes first, doubling the peak memory of
    a 7 GB checkpoint; this writes one tensor at a time. Floating tensors are stored as fp16.
    """
    import torch

    header: dict[str, Any] = {"__metadata__": metadata}
    plan: list[tuple[str, Any]] = []
    offset = 0
    for key, tensor in tensors.items():
        t = tensor.detach()
        if t.is_floating_point():
            t = t.to(torch.float16)
        dtype = _DTYPE_NAMES[str(t.dtype).removeprefix("torch.")]
        size = t.numel() * t.element_size()
        header[key] = {
            "dtype": dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        plan.append((key, t))
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _key, t in plan:
            f.write(t.to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return offset


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd-scripts", required=True, type=Path, help="sd-scripts checkout")
    ap.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    ap.add_argument(
        "--device", default="cpu", help="where to initialise the weights (cuda is fast)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    sys.path.insert(0, str(args.sd_scripts.resolve()))
    import torch
    from diffusers import AutoencoderKL
    from library import model_util, sdxl_model_util, sdxl_original_unet
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(args.seed)
    # Built in fp16 from the start (the file is fp16, as the release is): the peak is the size of
    # the file, ~7 GB, not the 14 GB of fp32 models.
    torch.set_default_dtype(torch.float16)
    t0 = time.perf_counter()
    state: dict[str, Any] = {}
    with torch.device(args.device):
        unet = sdxl_original_unet.SdxlUNet2DConditionModel()
    n_unet = sum(p.numel() for p in unet.parameters())
    for k, v in unet.state_dict().items():
        state["model.diffusion_model." + k] = v.to(torch.float16)
    del unet

    with torch.device(args.device):
        te1 = CLIPTextModel(CLIPTextConfig(**TE1_CONFIG))
    for k, v in te1.state_dict().items():
        if k.endswith("position_ids"):  # a buffer sd-scripts' loader drops; not in the release file
            continue
        state["conditioner.embedders.0.transformer." + k] = v.to(torch.float16)
    del te1

    with torch.device(args.device):
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE2_CONFIG))
    te2_sd = {k: v for k, v in te2.state_dict().items() if not k.endswith("position_ids")}
    logit_scale = torch.tensor(4.6052, device=args.device)  # ln(100), the trained CLIP value
    for k, v in sdxl_model_util.convert_text_encoder_2_state_dict_to_sdxl(
        te2_sd, logit_scale
    ).items():
        state["conditioner.embedders.1.model." + k] = v.to(torch.float16)
    del te2, te2_sd

    with torch.device(args.device):
        vae = AutoencoderKL(**model_util.create_vae_diffusers_config())
    for k, v in model_util.convert_vae_state_dict(vae.state_dict()).items():
        state["first_stage_model." + k] = v.to(torch.float16)
    del vae
    built = time.perf_counter() - t0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    size = write_safetensors(args.out, state, {"format": "pt", "kohyawrap": "random sdxl"})
    print(
        json.dumps(
            {
                "out": str(args.out),
                "tensors": len(state),
                "unet_params": n_unet,
                "bytes": size,
                "build_s": round(built, 1),
                "total_s": round(time.perf_counter() - t0, 1),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
