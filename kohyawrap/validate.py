"""Check training options the way sd-scripts will (mis)read them, before anything runs.

sd-scripts does not validate ``--config_file``: unknown keys are ignored silently, values are not
converted (a quoted ``"1e-4"`` stays a string), and some mistakes only fail after the model has
loaded (docs/sources.md [1], [2], [6]). This module finds those problems up front and explains them.
Findings are data; the CLI presents them. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kohyawrap.errors import ConfigError, suggest
from kohyawrap.models import Finding
from kohyawrap.optimizers import optimizer_findings
from kohyawrap.sdscripts import (
    FAMILIES,
    Argument,
    arguments,
    dataset_config_schema,
    families_of,
    lora_module_scripts,
    scripts,
)

# sd-scripts' training scripts take about 200 options (data/*_args.json); a file with five times
# that is no config, and each unknown key costs a spelling search.
MAX_CONFIG_OPTIONS = 1000
SDXL_SCRIPT = FAMILIES["sdxl"].script
SD_SCRIPT = FAMILIES["sd15"].script
FLUX_SCRIPT = FAMILIES["flux"].script
SD3_SCRIPT = FAMILIES["sd35-large"].script
DIT_SCRIPTS = (FLUX_SCRIPT, SD3_SCRIPT)
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
    guessed = _guess_dit_script(settings)
    if guessed is not None:
        return guessed
    sdxl_only = sorted(set(settings) & _sdxl_only_keys())
    if sdxl_only:
        return SDXL_SCRIPT, f"SDXL-only options present ({', '.join(sdxl_only)})"
    return SD_SCRIPT, "no --model given and no SDXL-only option: assuming SD1.x/SD2.x"


def _sdxl_only_keys() -> set[str]:
    return set(arguments(SDXL_SCRIPT)) - set(arguments(SD_SCRIPT))


def _guess_dit_script(settings: Mapping[str, Any]) -> tuple[str, str] | None:
    """FLUX.1/Chroma or SD3 when the LoRA module or the options say so (None: neither)."""
    module = settings.get("network_module")
    owners = lora_module_scripts().get(module, ()) if isinstance(module, str) else ()
    if len(owners) == 1 and owners[0] in DIT_SCRIPTS:
        return owners[0], f"network_module = {module!r}"
    flux, sd3 = set(arguments(FLUX_SCRIPT)), set(arguments(SD3_SCRIPT))
    others = set(arguments(SDXL_SCRIPT))
    for script, own in ((FLUX_SCRIPT, flux - sd3 - others), (SD3_SCRIPT, sd3 - flux - others)):
        present = sorted(set(settings) & own)
        if present:
            return script, f"{_titles(script)} options present ({', '.join(present)})"
    shared = sorted(set(settings) & ((flux & sd3) - others))
    if shared:
        return FLUX_SCRIPT, (
            f"FLUX.1/SD3 options present ({', '.join(shared)}): assuming FLUX.1 "
            "(--model names the family)"
        )
    return None


def _titles(script: str) -> str:
    """``FLUX.1 / Chroma`` for flux_train_network.py."""
    return " / ".join(f.title for f in families_of(script))


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
        elsewhere = [s for s in scripts() if s != ctx.script and key in arguments(s)]
        if elsewhere:
            yield _wrong_script_key(ctx, key, elsewhere)
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


def _wrong_script_key(ctx: _Ctx, key: str, elsewhere: list[str]) -> Finding:
    return Finding(
        "error",
        "wrong-script-key",
        key,
        f"{key} is an option of {' and '.join(elsewhere)}, not of {ctx.script}: it is ignored "
        "without a word",
        f"train {_titles(elsewhere[0])} with {elsewhere[0]} (a matching --model preset, "
        "`kohyawrap presets list`), or remove the key",
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
    if kind in ("str", "pathlib.Path") or kind is None:  # argparse's type None keeps the string
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
    elif isinstance(module, str) and module not in lora_module_scripts():
        expected = " or ".join(sorted({f.network_module for f in families_of(ctx.script)}))
        yield Finding(
            "note",
            "network-module",
            "network_module",
            f"network_module = {module!r}: kohyawrap's presets train plain LoRA ({expected}); "
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
    need = max(f.bucket_multiple for f in families_of(ctx.script))
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
    if ctx.script == SD_SCRIPT and ctx.on("v_parameterization") and not ctx.on("v2"):
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
    if ctx.script == SD_SCRIPT and re.search(r"xl", name, re.IGNORECASE):
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
# Optimizer, scheduler, warmup and learning rates (kohyawrap.optimizers), and counts: values
# sd-scripts reads without a check and trips over only after the models have loaded

_COUNT_PROBLEMS = {
    "train_batch_size": "each step would train no image",
    "max_train_steps": "the run ends before its first step: nothing is trained",
    "max_train_epochs": "the run ends before its first step: nothing is trained",
    "gradient_accumulation_steps": "accelerate refuses it",
    "network_dim": "a LoRA of rank 0 has no weights to train",
}


def _training(ctx: _Ctx) -> Iterator[Finding]:
    yield from optimizer_findings(ctx.settings)


def _counts(ctx: _Ctx) -> Iterator[Finding]:
    s = ctx.settings
    for key, why in _COUNT_PROBLEMS.items():
        value = s.get(key)
        if key == "max_train_steps" and "max_train_epochs" in s:
            continue  # epochs decide the length; the step count is not read
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            yield Finding("error", "count", key, f"{key} = {value}: {why}", f"{key} = 1 or more")


# FLUX.1 / Chroma (flux_train_network.py) and SD3.5 (sd3_train_network.py): their start-up
# assertions and the documented traps (sd-scripts @ PINNED_COMMIT, file:line in each message).


def _dit_network_module(ctx: _Ctx) -> Iterator[Finding]:
    module = ctx.settings.get("network_module")
    owners = lora_module_scripts().get(module, ()) if isinstance(module, str) else ()
    if not owners or ctx.script in owners:
        return
    wanted = families_of(ctx.script)[0].network_module
    yield Finding(
        "error",
        "network-module-family",
        "network_module",
        f"network_module = {module!r} is the LoRA for {' and '.join(owners)}: on {ctx.script} it "
        "finds none of the layers it looks for, so the LoRA trains nothing useful"
        + (
            " (sd-scripts' own SD3 doc example says networks.lora; its README says networks.lora_sd3)"
            if ctx.script == SD3_SCRIPT
            else ""
        ),
        f'network_module = "{wanted}"',
    )


def _dit_companions(ctx: _Ctx) -> Iterator[Finding]:
    if ctx.script not in DIT_SCRIPTS:
        return
    chroma = ctx.settings.get("model_type") == "chroma"
    family = FAMILIES["chroma"] if chroma else families_of(ctx.script)[0]
    for companion in family.companions:
        if ctx.settings.get(companion.key):
            continue
        yield Finding(
            "error" if companion.required else "warning",
            "missing-companion" if companion.required else "companion-from-checkpoint",
            companion.key,
            f"{companion.key} ({companion.title}) is not set: "
            + (
                f"{ctx.script} loads it from that path and fails at start-up without it"
                if companion.required
                else "sd3_train_network.py then looks for it inside the base checkpoint; the "
                "official sd3.5_*.safetensors files do not hold the text encoders"
            ),
            f'{companion.key} = "/path/to/{companion.key}.safetensors"',
        )
    if chroma and ctx.settings.get("clip_l"):
        yield Finding(
            "note",
            "chroma-clip-l",
            "clip_l",
            "Chroma uses no CLIP-L: clip_l is not loaded (sd-scripts' FLUX.1 guide, docs/sources.md [45])",
            "remove clip_l",
        )


def _dit_single_file(ctx: _Ctx) -> Iterator[Finding]:
    name = ctx.settings.get("pretrained_model_name_or_path")
    if ctx.script not in DIT_SCRIPTS or not isinstance(name, str) or not name:
        return
    if not name.lower().endswith((".safetensors", ".sft")):
        yield Finding(
            "warning",
            "dit-needs-a-file",
            "pretrained_model_name_or_path",
            f"{name!r} does not look like a .safetensors file: {ctx.script} loads the base model "
            "from one file; Diffusers repos and folders are not supported "
            "(sd-scripts' FLUX.1 guide, docs/sources.md [45])",
            'pretrained_model_name_or_path = "/path/to/model.safetensors"',
        )


def _block_swap(ctx: _Ctx) -> Iterator[Finding]:
    if ctx.script not in DIT_SCRIPTS:
        return
    swap = ctx.num("blocks_to_swap")
    if swap > 0 and ctx.on("cpu_offload_checkpointing"):
        yield Finding(
            "error",
            "swap-with-offload",
            "cpu_offload_checkpointing",
            f"blocks_to_swap cannot be used with cpu_offload_checkpointing ({ctx.script} "
            "assertion at start-up)",
            "remove cpu_offload_checkpointing (blocks_to_swap saves more)",
        )
    most = max(f.max_blocks_to_swap for f in families_of(ctx.script))
    if swap > most:
        yield Finding(
            "error",
            "too-many-blocks",
            "blocks_to_swap",
            f"blocks_to_swap = {swap:g}: {ctx.script} can swap at most {most} blocks and stops "
            "with an assertion when the model loads",
            f"blocks_to_swap = {most}",
        )
    if ctx.script == SD3_SCRIPT and ctx.on("cpu_offload_checkpointing"):
        yield Finding(
            "error",
            "offload-unsupported",
            "cpu_offload_checkpointing",
            "cpu_offload_checkpointing crashes sd3_train_network.py: the MMDiT's "
            "enable_gradient_checkpointing takes no cpu_offload (docs/sources.md [48])",
            "remove cpu_offload_checkpointing; use blocks_to_swap",
        )


def _dit_text_encoder_cache(ctx: _Ctx) -> Iterator[Finding]:
    cached = ctx.on("cache_text_encoder_outputs") or ctx.on("cache_text_encoder_outputs_to_disk")
    if ctx.script not in DIT_SCRIPTS or not cached:
        return
    for key in (
        "shuffle_caption",
        "caption_dropout_rate",
        "caption_tag_dropout_rate",
        "token_warmup_step",
    ):
        if ctx.on(key):
            yield Finding(
                "error",
                "cache-te-caption-changes",
                key,
                f"{key} changes captions every step, which cached text encoder outputs cannot "
                f"follow ({ctx.script} assertion at start-up)",
                f"remove {key}, or set cache_text_encoder_outputs = false",
            )
    network_args = ctx.settings.get("network_args")
    if isinstance(network_args, list) and any(
        isinstance(a, str) and a.replace(" ", "").lower() == "train_t5xxl=true"
        for a in network_args
    ):
        yield Finding(
            "error",
            "cache-te-train-t5",
            "network_args",
            "train_t5xxl=True trains the T5-XXL LoRA, so its outputs cannot be cached "
            f"({ctx.script} raises ValueError after loading the model)",
            "remove train_t5xxl=True, or set cache_text_encoder_outputs = false",
        )


def _flux_guidance(ctx: _Ctx) -> Iterator[Finding]:
    if ctx.script != FLUX_SCRIPT:
        return
    chroma = ctx.settings.get("model_type") == "chroma"
    guidance = ctx.settings.get("guidance_scale")
    if chroma and not ctx.on("apply_t5_attn_mask"):
        yield Finding(
            "error",
            "chroma-t5-mask",
            "apply_t5_attn_mask",
            "Chroma needs apply_t5_attn_mask (flux_train_network.py asserts it at start-up, "
            "docs/sources.md [47])",
            "apply_t5_attn_mask = true",
        )
    if chroma and _is_number(guidance) and guidance != 0:
        yield Finding(
            "warning",
            "chroma-guidance",
            "guidance_scale",
            f"guidance_scale = {guidance}: Chroma is not guidance-distilled and needs 0.0 "
            "(sd-scripts' FLUX.1 guide, docs/sources.md [45])",
            "guidance_scale = 0.0",
        )
    if guidance is None:
        yield Finding(
            "warning",
            "flux-guidance-default",
            "guidance_scale",
            "guidance_scale is not set: sd-scripts then trains with 3.5, FLUX.1 [dev]'s inference "
            "value; training dev wants 1.0 and Chroma 0.0 (sd-scripts' FLUX.1 guide, docs/sources.md [45])",
            "guidance_scale = 1.0  (0.0 for Chroma)",
        )


def _split_mode(ctx: _Ctx) -> Iterator[Finding]:
    if ctx.on("split_mode"):
        yield Finding(
            "error",
            "split-mode",
            "split_mode",
            "split_mode is deprecated: sd-scripts replaces it with blocks_to_swap = 18 unless "
            "blocks_to_swap is set (sd-scripts' FLUX.1 guide, docs/sources.md [45])",
            "remove split_mode; set blocks_to_swap (e.g. 18) instead",
        )


def _dit_sd_options(ctx: _Ctx) -> Iterator[Finding]:
    if ctx.script not in DIT_SCRIPTS:
        return
    for key in ("v2", "v_parameterization", "clip_skip", "max_token_length"):
        if ctx.settings.get(key) not in (None, False):
            yield Finding(
                "warning",
                "sd-only-option",
                key,
                f"{key} is a Stable Diffusion 1.x/2.x option that {ctx.script} does not use "
                "(sd-scripts' FLUX.1 guide, docs/sources.md [45])",
                "t5xxl_max_token_length" if key == "max_token_length" else f"remove {key}",
            )


def _flow_shift(ctx: _Ctx) -> Iterator[Finding]:
    sampling = ctx.settings.get("timestep_sampling", "sigma")
    if ctx.script == FLUX_SCRIPT and "discrete_flow_shift" in ctx.settings and sampling != "shift":
        yield Finding(
            "note",
            "flow-shift-unused",
            "discrete_flow_shift",
            f'discrete_flow_shift is only used with timestep_sampling = "shift" (it is '
            f"{sampling!r}; sd-scripts' FLUX.1 guide, docs/sources.md [45])",
        )


# A base model named like another family's: the wrong script fails after the dataset is prepared.
_NAME_HINTS = {
    FLUX_SCRIPT: re.compile(r"flux|chroma", re.IGNORECASE),
    SD3_SCRIPT: re.compile(r"sd3|stable-diffusion-3", re.IGNORECASE),
}


def _model_name_family(ctx: _Ctx) -> Iterator[Finding]:
    name = str(ctx.settings.get("pretrained_model_name_or_path", ""))
    for script, pattern in _NAME_HINTS.items():
        if script != ctx.script and pattern.search(name):
            yield Finding(
                "warning",
                "model-wrong-script",
                "pretrained_model_name_or_path",
                f"{name!r} looks like a {_titles(script)} model: {ctx.script} cannot train it and "
                "fails while loading the model, after dataset preparation",
                f"train it with {script} (a matching --model preset)",
            )
            return


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
    _training,
    _counts,
    _dit_network_module,
    _dit_companions,
    _dit_single_file,
    _block_swap,
    _dit_text_encoder_cache,
    _flux_guidance,
    _split_mode,
    _dit_sd_options,
    _flow_shift,
    _model_name_family,
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
