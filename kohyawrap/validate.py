"""Check training options the way sd-scripts will (mis)read them, before anything runs.

sd-scripts does not validate ``--config_file``: unknown keys are ignored silently, values are not
converted (a quoted ``"1e-4"`` stays a string), and some mistakes only fail after the model has
loaded (config_file_semantics.md §1). This module finds those problems up front and explains them.
Findings are data; the CLI presents them. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kohyawrap.errors import ConfigError, suggest
from kohyawrap.models import Finding
from kohyawrap.sdscripts import (
    FAMILIES,
    PINNED_COMMIT,
    Argument,
    arguments,
    dataset_config_schema,
    training_names,
)

# sd-scripts' training scripts take about 200 options (data/*_args.json); a file with five times
# that is no config, and each unknown key costs a spelling search.
MAX_CONFIG_OPTIONS = 1000
SDXL_SCRIPT = FAMILIES["sdxl"].script
SD_SCRIPT = FAMILIES["sd15"].script
_SIZE = re.compile(r"^\s*(\d+)\s*(?:,\s*(\d+)\s*)?$")

# Names people write that are not --config_file options, and what they meant.
_MEANT = {
    "batch_size": "the option is train_batch_size (batch_size exists only inside --dataset_config)",
    "num_repeats": "repeats come from the folder names (<repeats>_<concept>) or a --dataset_config",
    "epochs": "the option is max_train_epochs",
    "max_epochs": "the option is max_train_epochs",
    "lr": "the option is learning_rate (or unet_lr / text_encoder_lr)",
}


@dataclass(frozen=True)
class Flat:
    """A config file flattened the way sd-scripts does it: one namespace, later keys win."""

    settings: dict[str, Any]
    sections: dict[str, str]  # key -> the section it was read from ("" = top level)
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class CheckReport:
    """The result of checking a training config: the script assumed, and every finding."""

    script: str
    script_reason: str
    settings: dict[str, Any]
    findings: tuple[Finding, ...]
    where: str | None = None

    @property
    def errors(self) -> tuple[Finding, ...]:
        """Findings that make the run fail or silently train something else."""
        return tuple(f for f in self.findings if f.severity == "error")

    def to_json(self) -> dict[str, Any]:
        """The report as data (``config check --json``)."""
        return {
            "file": self.where,
            "script": self.script,
            "script_reason": self.script_reason,
            "errors": len(self.errors),
            "findings": [f.to_json() for f in self.findings],
        }


# ---------------------------------------------------------------------------------------------
# Flattening and whole-file checks


def flatten(doc: Mapping[str, Any]) -> Flat:
    """Merge top-level tables into one namespace (one level, later duplicates win)."""
    settings: dict[str, Any] = {}
    sections: dict[str, str] = {}
    findings: list[Finding] = []
    for name, value in doc.items():
        items = value.items() if isinstance(value, Mapping) else [(name, value)]
        section = name if isinstance(value, Mapping) else ""
        for key, item in items:
            if isinstance(item, Mapping):
                findings.append(_nested(section, key))
                continue
            if key in settings:
                findings.append(_duplicate(key, sections[key], section, item))
            settings[key] = item
            sections[key] = section
    return Flat(settings, sections, tuple(findings))


def _nested(section: str, key: str) -> Finding:
    return Finding(
        "warning",
        "nested-table",
        key,
        f"[{section}.{key}] is a sub-table: sd-scripts flattens only one level, so it becomes one "
        "option named "
        f"{key!r} that nothing reads",
        "move its keys up into a top-level table",
    )


def _duplicate(key: str, first: str, later: str, value: Any) -> Finding:
    return Finding(
        "warning",
        "duplicate-key",
        key,
        f"{key} is set in {_section_name(first)} and again in {_section_name(later)}; "
        f"sd-scripts uses the later one ({value!r})",
        "keep one of them",
    )


def _section_name(section: str) -> str:
    return f"[{section}]" if section else "the top level"


def choose_script(settings: Mapping[str, Any], family: str | None) -> tuple[str, str]:
    """The training script a config is meant for, and why we think so."""
    if family is not None:
        if family not in FAMILIES:
            raise ConfigError(
                f"unknown model family {family!r}", hint=f"one of: {', '.join(FAMILIES)}"
            )
        return FAMILIES[family].script, f"--model {family}"
    sdxl_only = sorted(set(settings) & _sdxl_only_keys())
    if sdxl_only:
        return SDXL_SCRIPT, f"SDXL-only options present ({', '.join(sdxl_only)})"
    return SD_SCRIPT, "no --model given and no SDXL-only option: assuming SD1.x/SD2.x"


def _sdxl_only_keys() -> set[str]:
    return set(arguments(SDXL_SCRIPT)) - set(arguments(SD_SCRIPT))


def check_config_text(
    text: str,
    *,
    family: str | None = None,
    bf16_supported: bool | None = None,
    where: str | None = None,
) -> CheckReport:
    """Parse a ``--config_file`` TOML and check it; a file that is not TOML is a ConfigError."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        doc = tomlkit.parse(text).unwrap()
    except TOMLKitError as err:
        raise ConfigError(f"not valid TOML: {err}", where=where) from err
    flat = flatten(doc)
    if len(flat.settings) > MAX_CONFIG_OPTIONS:
        raise ConfigError(
            f"{len(flat.settings)} options: not a training config (sd-scripts' training scripts "
            f"have about 200; more than {MAX_CONFIG_OPTIONS} is not checked)",
            where=where,
        )
    script, reason = choose_script(flat.settings, family)
    findings = flat.findings + check_settings(
        flat.settings, script=script, bf16_supported=bf16_supported
    )
    return CheckReport(script, reason, flat.settings, _ordered(findings), where)


def check_keys(keys: Iterable[str], *, script: str) -> tuple[Finding, ...]:
    """Findings about option names alone (unknown, or for another script): what ``--set KEY=``
    is checked against before anything is resolved or rendered."""
    ctx = _Ctx(dict.fromkeys(keys), script, arguments(script), None)
    return tuple(_unknown_keys(ctx))


def _ordered(findings: tuple[Finding, ...]) -> tuple[Finding, ...]:
    rank = {"error": 0, "warning": 1, "note": 2}
    return tuple(sorted(findings, key=lambda f: rank[f.severity]))


def check_settings(
    settings: Mapping[str, Any], *, script: str, bf16_supported: bool | None = None
) -> tuple[Finding, ...]:
    """Every finding about flat training options for ``script`` (``bf16_supported``: the GPU's)."""
    ctx = _Ctx(settings, script, arguments(script), bf16_supported)
    found: list[Finding] = []
    for rule in _RULES:
        found.extend(rule(ctx))
    return tuple(found)


@dataclass(frozen=True)
class _Ctx:
    settings: Mapping[str, Any]
    script: str
    args: Mapping[str, Argument]
    bf16_supported: bool | None

    @property
    def sdxl(self) -> bool:
        return self.script == SDXL_SCRIPT

    def on(self, key: str) -> bool:
        """A flag (or any option) that is set to something truthy."""
        return bool(self.settings.get(key))

    def num(self, key: str, default: float = 0.0) -> float:
        value = self.settings.get(key, default)
        return float(value) if _is_number(value) else default


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


Rule = Callable[[_Ctx], Iterator[Finding]]


# ---------------------------------------------------------------------------------------------
# Keys and types


def _unknown_keys(ctx: _Ctx) -> Iterator[Finding]:
    sdxl_only = _sdxl_only_keys()
    for key in ctx.settings:
        if key in ctx.args:
            continue
        if key in sdxl_only:
            yield Finding(
                "error",
                "sdxl-only-key",
                key,
                f"{key} is an sdxl_train_network.py option; {ctx.script} ignores it silently",
                "train SDXL with sdxl_train_network.py (kohyawrap --model sdxl), or remove the key",
            )
            continue
        close = suggest(key, ctx.args)
        hint = _MEANT.get(key) or ("did you mean " + " or ".join(close) + "?" if close else None)
        yield Finding(
            "error",
            "unknown-key",
            key,
            f"{key} is not an option of {ctx.script}: sd-scripts ignores it without a word",
            hint or "remove it; `kohyawrap presets show` lists the options kohyawrap sets",
        )


def _types(ctx: _Ctx) -> Iterator[Finding]:
    for key, value in ctx.settings.items():
        arg = ctx.args.get(key)
        if arg is None:
            continue
        problem = _type_problem(arg, value)
        if problem is not None:
            code = "resolution-type" if key == "resolution" else "type"
            yield Finding("error", code, key, f"{key} = {value!r}: {problem[0]}", problem[1])
        elif arg.choices is not None and value not in arg.choices:
            allowed = ", ".join(repr(c) for c in arg.choices if c is not None)
            yield Finding(
                "error",
                "choice",
                key,
                f"{key} = {value!r} is not one of {allowed}; the config file is not checked, "
                "so sd-scripts accepts it and fails (or misbehaves) later",
                f"use one of {allowed}",
            )


def _type_problem(arg: Argument, value: Any) -> tuple[str, str] | None:
    """(what is wrong, how to write it) when ``value`` is not what sd-scripts expects."""
    if arg.is_flag:
        if isinstance(value, bool):
            return None
        return (
            "a flag must be true or false (any other value is not converted)",
            f"{arg.name} = true",
        )
    if arg.is_list:
        if arg.name == "text_encoder_lr" and _is_number(value):
            return None  # train_network keeps a branch for a single number
        if not isinstance(value, list):
            return (
                "this option takes a list; a single value is used character by character",
                f"{arg.name} = [{_toml_repr(value)}]",
            )
        bad = [v for v in value if _scalar_problem(arg, v) is not None]
        return (
            (f"list items must be {_type_word(arg.type)}", f"{arg.name} = [...]") if bad else None
        )
    return _scalar_problem(arg, value)


def _scalar_problem(arg: Argument, value: Any) -> tuple[str, str] | None:
    kind = arg.type
    if kind in ("str", "pathlib.Path"):
        if isinstance(value, str):
            return None
        if arg.name in ("resolution", "face_crop_aug_range"):
            return _must_be_string(arg.name, value)
        return "must be a string", f'{arg.name} = "{value}"'
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # float, int_or_float
        ok = _is_number(value)
    if ok:
        return None
    hint = (
        f"{arg.name} = {_unquoted(value)}"
        if isinstance(value, str)
        else f"{arg.name} = <{_type_word(kind)}>"
    )
    return f"must be {_type_word(kind)}; the config file is not converted", hint


def _must_be_string(name: str, value: Any) -> tuple[str, str]:
    if name == "resolution":
        return (
            "must be a STRING in --config_file: an int crashes sd-scripts at start-up "
            "(AttributeError: 'int' object has no attribute 'split')",
            f'resolution = "{value}"  (or "width,height")',
        )
    return 'must be a string "a,b" in --config_file', f'{name} = "0.1,0.5"'


def _unquoted(value: str) -> str:
    try:
        return repr(float(value)) if not value.strip().lstrip("-").isdigit() else str(int(value))
    except ValueError:
        return "<number>"


def _toml_repr(value: Any) -> str:
    return (
        f'"{value}"'
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _type_word(kind: str | None) -> str:
    return {"int": "an integer", "float": "a number", "int_or_float": "a number"}.get(
        kind or "", "a string"
    )


def _sizes(ctx: _Ctx) -> Iterator[Finding]:
    for key in ("resolution", "face_crop_aug_range"):
        value = ctx.settings.get(key)
        if not isinstance(value, str):
            continue
        parts = [p.strip() for p in value.split(",")]
        numeric = all(re.fullmatch(r"\d+(\.\d+)?", p) for p in parts)
        if key == "resolution" and not _SIZE.match(value):
            yield Finding(
                "error",
                "resolution-format",
                key,
                f'resolution = {value!r} is not "N" or "W,H"',
                'resolution = "512"',
            )
        elif key == "face_crop_aug_range" and (len(parts) != 2 or not numeric):
            yield Finding(
                "error", "type", key, f'{key} = {value!r} is not "a,b"', f'{key} = "2.0,4.0"'
            )


def _network_args(ctx: _Ctx) -> Iterator[Finding]:
    value = ctx.settings.get("network_args")
    if isinstance(value, list):
        for item in value:
            if isinstance(item, str) and "=" not in item:
                yield Finding(
                    "error",
                    "network-args",
                    "network_args",
                    f"network_args item {item!r} is not key=value",
                    '["conv_dim=4", "conv_alpha=1"]',
                )


# ---------------------------------------------------------------------------------------------
# What a run needs


def _required(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    if "pretrained_model_name_or_path" not in s:
        yield Finding(
            "error",
            "missing-model",
            "pretrained_model_name_or_path",
            "no base model: pretrained_model_name_or_path is not set",
            'pretrained_model_name_or_path = "stabilityai/stable-diffusion-xl-base-1.0"',
        )
    if "dataset_config" in s:
        return
    if "train_data_dir" not in s:
        yield Finding(
            "error",
            "missing-data",
            "train_data_dir",
            "no training data: neither train_data_dir nor dataset_config is set",
            'train_data_dir = "dataset"  (the parent of the <repeats>_<concept> folders)',
        )
    if "resolution" not in s:
        yield Finding(
            "error",
            "missing-resolution",
            "resolution",
            "resolution is not set; sd-scripts requires it unless a dataset_config sets it",
            'resolution = "512"',
        )


def _network_module(ctx: _Ctx) -> Iterator[Finding]:
    module = ctx.settings.get("network_module")
    if module is None:
        yield Finding(
            "error",
            "missing-network-module",
            "network_module",
            "network_module is not set: sd-scripts has no default and fails only AFTER "
            "preparing the "
            "dataset and loading the model ('import network module: None')",
            'network_module = "networks.lora"',
        )
    elif isinstance(module, str) and module != "networks.lora":
        yield Finding(
            "note",
            "network-module",
            "network_module",
            f"network_module = {module!r}: kohyawrap's presets train plain LoRA (networks.lora); "
            "other modules need their own package on the host",
        )


def _caption_extension(ctx: _Ctx) -> Iterator[Finding]:
    ext = ctx.settings.get("caption_extension", ctx.settings.get("caption_extention"))
    if ext is None and "dataset_config" not in ctx.settings:
        yield Finding(
            "warning",
            "caption-extension",
            "caption_extension",
            "caption_extension is not set: sd-scripts reads <image>.caption by default, so .txt "
            "captions are NOT read and every image is captioned with its folder's class token",
            'caption_extension = ".txt"',
        )
    elif isinstance(ext, str) and not ext.startswith("."):
        yield Finding(
            "warning",
            "caption-extension",
            "caption_extension",
            f"caption_extension = {ext!r} has no leading dot: sd-scripts looks for 'img{ext}'",
            f'caption_extension = ".{ext}"',
        )


def _length(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    if "max_train_epochs" not in s and "max_train_steps" not in s:
        yield Finding(
            "warning",
            "default-steps",
            "max_train_steps",
            "neither max_train_epochs nor max_train_steps is set: sd-scripts trains 1600 "
            "steps (its default), "
            "whatever the dataset size",
            "max_train_epochs = 10",
        )
    elif "max_train_epochs" in s and "max_train_steps" in s:
        yield Finding(
            "note",
            "epochs-win",
            "max_train_steps",
            "max_train_epochs is set, so max_train_steps is ignored",
        )


# ---------------------------------------------------------------------------------------------
# Traps: combinations sd-scripts rejects late or trains wrongly


def _resolution_pair(value: Any) -> tuple[int, int] | None:
    if _is_number(value):
        return int(value), int(value)
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    width = int(match.group(1))
    return width, int(match.group(2) or width)


def _buckets(ctx: _Ctx) -> Iterator[Finding]:
    steps = ctx.num("bucket_reso_steps", 64)
    need = 32 if ctx.sdxl else 64
    if steps % need:
        yield Finding(
            "error",
            "bucket-reso-steps",
            "bucket_reso_steps",
            f"bucket_reso_steps = {steps:g} is not divisible by {need}: {ctx.script} stops "
            "with an assertion",
            f"bucket_reso_steps = {need * max(1, round(steps / need))}",
        )
    size = _resolution_pair(ctx.settings.get("resolution"))
    if not ctx.on("enable_bucket") or size is None or not steps or steps % need:
        return
    low = ctx.num("min_bucket_reso", 256) // steps * steps  # sd-scripts rounds min down, max up
    high = -(-ctx.num("max_bucket_reso", 1024) // steps) * steps
    if min(size) < low:
        yield Finding(
            "error",
            "bucket-range",
            "min_bucket_reso",
            f"min_bucket_reso {low:g} is above the resolution {min(size)}: sd-scripts "
            "asserts min_bucket_reso <= resolution",
            f"min_bucket_reso = {min(size) // 2}",
        )
    if max(size) > high:
        yield Finding(
            "error",
            "bucket-range",
            "max_bucket_reso",
            f"max_bucket_reso {high:g} is below the resolution {max(size)}: sd-scripts "
            "asserts max_bucket_reso >= resolution",
            f"max_bucket_reso = {max(size) * 2}",
        )


def _text_encoder_cache(ctx: _Ctx) -> Iterator[Finding]:
    if not ctx.sdxl or not (
        ctx.on("cache_text_encoder_outputs") or ctx.on("cache_text_encoder_outputs_to_disk")
    ):
        return
    if not ctx.on("network_train_unet_only"):
        yield Finding(
            "error",
            "cache-te-needs-unet-only",
            "cache_text_encoder_outputs",
            "cache_text_encoder_outputs needs network_train_unet_only: cached text encoder outputs "
            "cannot train a text-encoder LoRA (sd-scripts assertion)",
            "network_train_unet_only = true",
        )
    blockers = [
        k
        for k in (
            "shuffle_caption",
            "caption_dropout_rate",
            "caption_tag_dropout_rate",
            "token_warmup_step",
        )
        if ctx.on(k)
    ]
    for key in blockers:
        yield Finding(
            "error",
            "cache-te-caption-changes",
            key,
            f"{key} changes captions every step, which cached text encoder outputs cannot follow "
            "(sd-scripts assertion)",
            f"remove {key}, or set cache_text_encoder_outputs = false",
        )


def _latent_cache(ctx: _Ctx) -> Iterator[Finding]:
    if not (ctx.on("cache_latents") or ctx.on("cache_latents_to_disk")):
        return
    for key in ("color_aug", "random_crop"):
        if ctx.on(key):
            yield Finding(
                "error",
                "cache-latents-augment",
                key,
                f"{key} cannot be used with cache_latents (sd-scripts assertion)",
                f"remove {key}, or set cache_latents = false",
            )


def _precision(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    mixed = s.get("mixed_precision", "no")
    if (
        ctx.sdxl
        and (mixed == "fp16" or ctx.on("full_fp16"))
        and not ctx.on("no_half_vae")
        and "vae" not in s
    ):
        yield Finding(
            "error",
            "sdxl-fp16-vae",
            "no_half_vae",
            "SDXL in fp16 needs no_half_vae: the SDXL VAE overflows in fp16 and gives NaN latents",
            'no_half_vae = true  (or a fp16-fix VAE in `vae`, or mixed_precision = "bf16")',
        )
    if ctx.bf16_supported is False and (mixed == "bf16" or ctx.on("full_bf16")):
        yield Finding(
            "error",
            "no-bf16",
            "mixed_precision",
            "this GPU has no bf16 support",
            'mixed_precision = "fp16"',
        )
    for flag, wanted in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
        if ctx.on(flag) and mixed != wanted:
            yield Finding(
                "error",
                "full-precision",
                flag,
                f'{flag} requires mixed_precision = "{wanted}" (sd-scripts assertion)',
                f'mixed_precision = "{wanted}"',
            )
    if (ctx.on("fp8_base") or ctx.on("fp8_base_unet")) and mixed == "no":
        yield Finding(
            "error",
            "fp8-needs-mixed",
            "fp8_base",
            "fp8_base requires mixed_precision fp16 or bf16 (sd-scripts assertion)",
            'mixed_precision = "bf16"',
        )
    optimizer = str(s.get("optimizer_type", "")).lower()
    if optimizer.startswith("prodigy") and mixed == "fp16":
        yield Finding(
            "warning",
            "prodigy-fp16",
            "optimizer_type",
            "Prodigy with fp16 is reported to produce NaN losses (LETS #308)",
            'mixed_precision = "bf16" where the GPU supports it',
        )


def _model_family(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    if ctx.sdxl and ctx.on("v2"):
        yield Finding(
            "error",
            "sdxl-v2",
            "v2",
            "sdxl_train_network.py refuses v2 (SDXL is not SD2)",
            "remove v2",
        )
    if not ctx.sdxl and ctx.on("v_parameterization") and not ctx.on("v2"):
        yield Finding(
            "warning",
            "v-param-without-v2",
            "v_parameterization",
            "v_parameterization without v2: SD2 768-v models need both; an SD1.x model "
            "would learn the wrong prediction target",
            "v2 = true (SD2.x 768-v), or remove v_parameterization",
        )
    if ctx.sdxl and "clip_skip" in s:
        yield Finding(
            "warning",
            "sdxl-clip-skip",
            "clip_skip",
            "clip_skip does not work as expected with SDXL (sd-scripts warns)",
            "remove clip_skip",
        )
    name = str(s.get("pretrained_model_name_or_path", ""))
    if not ctx.sdxl and re.search(r"xl", name, re.IGNORECASE):
        yield Finding(
            "warning",
            "sdxl-model-wrong-script",
            "pretrained_model_name_or_path",
            f"{name!r} looks like an SDXL model: train_network.py cannot train SDXL and "
            "fails while "
            "loading the model, after dataset preparation",
            "train with sdxl_train_network.py (kohyawrap --model sdxl)",
        )


def _logging(ctx: _Ctx) -> Iterator[Finding]:
    if ctx.settings.get("log_with") in ("tensorboard", "all") and "logging_dir" not in ctx.settings:
        yield Finding(
            "error",
            "log-without-dir",
            "logging_dir",
            "log_with tensorboard without logging_dir fails when the accelerator starts",
            'logging_dir = "logs"',
        )


def _notes(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    if (
        s.get("lr_scheduler") == "cosine_with_restarts"
        and ctx.num("lr_scheduler_num_cycles", 1) <= 1
    ):
        yield Finding(
            "note",
            "no-restarts",
            "lr_scheduler",
            "cosine_with_restarts with lr_scheduler_num_cycles = 1 (the default) never "
            "restarts: it is plain cosine",
            'lr_scheduler_num_cycles = 3, or lr_scheduler = "cosine"',
        )
    optimizer = str(s.get("optimizer_type", ""))
    if (
        "8bit" in optimizer.lower()
        or optimizer.lower().startswith("paged")
        or ctx.on("use_8bit_adam")
    ):
        yield Finding(
            "note",
            "needs-bitsandbytes",
            "optimizer_type",
            f"{optimizer or 'use_8bit_adam'} needs bitsandbytes built for the host's CUDA "
            "(it does not run on a CPU)",
        )
    if ctx.on("output_config"):
        yield Finding(
            "warning",
            "output-config",
            "output_config",
            "output_config writes the options to the config file's path and exits WITHOUT training",
            "remove output_config",
        )
    if "dataset_config" in s and ("train_data_dir" in s or "reg_data_dir" in s):
        yield Finding(
            "warning",
            "dataset-config-wins",
            "train_data_dir",
            "dataset_config is set, so train_data_dir and reg_data_dir are ignored",
        )


# ---------------------------------------------------------------------------------------------
# Optimizer, scheduler, warmup, learning rates and counts: values sd-scripts reads without a check
# and trips over only after the models have loaded (names: data/optimizers_schedulers.toml)

DEFAULT_LEARNING_RATE = 2e-6  # sd-scripts' --learning_rate default (train_network_args.json)
_COUNT_PROBLEMS = {
    "train_batch_size": "each step would train no image",
    "max_train_steps": "the run ends before its first step: nothing is trained",
    "max_train_epochs": "the run ends before its first step: nothing is trained",
    "gradient_accumulation_steps": "accelerate refuses it",
    "network_dim": "a LoRA of rank 0 has no weights to train",
}


def _optimizer_type(settings: Mapping[str, Any]) -> str:
    value = settings.get("optimizer_type") or ""
    if not value and settings.get("use_8bit_adam"):
        return "AdamW8bit"
    if not value and settings.get("use_lion_optimizer"):
        return "Lion"
    return value if isinstance(value, str) else ""


def _schedulefree(settings: Mapping[str, Any]) -> bool:
    """sd-scripts replaces the scheduler of a schedule-free optimizer with a dummy one."""
    return _optimizer_type(settings).lower().endswith("schedulefree")


def _adafactor_relative_step(settings: Mapping[str, Any]) -> bool:
    """Adafactor with relative_step (its default): sd-scripts ignores the learning rate and sets
    lr_scheduler to "adafactor:<lr>" whatever the config says."""
    if _optimizer_type(settings).lower() != "adafactor":
        return False
    args = settings.get("optimizer_args") or []
    given = {str(a).split("=", 1)[0].strip(): str(a).split("=", 1)[-1].strip() for a in args}
    relative = given.get("relative_step", "True") != "False"
    return relative or given.get("warmup_init", "False") == "True"


def _closest(word: str, names: Iterable[str]) -> list[str]:
    """Names ``word`` most likely meant: the same in another case, a name it starts with
    (cosine_annealing -> cosine), or a close spelling."""
    pool = list(dict.fromkeys(names))
    lower = word.lower()
    same = [n for n in pool if n.lower() == lower]
    if same:
        return same
    # A known name plus "_something" (cosine_annealing, linear_warmup) meant that name.
    extended = [n for n in pool if lower.startswith(n.lower() + "_")]
    by_lower = {n.lower(): n for n in pool}
    close = [by_lower[n] for n in suggest(lower, by_lower)]
    return list(dict.fromkeys(sorted(extended, key=len, reverse=True) + close))[:3]


def _meant(names: list[str]) -> str | None:
    return "did you mean " + " or ".join(f"'{n}'" for n in names) + "?" if names else None


def _optimizer(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    flags = [f for f in ("use_8bit_adam", "use_lion_optimizer") if ctx.on(f)]
    if flags and (len(flags) == 2 or s.get("optimizer_type")):
        others = [*flags[1:], "optimizer_type"] if len(flags) == 1 else flags[1:]
        yield Finding(
            "error",
            "optimizer",
            flags[0],
            f"{flags[0]} and {' and '.join(others)} are both set: sd-scripts stops with an "
            "assertion before training",
            f"remove {flags[0]} and set only optimizer_type",
        )
        return
    name = s.get("optimizer_type")
    if isinstance(name, str) and name:
        yield from _optimizer_name(name)


def _optimizer_name(name: str) -> Iterator[Finding]:
    names = training_names()
    lower = name.lower()
    own = {n.lower(): n for n in names.optimizers}
    if "." in name:
        yield from _dotted_optimizer(name, own)
    elif lower in own:
        package = next(
            (p for pre, p in names.optimizer_packages.items() if lower.startswith(pre)), None
        )
        if package:
            yield Finding(
                "warning",
                "optimizer-package",
                "optimizer_type",
                f"{name} needs the {package} package, which sd-scripts' requirements.txt does not "
                "install: without it sd-scripts stops with an ImportError after loading the models",
                f"install {package} in the host's venv, or use AdamW8bit or Prodigy",
            )
    elif name in names.optimizer_not_usable:
        why, use = names.optimizer_not_usable[name]
        yield Finding(
            "error",
            "optimizer",
            "optimizer_type",
            f"optimizer_type = {name!r} cannot train here: {why}",
            f'optimizer_type = "{use}"',
        )
    elif name not in names.torch_optimizers:
        known = [*names.optimizers, *names.torch_optimizers]
        yield Finding(
            "error",
            "optimizer",
            "optimizer_type",
            f"optimizer_type = {name!r} is no optimizer sd-scripts knows: it looks it up in "
            "torch.optim after the models have loaded and stops with an AttributeError",
            _meant(_closest(name, known))
            or f"one of sd-scripts' names ({', '.join(names.optimizers[:6])}, ...) or a "
            "module.Class path",
        )


def _dotted_optimizer(name: str, own: Mapping[str, str]) -> Iterator[Finding]:
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        yield Finding(
            "error",
            "optimizer",
            "optimizer_type",
            f"optimizer_type = {name!r} is not a module.Class path",
            'e.g. optimizer_type = "bitsandbytes.optim.AdEMAMix8bit"',
        )
    elif name.lower().startswith("dadapt"):
        short = own.get(parts[-1].lower(), "DAdaptAdam")
        yield Finding(
            "error",
            "optimizer",
            "optimizer_type",
            f"optimizer_type = {name!r}: sd-scripts reads every name starting with 'dadapt' as "
            "one of its own D-Adaptation names and stops with 'Unknown optimizer type'",
            f'optimizer_type = "{short}"',
        )
    elif parts[0] not in training_names().host_modules:
        yield Finding(
            "warning",
            "optimizer-package",
            "optimizer_type",
            f"optimizer_type = {name!r} is imported from {parts[0]} on the host, which "
            "sd-scripts' requirements.txt does not install (an ImportError after the models load)",
            f"install {parts[0]} in the host's venv",
        )


def _scheduler(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    name = s.get("lr_scheduler", "constant")
    if (
        not isinstance(name, str)
        or _schedulefree(s)
        or s.get("lr_scheduler_type")
        or _adafactor_relative_step(s)
    ):
        return  # a dummy, a custom or the forced adafactor scheduler: lr_scheduler is not read
    names = training_names()
    if name.startswith("adafactor"):
        yield from _adafactor_scheduler(ctx, name)
    elif name in names.scheduler_not_usable:
        yield Finding(
            "error",
            "lr-scheduler",
            "lr_scheduler",
            f"lr_scheduler = {name!r} fails at sd-scripts {PINNED_COMMIT[:8]}: "
            f"{names.scheduler_not_usable[name]}",
            'lr_scheduler = "cosine" (or "constant")',
        )
    elif name not in names.schedulers:
        yield Finding(
            "error",
            "lr-scheduler",
            "lr_scheduler",
            f"lr_scheduler = {name!r} is no scheduler sd-scripts knows: it stops with a "
            "ValueError after the models have loaded",
            _meant(_closest(name, names.schedulers)) or f"one of {', '.join(names.schedulers)}",
        )
    else:
        yield from _scheduler_needs(ctx, name)


def _adafactor_scheduler(ctx: _Ctx, name: str) -> Iterator[Finding]:
    if _optimizer_type(ctx.settings).lower() != "adafactor":
        yield Finding(
            "error",
            "lr-scheduler",
            "lr_scheduler",
            'the adafactor scheduler needs optimizer_type = "Adafactor" (sd-scripts assertion)',
            'lr_scheduler = "constant"',
        )
    elif not re.fullmatch(r"adafactor:\s*[0-9.eE+-]+", name):
        yield Finding(
            "error",
            "lr-scheduler",
            "lr_scheduler",
            f"lr_scheduler = {name!r}: sd-scripts reads the initial rate after a colon and "
            "stops without one",
            'lr_scheduler = "adafactor:1e-3"',
        )


def _scheduler_needs(ctx: _Ctx, name: str) -> Iterator[Finding]:
    s = ctx.settings
    args = [str(a) for a in (s.get("lr_scheduler_args") or [])]
    if name == "cosine_with_min_lr" and s.get("lr_scheduler_min_lr_ratio") is None:
        yield Finding(
            "error",
            "lr-scheduler-args",
            "lr_scheduler",
            "cosine_with_min_lr needs lr_scheduler_min_lr_ratio: without it transformers stops "
            "with 'One of min_lr or min_lr_rate should be set'",
            "lr_scheduler_min_lr_ratio = 0.1",
        )
    if name == "piecewise_constant" and not any(a.startswith("step_rules=") for a in args):
        yield Finding(
            "error",
            "lr-scheduler-args",
            "lr_scheduler",
            "piecewise_constant needs its step rules in lr_scheduler_args: without them "
            "diffusers stops with a TypeError",
            'lr_scheduler_args = ["step_rules=1:100,0.1"]',
        )


def _total_steps_known(settings: Mapping[str, Any]) -> int | None:
    """The run's total steps when the config alone says it (max_train_steps without epochs)."""
    if "max_train_epochs" in settings:
        return None
    value = settings.get("max_train_steps", 1600)  # sd-scripts' default
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _warmup(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    warmup = s.get("lr_warmup_steps", 0)
    if not _is_number(warmup) or _schedulefree(s):
        return
    if warmup < 0:
        yield Finding(
            "error", "warmup", "lr_warmup_steps", f"lr_warmup_steps = {warmup} is negative",
            "lr_warmup_steps = 0",
        )  # fmt: skip
        return
    if isinstance(warmup, float) and warmup >= 1:
        yield Finding(
            "error",
            "warmup",
            "lr_warmup_steps",
            f"lr_warmup_steps = {warmup} is a float, which sd-scripts reads as a ratio of the "
            f"total steps ({warmup:g} x the whole run); the config file is not converted",
            f"lr_warmup_steps = {int(warmup)}  (steps), or a ratio below 1 such as 0.05",
        )
        return
    refuser = _no_warmup_scheduler(s)
    if refuser is None or warmup == 0:
        return
    steps = _total_steps_known(s)
    if isinstance(warmup, float) and steps is not None and int(warmup * steps) == 0:
        return  # sd-scripts truncates the ratio to 0 steps: accepted
    ratio = (
        f" (a ratio: {warmup:g} x the total steps, truncated to whole steps)"
        if isinstance(warmup, float)
        else ""
    )
    yield Finding(
        "error",
        "warmup",
        "lr_warmup_steps",
        f"lr_warmup_steps = {warmup}{ratio} with {refuser}: sd-scripts stops after loading the "
        "models ('does not require num_warmup_steps')",
        'lr_warmup_steps = 0, or lr_scheduler = "constant_with_warmup"',
    )


def _no_warmup_scheduler(settings: Mapping[str, Any]) -> str | None:
    """What makes sd-scripts refuse a warmup: the scheduler in use, or None when it takes one."""
    if settings.get("lr_scheduler_type"):
        return f"the custom lr_scheduler_type {settings['lr_scheduler_type']!r}"
    if _adafactor_relative_step(settings):
        return "Adafactor (relative_step uses the adafactor scheduler)"
    name = settings.get("lr_scheduler", "constant")
    if isinstance(name, str) and (
        name in training_names().no_warmup or name.startswith("adafactor")
    ):
        default = "" if "lr_scheduler" in settings else " (sd-scripts' default)"
        return f"lr_scheduler = {name!r}{default}"
    return None


def _learning_rates(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    negative = [
        (key, v)
        for key, value in s.items()
        if key == "learning_rate" or key.endswith("_lr")
        for v in (value if isinstance(value, list) else [value])
        if _is_number(v) and v < 0
    ]
    for key, value in negative:
        yield Finding(
            "error",
            "learning-rate",
            key,
            f"{key} = {value} is negative: the optimizer would climb the loss instead of "
            "descending it",
            f"{key} = 1e-4",
        )
    if negative or _adafactor_relative_step(s):
        return
    yield from _zero_rates(ctx)


def _zero_rates(ctx: _Ctx) -> Iterator[Finding]:
    """sd-scripts' LoRA skips a part whose rate is 0 ("NO LR skipping!"): say which parts."""
    s = ctx.settings
    base = s.get("learning_rate", DEFAULT_LEARNING_RATE)
    te_value = s.get("text_encoder_lr")
    te_value = te_value[0] if isinstance(te_value, list) and te_value else te_value
    parts = {
        "U-Net": ("unet_lr", s.get("unet_lr")),
        "text encoder": ("text_encoder_lr", te_value),
    }
    trained = {
        "U-Net": not ctx.on("network_train_text_encoder_only"),
        "text encoder": not ctx.on("network_train_unet_only"),
    }
    frozen = []
    for part, (key, value) in parts.items():
        rate, source = (value, key) if _is_number(value) else (base, "learning_rate")
        if trained[part] and _is_number(rate) and rate == 0:
            frozen.append((part, source))
    if frozen and len(frozen) == sum(trained.values()):
        source = frozen[0][1]
        yield Finding(
            "error",
            "learning-rate",
            source,
            f"{source} = 0 leaves nothing to train: sd-scripts skips every part with rate 0 and "
            "the optimizer stops with 'empty parameter list'",
            f"{source} = 1e-4",
        )
        return
    for part, source in frozen:
        yield Finding(
            "note",
            "learning-rate",
            source,
            f"{source} = 0: the {part} is not trained (sd-scripts skips a part with rate 0)",
        )


def _counts(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    for key, why in _COUNT_PROBLEMS.items():
        value = s.get(key)
        if key == "max_train_steps" and "max_train_epochs" in s:
            continue  # epochs decide the length; the step count is not read
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            yield Finding("error", "count", key, f"{key} = {value}: {why}", f"{key} = 1 or more")


_RULES: tuple[Rule, ...] = (
    _unknown_keys,
    _types,
    _sizes,
    _network_args,
    _required,
    _network_module,
    _caption_extension,
    _length,
    _buckets,
    _text_encoder_cache,
    _latent_cache,
    _precision,
    _model_family,
    _logging,
    _notes,
    _optimizer,
    _scheduler,
    _warmup,
    _learning_rates,
    _counts,
)


# ---------------------------------------------------------------------------------------------
# --dataset_config files (validated by sd-scripts itself, strictly: unknown keys are errors)


def check_dataset_config(
    doc: Mapping[str, Any], *, masked_loss: bool = False
) -> tuple[Finding, ...]:
    """Check a ``--dataset_config`` document against the shipped schema "
    "(dataset_config_schema.json)."""
    schema = dataset_config_schema()
    mode = schema["modes"][f"train_network (masked_loss {'on' if masked_loss else 'off'})"]
    found: list[Finding] = []
    for key in doc:
        if key not in schema["top_level_keys"]:
            found.append(_dc_unknown(key, "top level", schema["top_level_keys"]))
    general = doc.get("general", {})
    if isinstance(general, Mapping):
        found.extend(_dc_keys(general, mode["general"], "[general]"))
    datasets = doc.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        found.append(
            Finding(
                "error",
                "dc-no-datasets",
                "datasets",
                "no [[datasets]] entry",
                "add [[datasets]] with [[datasets.subsets]]",
            )
        )
        return tuple(found)
    for i, dataset in enumerate(datasets):
        found.extend(_dc_dataset(dataset, mode, f"[[datasets]] #{i + 1}"))
    return tuple(found)


def _dc_dataset(dataset: Any, mode: Mapping[str, Any], where: str) -> list[Finding]:
    subsets = dataset.get("subsets", []) if isinstance(dataset, Mapping) else []
    if not isinstance(dataset, Mapping) or not subsets:
        return [
            Finding(
                "error",
                "dc-no-subsets",
                "subsets",
                f"{where} has no [[datasets.subsets]]",
                "add one subset per image folder",
            )
        ]
    with_meta = sum(1 for s in subsets if isinstance(s, Mapping) and "metadata_file" in s)
    if 0 < with_meta < len(subsets):
        return [
            Finding(
                "error",
                "dc-mixed",
                "metadata_file",
                f"{where} mixes DreamBooth and fine-tuning subsets",
                "split them into two [[datasets]]",
            )
        ]
    kind = "fine_tuning" if with_meta else "dreambooth"
    found = _dc_keys(
        {k: v for k, v in dataset.items() if k != "subsets"}, mode["datasets"][kind], where
    )
    for j, subset in enumerate(subsets):
        found.extend(_dc_keys(subset, mode["subsets"][kind], f"{where} subset #{j + 1}"))
    return found


def _dc_keys(table: Mapping[str, Any], allowed: Mapping[str, Any], where: str) -> list[Finding]:
    found = [_dc_unknown(k, where, allowed) for k in table if k not in allowed]
    for key, spec in allowed.items():
        if key not in table:
            if spec.get("required"):
                found.append(Finding("error", "dc-required", key, f"{where}: {key} is required"))
            continue
        if not _dc_type_ok(table[key], spec["type"]):
            found.append(
                Finding(
                    "error",
                    "dc-type",
                    key,
                    f"{where}: {key} = {table[key]!r} does not have the type {spec['type']}",
                )
            )
    return found


def _dc_unknown(key: str, where: str, allowed: Any) -> Finding:
    close = suggest(key, allowed)
    return Finding(
        "error",
        "dc-unknown-key",
        key,
        f"{where}: {key} is not allowed here (sd-scripts rejects the dataset config)",
        "did you mean " + " or ".join(close) + "?" if close else None,
    )


def _dc_type_ok(value: Any, kind: Any) -> bool:
    if isinstance(kind, Mapping):
        if "any_of" in kind:
            return any(_dc_type_ok(value, k) for k in kind["any_of"])
        if "pair_of" in kind:
            return (
                isinstance(value, list)
                and len(value) == 2
                and all(_dc_type_ok(v, kind["pair_of"]) for v in value)
            )
        if "scalar_or_pair_of" in kind:
            inner = kind["scalar_or_pair_of"]
            return _dc_type_ok(value, inner) or _dc_type_ok(value, {"pair_of": inner})
        return True
    checks: dict[str, Callable[[Any], bool]] = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, float),  # voluptuous checks isinstance: 1 is not a float
        "str": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "dict": lambda v: isinstance(v, Mapping),
    }
    return checks.get(str(kind), lambda v: True)(value)
