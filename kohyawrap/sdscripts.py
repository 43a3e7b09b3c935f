"""Facts about kohya-ss/sd-scripts, as data.

Which script trains which model family, every argument each script accepts (extracted from the real
parsers at the pinned commit and shipped in ``kohyawrap/data``). A new model family is a new
row in ``FAMILIES``, not new code: FLUX.1, Chroma and SD3.5 came that way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from kohyawrap.resources import data_dir

# sd-scripts main @ 48d368fa (2026-02-16, v0.10.1+5): the commit every shipped fact was taken from
# (docs/sources.md links every fact to it) and the default for --sd-scripts-ref.
PINNED_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
DEFAULT_REPO = "https://github.com/kohya-ss/sd-scripts.git"


@dataclass(frozen=True)
class Companion:
    """A file a family's script loads besides the base model (an option holding its path)."""

    key: str  # the sd-scripts option: "clip_l", "clip_g", "t5xxl", "ae"
    title: str
    required: bool  # False: the script can also find it inside the base checkpoint


@dataclass(frozen=True)
class Family:
    """A model family: the script that trains it and what that script needs.

    Every value is a fact about sd-scripts at ``PINNED_COMMIT``; the comment beside each row names
    the file it was read from.
    """

    name: str
    script: str
    args_file: str
    base_model_version: str  # ss_base_model_version written by sd-scripts
    tokenizers: tuple[str, ...]  # fetched at training time ([44])
    title: str = ""
    network_module: str = "networks.lora"  # the LoRA module this family's script trains
    companions: tuple[Companion, ...] = ()
    sample_script: str = "gen_img.py"  # stand-alone image generation (sample grids)
    bucket_multiple: int = 64  # bucket_reso_steps must be a multiple of this (start-up assert)
    model_type: str | None = None  # --model_type of flux_train_network.py
    needs_file: bool = False  # the base model must be one .safetensors file (no Diffusers repo)
    max_blocks_to_swap: int = 0  # blocks_to_swap above this fails an assertion (0: no block swap)
    modelspec_architecture: str = ""  # modelspec.architecture of the LoRA sd-scripts saves


_CLIP_L = Companion("clip_l", "CLIP-L text encoder", True)
_T5XXL = Companion("t5xxl", "T5-XXL text encoder", True)
_AE = Companion("ae", "FLUX.1 autoencoder", True)
# SD3.5: "Skip these if the base model is a single file" (sd-scripts' SD3 guide, docs/sources.md
# [46]); the official sd3.5_*.safetensors files hold the MMDiT and VAE only [54], [55], so kohyawrap
# passes all three.
_SD3_TEXT = (
    Companion("clip_l", "CLIP-L text encoder", False),
    Companion("clip_g", "CLIP-G text encoder", False),
    Companion("t5xxl", "T5-XXL text encoder", False),
)
_DIT_TOKENIZERS = ("openai/clip-vit-large-patch14", "google/t5-v1_1-xxl")  # [47]

FAMILIES: dict[str, Family] = {
    "sd15": Family(
        "sd15",
        "train_network.py",
        "train_network_args.json",
        "sd_v1",
        ("openai/clip-vit-large-patch14",),
        title="Stable Diffusion 1.x",
        modelspec_architecture="stable-diffusion-v1",
    ),
    "sd2": Family(
        "sd2",
        "train_network.py",
        "train_network_args.json",
        "sd_v2",
        ("stabilityai/stable-diffusion-2",),
        title="Stable Diffusion 2.x",
        modelspec_architecture="stable-diffusion-v2-768-v",
    ),
    "sdxl": Family(
        "sdxl",
        "sdxl_train_network.py",
        "sdxl_train_network_args.json",
        "sdxl_base_v1-0",
        ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
        title="Stable Diffusion XL",
        bucket_multiple=32,  # sdxl_train_network.py verifies 32 [5]
        modelspec_architecture="stable-diffusion-xl-v1-base",
    ),
    # flux_train_network.py @ PINNED_COMMIT: model_version "flux1" unless --model_type chroma [47];
    # LoRA module networks.lora_flux, clip_l, t5xxl and ae required (sd-scripts' FLUX.1 guide [45]);
    # train_network's check of a multiple of 64 [5] runs before FLUX's own 32 [47].
    "flux": Family(
        "flux",
        "flux_train_network.py",
        "flux_train_network_args.json",
        "flux1",
        _DIT_TOKENIZERS,
        title="FLUX.1",
        network_module="networks.lora_flux",
        companions=(_CLIP_L, _T5XXL, _AE),
        sample_script="flux_minimal_inference.py",
        model_type="flux",
        needs_file=True,
        max_blocks_to_swap=35,  # [45], [47]
        modelspec_architecture="flux-1-dev",  # "flux-1-schnell" for schnell [47]
    ),
    # Chroma: the same script with --model_type chroma; no CLIP-L, base model version "chroma"
    # ([45], [47]).
    "chroma": Family(
        "chroma",
        "flux_train_network.py",
        "flux_train_network_args.json",
        "chroma",
        _DIT_TOKENIZERS,
        title="Chroma",
        network_module="networks.lora_flux",
        companions=(_T5XXL, _AE),
        sample_script="flux_minimal_inference.py",
        model_type="chroma",
        needs_file=True,
        max_blocks_to_swap=35,  # the same 19 double / 38 single blocks as FLUX.1 [47]
        modelspec_architecture="chroma",
    ),
    # sd3_train_network.py: model_version is the MMDiT's model_type, "5-large" / "5-medium" for
    # SD3.5, and buckets in multiples of 32 [48]; networks.lora_sd3 ("Specify networks.lora_sd3",
    # the README text sd-scripts moved into its SD3 guide [49]).
    "sd35-large": Family(
        "sd35-large",
        "sd3_train_network.py",
        "sd3_train_network_args.json",
        "5-large",
        (*_DIT_TOKENIZERS[:1], "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", _DIT_TOKENIZERS[1]),
        title="Stable Diffusion 3.5 Large",
        network_module="networks.lora_sd3",
        companions=_SD3_TEXT,
        sample_script="sd3_minimal_inference.py",
        bucket_multiple=32,
        needs_file=True,
        max_blocks_to_swap=36,  # 38 joint blocks - 2 [48], [49]
        modelspec_architecture="stable-diffusion-3-5-large",
    ),
    "sd35-medium": Family(
        "sd35-medium",
        "sd3_train_network.py",
        "sd3_train_network_args.json",
        "5-medium",
        (*_DIT_TOKENIZERS[:1], "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", _DIT_TOKENIZERS[1]),
        title="Stable Diffusion 3.5 Medium",
        network_module="networks.lora_sd3",
        companions=_SD3_TEXT,
        sample_script="sd3_minimal_inference.py",
        bucket_multiple=32,
        needs_file=True,
        max_blocks_to_swap=22,  # 24 joint blocks - 2 [48], [49]
        modelspec_architecture="stable-diffusion-3-5-medium",
    ),
}


def scripts() -> tuple[str, ...]:
    """Every training script kohyawrap knows, in FAMILIES order (no repeats)."""
    return tuple(dict.fromkeys(f.script for f in FAMILIES.values()))


def families_of(script: str) -> tuple[Family, ...]:
    """The families ``script`` trains (``flux_train_network.py``: FLUX.1 and Chroma)."""
    return tuple(f for f in FAMILIES.values() if f.script == script)


def lora_module_scripts() -> dict[str, tuple[str, ...]]:
    """Each family's LoRA module -> the scripts it works with (``networks.lora_flux`` ->
    flux_train_network.py; ``networks.lora`` -> train_network.py and sdxl_train_network.py)."""
    found: dict[str, tuple[str, ...]] = {}
    for family in FAMILIES.values():
        scripts_so_far = found.get(family.network_module, ())
        if family.script not in scripts_so_far:
            found[family.network_module] = (*scripts_so_far, family.script)
    return found


@dataclass(frozen=True)
class Argument:
    """One option of an sd-scripts training script (the key to use in ``--config_file``)."""

    name: str
    action: str  # "store" or "store_true"
    type: str | None  # "str", "int", "float", "int_or_float", "pathlib.Path" or None for flags
    default: Any
    choices: tuple[Any, ...] | None
    nargs: str | int | None  # None = one value, "*"/"+" = a list
    group: str

    @property
    def is_flag(self) -> bool:
        return self.action == "store_true"

    @property
    def is_list(self) -> bool:
        return self.nargs in ("*", "+")


@cache
def arguments(script: str) -> dict[str, Argument]:
    """Every option ``script`` accepts, by name, from the shipped JSON."""
    files = {f.script: f.args_file for f in FAMILIES.values()}
    if script not in files:
        raise KeyError(script)
    raw = json.loads((data_dir() / files[script]).read_text(encoding="utf-8"))
    out: dict[str, Argument] = {}
    for a in raw["arguments"]:
        choices = tuple(a["choices"]) if a["choices"] is not None else None
        out[a["name"]] = Argument(
            a["name"], a["action"], a["type"], a["default"], choices, a["nargs"], a["group"]
        )
    return out


@cache
def dataset_config_schema() -> dict[str, Any]:
    """The ``--dataset_config`` schema (keys and types per level), from the shipped JSON."""
    data: dict[str, Any] = json.loads(
        (data_dir() / "dataset_config_schema.json").read_text(encoding="utf-8")
    )
    return data


@dataclass(frozen=True)
class TrainingNames:
    """Optimizer and lr scheduler names sd-scripts accepts (data/optimizers_schedulers.toml)."""

    optimizers: tuple[str, ...]  # sd-scripts' own, matched in any case
    torch_optimizers: tuple[str, ...]  # looked up in torch.optim with the case kept
    host_modules: tuple[str, ...]  # modules a dotted optimizer_type may come from out of the box
    optimizer_not_usable: dict[str, tuple[str, str]]  # name -> (why, what to use instead)
    optimizer_packages: dict[str, str]  # lower-case name prefix -> package not installed
    schedulers: tuple[str, ...]
    no_warmup: tuple[str, ...]  # schedulers that refuse a non-zero warmup
    scheduler_not_usable: dict[str, str]  # name -> why it fails at the pinned commit


@cache
def training_names() -> TrainingNames:
    """The optimizer and scheduler names of the pinned sd-scripts, from the shipped data."""
    import tomlkit

    text = (data_dir() / "optimizers_schedulers.toml").read_text(encoding="utf-8")
    data: dict[str, Any] = tomlkit.parse(text).unwrap()
    opt, sched = data["optimizers"], data["schedulers"]
    return TrainingNames(
        optimizers=tuple(opt["sd_scripts"]),
        torch_optimizers=tuple(opt["torch"]),
        host_modules=tuple(opt["host_modules"]),
        optimizer_not_usable={k: (v["why"], v["use"]) for k, v in opt["not_usable"].items()},
        optimizer_packages=dict(opt["extra_packages"]),
        schedulers=tuple(sched["names"]),
        no_warmup=tuple(sched["no_warmup"]),
        scheduler_not_usable=dict(sched["not_usable"]),
    )
