"""What a LoRA run leaves on disk, in sd-scripts' real formats and names.

- checkpoints: ``<name>-000001.safetensors`` (epochs), ``<name>-step00000002.safetensors`` (steps),
  ``<name>.safetensors`` (final); defaults ``epoch`` / ``at`` / ``last`` without output_name;
- LoRA tensors ``lora_unet_*`` / ``lora_te_*`` (SDXL: ``lora_te1_*``, ``lora_te2_*``), each with
  ``.alpha``, ``.lora_down.weight``, ``.lora_up.weight`` (small float32 tensors here);
- ``__metadata__`` with a realistic subset of the ``ss_*`` and ``modelspec.*`` keys;
- ``--save_state`` folders ``<checkpoint stem>-state/`` with train_state.json and friends;
- TensorBoard events under ``<logging_dir>/<log_prefix><YYYYmmddHHMMSS>/network_train/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

from library import fake_dit, kw_safetensors, kw_tensorboard

_SD1_MODULES = {
    "te": [
        "lora_te_text_model_encoder_layers_0_mlp_fc1",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    ],
    "unet": [
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_up_blocks_1_attentions_0_proj_out",
    ],
}
_SDXL_MODULES = {
    "te": [
        "lora_te1_text_model_encoder_layers_0_mlp_fc1",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1",
    ],
    "unet": [
        "lora_unet_input_blocks_4_1_proj_in",
        "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_output_blocks_0_1_proj_out",
    ],
}
# networks.lora_flux / lora_sd3 name their modules like this (ComfyUI-compatible prefixes).
_FLUX_MODULES = {
    "te": ["lora_te1_text_model_encoder_layers_0_mlp_fc1"],
    "unet": [
        "lora_unet_double_blocks_0_img_attn_qkv",
        "lora_unet_double_blocks_0_txt_mlp_0",
        "lora_unet_single_blocks_0_linear1",
    ],
}
_SD3_MODULES = {
    "te": [
        "lora_te1_text_model_encoder_layers_0_mlp_fc1",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1",
    ],
    "unet": [
        "lora_unet_joint_blocks_0_context_block_attn_qkv",
        "lora_unet_joint_blocks_0_x_block_attn_qkv",
        "lora_unet_final_layer_linear",
    ],
}
_MODULES = {"sdxl": _SDXL_MODULES, "flux": _FLUX_MODULES, "chroma": _FLUX_MODULES}
_MODULES["sd3"] = _SD3_MODULES
_FEATURES = 8  # in/out features of every fake module: tiny on purpose


def checkpoint_stem(
    options: dict[str, Any], *, epoch: int | None = None, step: int | None = None
) -> str:
    """The file stem sd-scripts uses for an epoch, step or final save."""
    name = options.get("output_name")
    if epoch is not None:
        return f"{name or 'epoch'}-{epoch:06d}"
    if step is not None:
        return f"{name or 'at'}-step{step:08d}"
    return name or "last"


def _pack(values: list[float], dtype: str) -> bytes:
    if dtype == "F16":
        return struct.pack(f"<{len(values)}e", *values)
    raw = struct.pack(f"<{len(values)}f", *values)
    if dtype == "BF16":  # the upper half of each float32
        return b"".join(raw[i + 2 : i + 4] for i in range(0, len(raw), 4))
    return raw


def lora_tensors(
    options: dict[str, Any], family: str, step: int, effect: float = 1.0
) -> dict[str, tuple[str, list[int], bytes]]:
    """Small LoRA tensors whose values depend on the step (so each save differs).

    ``effect`` scales the up-weights: 0 leaves them at zero, a LoRA that changes nothing (what a
    far too low learning rate leaves behind: sd-scripts initialises lora_up to zero).
    """
    modules = _MODULES.get(family, _SD1_MODULES)
    parts = []
    if not options.get("network_train_text_encoder_only"):
        parts += modules["unet"]
    if not options.get("network_train_unet_only"):
        parts += modules["te"]
    dim = int(options.get("network_dim") or 4)
    alpha = float(options.get("network_alpha", 1.0))
    dtype = {"fp16": "F16", "bf16": "BF16"}.get(str(options.get("save_precision")), "F32")
    rng = random.Random(f"{options.get('seed')}:{step}")
    tensors: dict[str, tuple[str, list[int], bytes]] = {}
    for module in parts:
        down = [rng.gauss(0, 0.1) for _ in range(dim * _FEATURES)]
        up = [rng.gauss(0, 0.01) * effect for _ in range(_FEATURES * dim)]
        tensors[f"{module}.alpha"] = (dtype, [], _pack([alpha], dtype))
        tensors[f"{module}.lora_down.weight"] = (dtype, [dim, _FEATURES], _pack(down, dtype))
        tensors[f"{module}.lora_up.weight"] = (dtype, [_FEATURES, dim], _pack(up, dtype))
    return tensors


def _architecture(family: str, options: dict[str, Any]) -> tuple[str, str, str]:
    """(ss_base_model_version, modelspec.architecture, modelspec.implementation)."""
    if family in fake_dit.DIT_FAMILIES:
        return fake_dit.architecture(family, options)
    if family == "sdxl":
        return (
            "sdxl_base_v1-0",
            "stable-diffusion-xl-v1-base/lora",
            "https://github.com/Stability-AI/generative-models",
        )
    if options.get("v2"):
        arch = (
            "stable-diffusion-v2-768-v"
            if options.get("v_parameterization")
            else "stable-diffusion-v2-512"
        )
        return "sd_v2", f"{arch}/lora", "diffusers"
    return "sd_v1", "stable-diffusion-v1/lora", "diffusers"


def metadata(run: Any, *, epoch: int, step: int, tensors: dict[str, Any]) -> dict[str, str]:
    """The ``__metadata__`` of a checkpoint (all values are strings, as sd-scripts writes them)."""
    o = run.options
    base, arch, impl = _architecture(run.family, o)
    width, height = run.resolution
    dirs = {
        s.folder.name: {"n_repeats": s.repeats, "img_count": len(s.images)}
        for s in run.subsets
        if not s.is_reg
    }
    tags = {
        s.folder.name: dict(
            Counter(t.strip() for c in s.captions.values() for t in c.split(",") if t.strip())
        )
        for s in run.subsets
        if not s.is_reg
    }
    model_hash = hashlib.sha256(kw_safetensors.encode_safetensors(tensors, {})).hexdigest()
    commit = run.commit or "unknown"
    meta = {
        "ss_session_id": str(run.session_id),
        "ss_training_started_at": str(run.started_at),
        "ss_training_finished_at": str(time.time()),
        "ss_output_name": str(o.get("output_name")),
        "ss_learning_rate": str(o.get("learning_rate", 2e-06)),
        "ss_unet_lr": str(o.get("unet_lr")),
        "ss_text_encoder_lr": str(o.get("text_encoder_lr")),
        "ss_optimizer": run.optimizer_name,
        "ss_lr_scheduler": str(o.get("lr_scheduler", "constant")),
        "ss_mixed_precision": str(o.get("mixed_precision", "no")),
        "ss_gradient_checkpointing": str(bool(o.get("gradient_checkpointing"))),
        "ss_gradient_accumulation_steps": str(o.get("gradient_accumulation_steps", 1)),
        "ss_cache_latents": str(bool(o.get("cache_latents"))),
        "ss_seed": str(o.get("seed")),
        "ss_num_train_images": str(run.schedule.num_images),
        "ss_num_reg_images": str(sum(s.count for s in run.subsets if s.is_reg)),
        "ss_num_batches_per_epoch": str(run.schedule.batches_per_epoch),
        "ss_num_epochs": str(run.schedule.epochs),
        "ss_batch_size_per_device": str(o.get("train_batch_size", 1)),
        "ss_total_batch_size": str(o.get("train_batch_size", 1)),
        "ss_epoch": str(epoch),
        "ss_steps": str(step),
        "ss_max_train_steps": str(run.schedule.total_steps),
        "ss_resolution": str((width, height)),
        "ss_v2": str(bool(o.get("v2"))),
        "ss_base_model_version": base,
        "ss_network_module": str(o.get("network_module")),
        "ss_network_dim": str(o.get("network_dim")),
        "ss_network_alpha": str(o.get("network_alpha", 1.0)),
        "ss_sd_model_name": os.path.basename(str(o.get("pretrained_model_name_or_path"))),
        "ss_sd_scripts_commit_hash": run.commit or "(unknown)",
        "ss_dataset_dirs": json.dumps(dirs, ensure_ascii=False),
        "ss_tag_frequency": json.dumps(tags, ensure_ascii=False),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": arch,
        "modelspec.implementation": impl,
        "modelspec.implementation_version": f"sd-scripts/{commit}",
        "modelspec.title": str(o.get("output_name") or "LoRA"),
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": "v" if o.get("v_parameterization") else "epsilon",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sshs_model_hash": model_hash,
        "sshs_legacy_hash": model_hash[:8],
    }
    if run.family in fake_dit.DIT_FAMILIES:
        meta.update(fake_dit.extra_metadata(run.family, o))
    if run.family in ("flux", "chroma"):  # FLUX has no prediction_type (sai_model_spec.py:432)
        del meta["modelspec.prediction_type"]
    if o.get("network_args"):
        meta["ss_network_args"] = json.dumps(dict(a.split("=", 1) for a in o["network_args"]))
    return meta


def save_state(folder: Path, tensors: dict[str, Any], epoch: int, step: int) -> None:
    """A ``--save_state`` folder: weights, optimizer/scheduler/RNG blobs, train_state.json."""
    folder.mkdir(parents=True, exist_ok=True)
    kw_safetensors.write_safetensors(folder / "model.safetensors", tensors, {})
    (folder / "optimizer.bin").write_bytes(b"fake optimizer state\n")
    (folder / "scheduler.bin").write_bytes(b"fake scheduler state\n")
    (folder / "random_states_0.pkl").write_bytes(b"fake random states\n")
    (folder / "train_state.json").write_text(
        json.dumps({"current_epoch": epoch, "current_step": step})
    )


class EventLog:
    """A TensorBoard event file that grows step by step (flushed, as sd-scripts' tracker does)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.path: Path | None = None
        if not options.get("logging_dir") or options.get("log_with") not in (
            None,
            "tensorboard",
            "all",
        ):
            return
        stamp = time.strftime("%Y%m%d%H%M%S")
        folder = Path(str(options["logging_dir"])) / (str(options.get("log_prefix") or "") + stamp)
        folder = folder / str(options.get("log_tracker_name") or "network_train")
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = folder / kw_tensorboard.event_file_name(now, socket.gethostname(), os.getpid())
        self._append(kw_tensorboard.file_version_record(now))

    def _append(self, record: bytes) -> None:
        if self.path is not None:
            with self.path.open("ab") as f:
                f.write(record)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``{tag: value}`` at ``step``."""
        now = time.time()
        self._append(
            b"".join(kw_tensorboard.scalar_record(t, v, step, now) for t, v in values.items())
        )
