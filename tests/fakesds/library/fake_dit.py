"""The FLUX.1 / Chroma and SD3.5 parts of the fake: start-up checks, model loading, metadata.

Like the real ``flux_train_network.py`` and ``sd3_train_network.py`` (sd-scripts @ 48d368fa) it
opens the base model before the dataset is read (FLUX.1 looks for dev or schnell), checks its
start-up assertions after it, and loads each companion file (clip_l, clip_g, t5xxl, ae) from its
path, failing with FileNotFoundError when one is missing. It logs the lines the real loaders print,
with their file:line. The weights are never read: a file only has to exist.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

DIT_FAMILIES = ("flux", "chroma", "sd3")
_LOADED = "<All keys matched successfully>"
_IMPL_FLUX = "https://github.com/black-forest-labs/flux"
_IMPL_CHROMA = "https://huggingface.co/lodestones/Chroma"
_IMPL_SAI = "https://github.com/Stability-AI/generative-models"


def _path(options: dict[str, Any], key: str) -> str:
    """The file an option names; a missing option or file fails the way safetensors does."""
    value = options.get(key)
    if not value or not Path(str(value)).is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(value))
    return str(value)


def is_schnell(options: dict[str, Any]) -> bool:
    """The real script reads the checkpoint's keys; the fake reads its file name."""
    return "schnell" in Path(str(options.get("pretrained_model_name_or_path"))).name.lower()


def sd3_model_type(options: dict[str, Any]) -> str:
    """``5-large`` / ``5-medium`` (library/sd3_utils.py:56-58), from the file name here."""
    name = Path(str(options.get("pretrained_model_name_or_path"))).name.lower()
    return "5-medium" if "medium" in name else "5-large"


def tokenizer_strategy(run: Any) -> None:
    """What runs before the dataset: FLUX.1 opens the base model to tell dev from schnell."""
    o, con = run.options, run.console
    if run.family == "flux":
        con.info("Checking the state dict: Diffusers or BFL, dev or schnell", "flux_utils.py:44")
        _path(o, "pretrained_model_name_or_path")
        length = o.get("t5xxl_max_token_length") or (256 if is_schnell(o) else 512)
        con.info(f"t5xxl_max_token_length: {length}", "flux_train_network.py:179")
    elif run.family == "chroma":
        con.info(
            f"t5xxl_max_token_length: {o.get('t5xxl_max_token_length') or 512}",
            "flux_train_network.py:179",
        )
    else:
        length = o.get("t5xxl_max_token_length") or 256
        con.info(f"t5xxl_max_token_length: {length}", "sd3_train_network.py:147")


def assert_extra_args(run: Any) -> None:
    """The start-up assertions of assert_extra_args (after the dataset, before the model)."""
    o = run.options
    if run.family == "chroma":
        assert o.get("apply_t5_attn_mask"), "apply_t5_attn_mask must be True for Chroma"
    if o.get("cache_text_encoder_outputs") or o.get("cache_text_encoder_outputs_to_disk"):
        changes = (
            "caption_dropout_rate",
            "shuffle_caption",
            "token_warmup_step",
            "caption_tag_dropout_rate",
        )
        assert not any(o.get(k) for k in changes), (
            "when caching Text Encoder output, either caption_dropout_rate, shuffle_caption,"
            " token_warmup_step or caption_tag_dropout_rate cannot be used"
        )
    swap = o.get("blocks_to_swap")
    assert not (swap and o.get("cpu_offload_checkpointing")), (
        "blocks_to_swap is not supported with cpu_offload_checkpointing"
    )


def load(run: Any) -> None:
    """Load the transformer and each companion file, logging like the real loaders."""
    o, con = run.options, run.console
    base = _path(o, "pretrained_model_name_or_path")
    if run.family == "sd3":
        _load_sd3(run, base)
        return
    if run.family == "chroma":
        con.info("Building Chroma model", "flux_utils.py:150")
    else:
        kind = "schnell" if is_schnell(o) else "dev"
        con.info(f"Building Flux model {kind} from BFL checkpoint", "flux_utils.py:107")
    con.info(f"Loading state dict from {base}", "flux_utils.py:124")
    con.info(
        f"Loaded {'Chroma' if run.family == 'chroma' else 'Flux'}: {_LOADED}", "flux_utils.py:143"
    )
    if o.get("blocks_to_swap"):
        con.info(
            f"enable block swap: blocks_to_swap={o['blocks_to_swap']}", "flux_train_network.py:132"
        )
    if run.family != "chroma":  # Chroma uses no CLIP-L
        con.info("Building CLIP-L", "flux_utils.py:254")
        con.info(f"Loading state dict from {_path(o, 'clip_l')}", "flux_utils.py:350")
        con.info(f"Loaded CLIP-L: {_LOADED}", "flux_utils.py:353")
    con.info(f"Loading state dict from {_path(o, 't5xxl')}", "flux_utils.py:405")
    con.info(f"Loaded T5xxl: {_LOADED}", "flux_utils.py:408")
    con.info("Building AutoEncoder", "flux_utils.py:179")
    con.info(f"Loading state dict from {_path(o, 'ae')}", "flux_utils.py:184")
    con.info(f"Loaded AE: {_LOADED}", "flux_utils.py:187")


def _load_sd3(run: Any, base: str) -> None:
    o, con = run.options, run.console
    con.info("Building MMDit", "sd3_utils.py:89")
    con.info("Loading state dict...", "sd3_utils.py:94")
    con.info(f"Loaded MMDiT: {_LOADED}", "sd3_utils.py:96")
    if o.get("blocks_to_swap"):
        con.info(
            f"enable block swap: blocks_to_swap={o['blocks_to_swap']}", "sd3_train_network.py:110"
        )
    for key, title, lines in (
        ("clip_l", "CLIP-L", (122, 148, 156)),
        ("clip_g", "CLIP-G", (182, 208, 211)),
    ):
        con.info(f"Building {title}", f"sd3_utils.py:{lines[0]}")
        con.info(f"Loading state dict from {_path(o, key)}", f"sd3_utils.py:{lines[1]}")
        con.info(f"Loaded {title}: {_LOADED}", f"sd3_utils.py:{lines[2]}")
    # sd3_utils.load_t5xxl hands the path to flux_utils.load_t5xxl
    con.info(f"Loading state dict from {_path(o, 't5xxl')}", "flux_utils.py:405")
    con.info(f"Loaded T5xxl: {_LOADED}", "flux_utils.py:408")
    con.info("Building VAE", "sd3_utils.py:258")


def architecture(family: str, options: dict[str, Any]) -> tuple[str, str, str]:
    """(ss_base_model_version, modelspec.architecture, modelspec.implementation)."""
    if family == "chroma":
        return "chroma", "chroma/lora", _IMPL_CHROMA
    if family == "flux":
        kind = "schnell" if is_schnell(options) else "dev"
        return "flux1", f"flux-1-{kind}/lora", _IMPL_FLUX
    model_type = sd3_model_type(options)
    return model_type, f"stable-diffusion-3-{model_type}/lora", _IMPL_SAI


def extra_metadata(family: str, options: dict[str, Any]) -> dict[str, str]:
    """The family's own ss_* keys (update_metadata of each script)."""
    if family == "sd3":
        return {
            "ss_apply_lg_attn_mask": str(bool(options.get("apply_lg_attn_mask"))),
            "ss_apply_t5_attn_mask": str(bool(options.get("apply_t5_attn_mask"))),
            "ss_weighting_scheme": str(options.get("weighting_scheme", "uniform")),
        }
    return {
        "ss_model_type": str(options.get("model_type", "flux")),
        "ss_apply_t5_attn_mask": str(bool(options.get("apply_t5_attn_mask"))),
        "ss_guidance_scale": str(options.get("guidance_scale", 3.5)),
        "ss_timestep_sampling": str(options.get("timestep_sampling", "sigma")),
        "ss_model_prediction_type": str(options.get("model_prediction_type", "sigma_scaled")),
        "ss_discrete_flow_shift": str(options.get("discrete_flow_shift", 3.0)),
    }
