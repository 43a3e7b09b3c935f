"""Facts about kohya-ss/sd-scripts, as data.

Which script trains which model family, every argument each script accepts (extracted from the real
parsers at the pinned commit and shipped in ``kohyawrap/data``). A new
model family (FLUX.1, SD3) is a new row in ``FAMILIES``, not new code.
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
class Family:
    """A model family: the script that trains it and what that script needs."""

    name: str
    script: str
    args_file: str
    base_model_version: str  # ss_base_model_version written by sd-scripts
    tokenizers: tuple[
        str, ...
    ]  # Hugging Face repos fetched at training time (docs/sources.md [44])


FAMILIES: dict[str, Family] = {
    "sd15": Family(
        "sd15",
        "train_network.py",
        "train_network_args.json",
        "sd_v1",
        ("openai/clip-vit-large-patch14",),
    ),
    "sd2": Family(
        "sd2",
        "train_network.py",
        "train_network_args.json",
        "sd_v2",
        ("stabilityai/stable-diffusion-2",),
    ),
    "sdxl": Family(
        "sdxl",
        "sdxl_train_network.py",
        "sdxl_train_network_args.json",
        "sdxl_base_v1-0",
        ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
    ),
}


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
