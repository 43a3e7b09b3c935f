"""GPU and model presets, the VRAM-tier rules, and how they combine into training options.

Shipped presets live in the top-level ``presets/`` folder; user presets in
``<user config dir>/presets/{gpus,models}/*.toml`` may ``extends = "<shipped name>"``. Every value
keeps where it came from (file, tier, rule, ``--set``) and the source comment written beside it,
so ``kohyawrap presets show`` can explain each number.

Pure: reads only the preset files it is pointed at.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kohyawrap.errors import ConfigError, UsageError, did_you_mean
from kohyawrap.models import Finding
from kohyawrap.resources import presets_dir
from kohyawrap.sdscripts import FAMILIES, Family, arguments

CONFIG_DIR_ENV = "KOHYAWRAP_CONFIG_DIR"  # overrides platformdirs' user config dir (tests, CI)
_VRAM_NAME = re.compile(r"^vram-(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class Setting:
    """One training option with its value, where it came from and the source given for it."""

    key: str
    value: Any
    origin: str  # "model sd15", "tier sdxl >= 24 GB", "gpu rtx4090", "--set", "smoke", "run"
    source: str = ""  # the comment beside the value in the preset file, or the rule's reason


@dataclass(frozen=True)
class Speed:
    """Seconds per optimizer step = step_overhead_s + batch x s_per_image (native resolution)."""

    step_overhead_s: float
    s_per_image: float


@dataclass(frozen=True)
class GpuPreset:
    """A GPU: memory, precision support, price and measured or estimated speed per model."""

    name: str
    title: str
    vram_gb: float
    arch: str
    bf16: bool
    price_per_hour: float
    price_range: tuple[float, float]
    relative_speed: float
    match: tuple[str, ...]
    speed: Mapping[str, Speed]
    path: str
    sources: Mapping[str, str] = field(default_factory=dict)
    known: bool = True  # False for "vram-N" cards kohyawrap has no preset for
    skypilot: str = ""  # SkyPilot's accelerator name ("RTX4090"); "" = none offers it


@dataclass(frozen=True)
class VramModel:
    """Inputs of the VRAM estimate for one model (see presets/models/*.toml [vram]).

    ``weights_gb`` (DiT families) is the part of the weights that ``fp8_base`` halves and
    ``blocks_to_swap`` moves to the CPU, ``1 / block_count`` of it per swapped block; the SD
    families count their weights in ``base_gb`` and leave both at 0.
    """

    base_gb: float
    text_encoder_gb: float
    per_image_gb: float
    per_image_checkpointed_gb: float
    model_download_gb: float
    lora_mb_per_dim: float
    weights_gb: float = 0.0
    block_count: int = 0


@dataclass(frozen=True)
class ModelFile:
    """A file a model preset fetches when the user names none: the base model (``base``) or a
    companion file (``clip_l``, ``clip_g``, ``t5xxl``, ``ae``: the sd-scripts option it fills)."""

    key: str
    repo: str  # Hugging Face repo id
    file: str  # path of the file inside the repo ("" = the whole Diffusers repo, SD base only)
    size_gb: float | None  # None for the base model: its size is [vram] model_download_gb
    gated: bool  # the repo asks for a license click-through: a token is needed


@dataclass(frozen=True)
class SampleDefaults:
    """How sample_prompts.txt asks for images (``--s`` steps, ``--l`` CFG, ``--g`` guidance)."""

    steps: int | None = None
    cfg: float | None = None
    guidance: float | None = None  # FLUX.1 embedded guidance; None = not written


@dataclass(frozen=True)
class ModelPreset:
    """A model family preset: its script, dataset/bucket settings, default options, VRAM model."""

    name: str
    title: str
    family: str
    dataset: Mapping[str, Any]
    train: tuple[Setting, ...]
    vram: VramModel
    path: str
    sources: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, ModelFile] = field(default_factory=dict)
    sample: SampleDefaults = SampleDefaults()
    plan: Mapping[str, float] = field(default_factory=dict)  # [plan] numbers that differ per model

    @property
    def base_model(self) -> str:
        """The repo ``--base-model`` means when it is not given (``[files.base] repo``)."""
        base = self.files.get("base")
        return base.repo if base is not None else ""

    @property
    def family_info(self) -> Family:
        """The sd-scripts facts of this preset's family (script, companions, LoRA module)."""
        return FAMILIES[self.family]

    @property
    def script(self) -> str:
        """The sd-scripts training script for this family."""
        return FAMILIES[self.family].script

    @property
    def resolution(self) -> int:
        """The native training resolution (square)."""
        return int(self.dataset["resolution"])


@dataclass(frozen=True)
class Tier:
    """Options for one model on cards with at least ``min_vram_gb``."""

    model: str
    min_vram_gb: float
    settings: tuple[Setting, ...]

    @property
    def label(self) -> str:
        """``tier sdxl >= 24 GB``."""
        return f"tier {self.model} >= {self.min_vram_gb:g} GB"


@dataclass(frozen=True)
class Rules:
    """presets/tiers.toml: tiers per model, precision rule, unknown-GPU defaults, smoke options."""

    tiers: Mapping[str, tuple[Tier, ...]]
    precision: Mapping[str, Setting]
    unknown_gpu: Mapping[str, Setting]
    smoke: tuple[Setting, ...]
    smoke_unset: tuple[str, ...]
    plan: Mapping[str, Setting] = field(default_factory=dict)

    def number(self, key: str) -> float:
        """A number from [plan] (a KeyError names a missing key: the shipped file always has it)."""
        return float(self.plan[key].value)


@dataclass(frozen=True)
class Catalog:
    """Every preset kohyawrap knows: shipped ones plus the user's."""

    gpus: Mapping[str, GpuPreset]
    models: Mapping[str, ModelPreset]
    rules: Rules

    def model(self, name: str) -> ModelPreset:
        """The model preset ``name``, or a UsageError with suggestions."""
        if name not in self.models:
            raise UsageError(
                f"unknown model preset {name!r}",
                hint=did_you_mean(name, self.models) or f"one of: {', '.join(sorted(self.models))}",
            )
        return self.models[name]

    def gpu(self, name: str, vram_gb: float | None = None) -> GpuPreset:
        """The GPU preset ``name`` ("vram-N" = unknown card of N GB); ``vram_gb`` replaces "
        "its VRAM."""
        found = _VRAM_NAME.match(name)
        if found:
            preset = self._unknown_gpu(float(found.group(1)))
        elif name in self.gpus:
            preset = self.gpus[name]
        else:
            raise UsageError(
                f"unknown GPU preset {name!r}",
                hint=(did_you_mean(name, self.gpus) or f"one of: {', '.join(sorted(self.gpus))}")
                + " (or --vram N for a card without a preset)",
            )
        return replace(preset, vram_gb=vram_gb) if vram_gb is not None else preset

    def _unknown_gpu(self, vram_gb: float) -> GpuPreset:
        rule = self.rules.unknown_gpu
        like = self.gpus[str(rule["speed_like"].value)]
        return GpuPreset(
            name=f"vram-{vram_gb:g}",
            title=f"unknown GPU with {vram_gb:g} GB",
            vram_gb=vram_gb,
            arch="unknown",
            bf16=bool(rule["bf16"].value),
            price_per_hour=float(rule["price_per_hour"].value),
            price_range=(float(rule["price_per_hour"].value),) * 2,
            relative_speed=like.relative_speed,
            match=(),
            speed=like.speed,
            path="presets/tiers.toml [unknown_gpu]",
            sources={
                "gpu.vram_gb": "given with --vram (or gpu vram-N)",
                "gpu.bf16": rule["bf16"].source,
                "gpu.price_per_hour": rule["price_per_hour"].source,
                **{
                    k: f"{like.name}'s: {v}"
                    for k, v in like.sources.items()
                    if k.startswith("speed.")
                },
            },
            known=False,
        )


@dataclass(frozen=True)
class Resolved:
    """A GPU x model combination resolved into training options, each with its origin."""

    gpu: GpuPreset
    model: ModelPreset
    tier: Tier | None
    settings: tuple[Setting, ...]
    notes: tuple[Finding, ...] = ()  # what resolving changed that the user should hear about

    @property
    def script(self) -> str:
        """The sd-scripts training script."""
        return self.model.script

    def values(self) -> dict[str, Any]:
        """The options as a flat dict, in resolution order."""
        return {s.key: s.value for s in self.settings}

    def get(self, key: str, default: Any = None) -> Any:
        """One option's value, or ``default`` when unset."""
        return self.values().get(key, default)


# ---------------------------------------------------------------------------------------------
# Reading preset files (tomlkit keeps the comments that carry each number's source)


def user_presets_dir() -> Path:
    """``$KOHYAWRAP_CONFIG_DIR/presets`` or platformdirs' "
    "``user_config_dir("kohyawrap")/presets``."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env) / "presets"
    import platformdirs

    return Path(platformdirs.user_config_dir("kohyawrap")) / "presets"


def display_path(path: Path) -> str:
    """``presets/gpus/rtx4090.toml`` for a shipped preset (not a machine's absolute path)."""
    try:
        return "presets/" + path.resolve().relative_to(presets_dir().resolve()).as_posix()
    except (ValueError, FileNotFoundError):
        return str(path)


# Parsed preset files by (path, mtime, size): a plan reads the catalog several times, and tomlkit
# (kept for the comments, which carry each number's source) takes ~30 ms a file.
_PARSED: dict[tuple[str, int, int], tuple[dict[str, Any], dict[str, str]]] = {}
_PARSED_MAX = 512


def read_toml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A TOML file as plain data, plus the comment beside (or just above) each value by "
    "dotted key."""
    try:
        st = path.stat()
        key: tuple[str, int, int] | None = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None  # read_user_text says what is wrong with it
    if key is not None and key in _PARSED:
        data, comments = _PARSED[key]
        return copy.deepcopy(data), dict(comments)
    parsed = _parse_toml(path)
    if key is not None:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = copy.deepcopy(parsed[0]), dict(parsed[1])
    return parsed


def _parse_toml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    import tomlkit
    from tomlkit.exceptions import ParseError

    from kohyawrap.fileio import read_user_text

    text = read_user_text(path, "preset file", error=ConfigError)
    try:
        doc = tomlkit.parse(text)
    except ParseError as err:
        raise ConfigError(f"cannot read preset file: {err}", where=str(path)) from err
    comments: dict[str, str] = {}
    _collect_comments(doc.body, "", comments)
    return doc.unwrap(), comments


def _collect_comments(body: Iterable[tuple[Any, Any]], prefix: str, out: dict[str, str]) -> None:
    from tomlkit import items

    pending: list[str] = []
    for key, item in body:
        if key is None:
            if isinstance(item, items.Comment):
                pending.append(_strip_comment(item.as_string()))
            elif isinstance(item, items.Whitespace) and "\n\n" in item.as_string():
                pending = []
            continue
        name = f"{prefix}{key.key}"
        if isinstance(item, items.Table):
            _collect_comments(item.value.body, name + ".", out)
        elif isinstance(item, items.AoT):
            for i, table in enumerate(item.body):
                _collect_comments(table.value.body, f"{name}[{i}].", out)
        else:
            trailing = _strip_comment(item.trivia.comment)
            out[name] = trailing or " ".join(pending)
        pending = []


def _strip_comment(text: str) -> str:
    return text.strip().lstrip("#").strip()


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two plain TOML tables (``top`` wins; tables merge, everything else "
    "replaces)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class _RawPreset:
    name: str
    path: Path
    data: dict[str, Any]
    comments: dict[str, str]


def _read_folder(folder: Path) -> dict[str, _RawPreset]:
    if not folder.is_dir():
        return {}
    found: dict[str, _RawPreset] = {}
    for path in sorted(folder.glob("*.toml")):
        data, comments = read_toml(path)
        found[path.stem] = _RawPreset(path.stem, path, data, comments)
    return found


def _find_raw(
    name: str, user: Mapping[str, _RawPreset], shipped: Mapping[str, _RawPreset], skip_user: bool
) -> _RawPreset | None:
    if not skip_user and name in user:
        return user[name]
    return shipped.get(name)


def _resolve_extends(
    name: str, user: Mapping[str, _RawPreset], shipped: Mapping[str, _RawPreset], kind: str
) -> _RawPreset:
    """Follow ``extends`` chains into one merged preset (a user file may extend its "
    "shipped twin)."""
    chain: list[_RawPreset] = []
    current: str | None = name
    skip_user = False
    while current is not None:
        raw = _find_raw(current, user, shipped, skip_user)
        if raw is None:
            raise ConfigError(
                f"{kind} preset extends unknown preset {current!r}",
                where=str(chain[-1].path) if chain else None,
                hint=did_you_mean(current, {*user, *shipped})
                or f"one of: {', '.join(sorted(shipped))}",
            )
        if raw in chain:
            raise ConfigError(
                f"{kind} presets extend each other in a loop: {current}", where=str(raw.path)
            )
        chain.append(raw)
        parent = raw.data.get("extends")
        skip_user = (
            parent == raw.name
        )  # `extends = "rtx4090"` in user rtx4090.toml means the shipped one
        current = str(parent) if parent is not None else None
    data: dict[str, Any] = {}
    comments: dict[str, str] = {}
    for raw in reversed(chain):
        data = _merge(data, raw.data)
        _forget_stale_file_facts(data, raw.data)
        comments.update({k: v for k, v in raw.comments.items() if v})
    data.pop("extends", None)
    return _RawPreset(name, chain[0].path, data, comments)


def _forget_stale_file_facts(merged: dict[str, Any], child: Mapping[str, Any]) -> None:
    """A [files.<key>] that names another repo does not keep the parent's file name (the user
    must name it), and a new repo or file does not keep the parent's size (nor a new repo its
    licence gate): those describe the parent's file, not this one."""
    files = child.get("files")
    if not isinstance(files, dict) or not isinstance(merged.get("files"), dict):
        return
    for key, entry in files.items():
        target = merged["files"].get(key)
        if not isinstance(entry, dict) or not isinstance(target, dict):
            continue
        if "repo" in entry and "file" not in entry:
            target.pop("file", None)
        if ("repo" in entry or "file" in entry) and "size_gb" not in entry:
            target.pop("size_gb", None)
        if "repo" in entry and "gated" not in entry:
            target.pop("gated", None)


def _layered(shipped_dir: Path, user_dir: Path | None, kind: str) -> dict[str, _RawPreset]:
    """Shipped presets, then user presets (which may extend or replace them), all resolved."""
    shipped = _read_folder(shipped_dir / kind)
    user = _read_folder(user_dir / kind) if user_dir is not None else {}
    singular = kind.rstrip("s")
    return {
        name: _resolve_extends(name, user, shipped, singular) for name in sorted({*shipped, *user})
    }


# ---------------------------------------------------------------------------------------------
# Raw tables -> typed presets


def _need(table: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    """``table[key]`` checked for type (bool is not a number here), or a ConfigError."""
    value = table.get(key)
    numeric = kinds in (float, (int, float)) or kinds is int
    if value is None or not isinstance(value, kinds) or (numeric and isinstance(value, bool)):
        raise ConfigError(
            f"preset value {key!r} is missing or not a {getattr(kinds, '__name__', kinds)}",
            where=where,
            evidence=[f"{key} = {value!r}"],
        )
    return value


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"preset has no [{key}] table", where=where)
    return value


def _gpu_from_raw(raw: _RawPreset) -> GpuPreset:
    where = display_path(raw.path)
    gpu = _table(raw.data, "gpu", where)
    num = (int, float)
    vram_gb = float(_need(gpu, "vram_gb", num, where))
    speed_table = _table(raw.data, "speed", where)
    speeds = {
        model: Speed(
            float(_need(s, "step_overhead_s", num, f"{where} [speed.{model}]")),
            float(_need(s, "s_per_image", num, f"{where} [speed.{model}]")),
        )
        for model, s in speed_table.items()
        if isinstance(s, dict)
    }
    low, high = (float(x) for x in _need(gpu, "price_range", list, where)[:2])
    return GpuPreset(
        name=raw.name,
        title=str(gpu.get("title", raw.name)),
        vram_gb=vram_gb,
        arch=str(gpu.get("arch", "unknown")),
        bf16=bool(_need(gpu, "bf16", bool, where)),
        price_per_hour=float(_need(gpu, "price_per_hour", num, where)),
        price_range=(low, high),
        relative_speed=float(gpu.get("relative_speed", 1.0)),
        match=tuple(str(m) for m in gpu.get("match", [])),
        speed=speeds,
        path=where,
        sources=raw.comments,
        skypilot=str(gpu.get("skypilot", "")),
    )


def _settings(
    table: Mapping[str, Any], origin: str, comments: Mapping[str, str], prefix: str
) -> tuple[Setting, ...]:
    return tuple(
        Setting(key, value, origin, comments.get(f"{prefix}{key}", ""))
        for key, value in table.items()
        if not isinstance(value, dict)
    )


def _model_from_raw(raw: _RawPreset) -> ModelPreset:
    where = display_path(raw.path)
    model = _table(raw.data, "model", where)
    family = str(_need(model, "family", str, where))
    if family not in FAMILIES:
        raise ConfigError(
            f"unknown model family {family!r}",
            where=where,
            hint=did_you_mean(family, FAMILIES) or f"one of: {', '.join(FAMILIES)}",
        )
    if "base_model" in model:
        raise ConfigError(
            "[model] base_model is now [files.base]",
            where=where,
            hint='[files.base] with repo = "owner/repo" and file = "<file>.safetensors" '
            '(file = "" for a whole Diffusers repo)',
        )
    vram = _table(raw.data, "vram", where)
    return ModelPreset(
        name=raw.name,
        title=str(model.get("title", raw.name)),
        family=family,
        dataset=_table(raw.data, "dataset", where),
        train=_settings(
            _table(raw.data, "train", where), f"model {raw.name}", raw.comments, "train."
        ),
        vram=_vram_model(vram, f"{where} [vram]"),
        path=where,
        sources=raw.comments,
        files=_model_files(raw.data.get("files", {}), FAMILIES[family], where),
        sample=_sample(raw.data.get("sample", {}), where),
        plan=_plan_numbers(raw.data.get("plan", {}), where),
    )


_VRAM_REQUIRED = (
    "base_gb",
    "text_encoder_gb",
    "per_image_gb",
    "per_image_checkpointed_gb",
    "model_download_gb",
    "lora_mb_per_dim",
)


def _vram_model(vram: Mapping[str, Any], where: str) -> VramModel:
    numbers = {k: float(_need(vram, k, (int, float), where)) for k in _VRAM_REQUIRED}
    weights = float(_need(vram, "weights_gb", (int, float), where)) if "weights_gb" in vram else 0
    blocks = int(_need(vram, "block_count", int, where)) if "block_count" in vram else 0
    return VramModel(**numbers, weights_gb=weights, block_count=blocks)


def _model_files(table: Any, family: Family, where: str) -> dict[str, ModelFile]:
    """[files.<key>] tables: only ``base`` and the family's companion options are allowed."""
    if not isinstance(table, dict):
        raise ConfigError("[files] must be a table of [files.<name>] tables", where=where)
    allowed = ["base", *(c.key for c in family.companions)]
    out: dict[str, ModelFile] = {}
    for key, entry in table.items():
        at = f"{where} [files.{key}]"
        if key not in allowed or not isinstance(entry, dict):
            raise ConfigError(
                f"[files.{key}] is not a file the {family.name} family loads",
                where=where,
                hint=did_you_mean(key, allowed) or f"one of: {', '.join(allowed)}",
            )
        size = entry.get("size_gb")
        file = str(_need(entry, "file", str, at))
        if not file and (key != "base" or family.needs_file):
            raise ConfigError(
                f'[files.{key}] file = "" (a whole Diffusers repo) only works for an SD base model',
                where=where,
                hint=f"name the .safetensors file {family.script} loads",
            )
        out[key] = ModelFile(
            key,
            str(_need(entry, "repo", str, at)),
            file,
            float(_need(entry, "size_gb", (int, float), at)) if size is not None else None,
            bool(_need(entry, "gated", bool, at)) if "gated" in entry else False,
        )
    return out


def _plan_numbers(table: Any, where: str) -> dict[str, float]:
    if not isinstance(table, dict):
        raise ConfigError("[plan] must be a table", where=where)
    return {k: float(_need(table, k, (int, float), f"{where} [plan]")) for k in table}


def _sample(table: Any, where: str) -> SampleDefaults:
    if not isinstance(table, dict):
        raise ConfigError("[sample] must be a table", where=where)
    num = (int, float)
    at = f"{where} [sample]"
    return SampleDefaults(
        steps=int(_need(table, "steps", int, at)) if "steps" in table else None,
        cfg=float(_need(table, "cfg", num, at)) if "cfg" in table else None,
        guidance=float(_need(table, "guidance", num, at)) if "guidance" in table else None,
    )


def _rules_from_raw(data: Mapping[str, Any], comments: Mapping[str, str], where: str) -> Rules:
    tiers: dict[str, tuple[Tier, ...]] = {}
    for model, entries in data.items():
        if not isinstance(entries, list):
            continue
        built = []
        for i, entry in enumerate(entries):
            floor = float(_need(entry, "min_vram_gb", (int, float), f"{where} [[{model}]]"))
            rest = {k: v for k, v in entry.items() if k != "min_vram_gb"}
            tier = Tier(model, floor, ())
            built.append(
                replace(tier, settings=_settings(rest, tier.label, comments, f"{model}[{i}]."))
            )
        tiers[model] = tuple(sorted(built, key=lambda t: t.min_vram_gb))
    smoke = dict(_table(data, "smoke", where))
    unset = tuple(str(k) for k in smoke.pop("unset", []))
    return Rules(
        tiers=tiers,
        precision={
            s.key: s
            for s in _settings(
                _table(data, "precision", where), "precision rule", comments, "precision."
            )
        },
        unknown_gpu={
            s.key: s
            for s in _settings(
                _table(data, "unknown_gpu", where), "unknown GPU", comments, "unknown_gpu."
            )
        },
        smoke=_settings(smoke, "smoke", comments, "smoke."),
        smoke_unset=unset,
        plan={s.key: s for s in _settings(_table(data, "plan", where), "plan", comments, "plan.")},
    )


def load_catalog(shipped_dir: Path | None = None, user_dir: Path | None = None) -> Catalog:
    """Read every preset: ``shipped_dir`` (default: the shipped presets/) and ``user_dir``
    (default: :func:`user_presets_dir`; a missing folder simply adds nothing)."""
    shipped = shipped_dir if shipped_dir is not None else presets_dir()
    user = user_dir if user_dir is not None else user_presets_dir()
    gpus = {name: _gpu_from_raw(raw) for name, raw in _layered(shipped, user, "gpus").items()}
    models = {name: _model_from_raw(raw) for name, raw in _layered(shipped, user, "models").items()}
    tiers_path = shipped / "tiers.toml"
    data, comments = read_toml(tiers_path)
    return Catalog(gpus, models, _rules_from_raw(data, comments, str(tiers_path)))


# ---------------------------------------------------------------------------------------------
# Resolving GPU x model (+ tier, precision, smoke, --set) into training options


def pick_tier(tiers: Sequence[Tier], vram_gb: float) -> Tier | None:
    """The highest tier whose floor is at or below ``vram_gb`` (the lowest tier if none is)."""
    if not tiers:
        return None
    fitting = [t for t in tiers if t.min_vram_gb <= vram_gb]
    return fitting[-1] if fitting else tiers[0]


def _dataset_settings(model: ModelPreset) -> tuple[Setting, ...]:
    origin = f"model {model.name}"
    keys = ("enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")
    resolution = Setting(
        "resolution",
        str(model.resolution),  # a string in --config_file: an int crashes (docs/sources.md [2])
        origin,
        model.sources.get("dataset.resolution", ""),
    )
    rest = tuple(
        Setting(k, model.dataset[k], origin, model.sources.get(f"dataset.{k}", ""))
        for k in keys
        if k in model.dataset
    )
    return (resolution, *rest)


def _precision(rules: Rules, gpu: GpuPreset) -> Setting:
    rule = rules.precision["with_bf16" if gpu.bf16 else "without_bf16"]
    return Setting(
        "mixed_precision",
        rule.value,
        f"gpu {gpu.name} (bf16 = {str(gpu.bf16).lower()})",
        rule.source,
    )


def _apply(acc: dict[str, Setting], settings: Iterable[Setting]) -> None:
    for setting in settings:
        acc[setting.key] = setting


def resolve(
    catalog: Catalog,
    gpu: str,
    model: str,
    *,
    vram_gb: float | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
    smoke: bool = False,
) -> Resolved:
    """Combine model defaults < VRAM tier < GPU precision < smoke < ``--set`` into options."""
    g = catalog.gpu(gpu, vram_gb)
    m = catalog.model(model)
    rules = catalog.rules
    tier = pick_tier(rules.tiers.get(m.name) or rules.tiers.get(m.family, ()), g.vram_gb)
    acc: dict[str, Setting] = {}
    _apply(acc, m.train)
    _apply(acc, _dataset_settings(m))
    if tier is not None:
        _apply(acc, tier.settings)
    _apply(acc, [_precision(rules, g)])
    if smoke:
        known = arguments(m.script)  # the smoke table is shared: skip SDXL-only keys for SD1/2
        _apply(acc, (s for s in rules.smoke if s.key in known))
        for key in rules.smoke_unset:
            acc.pop(key, None)
    _apply(acc, (Setting(k, v, "--set", "user override") for k, v in overrides))
    _apply(acc, _derived(acc, m, rules, {k for k, _ in overrides}))
    notes = _steps_over_epochs(acc, {k for k, _ in overrides})
    return Resolved(g, m, tier, tuple(acc.values()), notes)


def _steps_over_epochs(acc: dict[str, Setting], user_keys: set[str]) -> tuple[Finding, ...]:
    """A step count the user gave decides the length: sd-scripts would let a preset's
    max_train_epochs win and ignore it, so the preset's epochs are dropped (and that is said)."""
    if "max_train_steps" not in user_keys or "max_train_epochs" in user_keys:
        return ()
    dropped = acc.pop("max_train_epochs", None)
    if dropped is None:
        return ()
    steps = acc["max_train_steps"].value
    return (
        Finding(
            "note",
            "epochs-dropped",
            "max_train_epochs",
            f"max_train_epochs = {dropped.value} ({dropped.origin}) dropped: your "
            f"max_train_steps = {steps} decides the length (sd-scripts lets epochs win when both "
            "are set)",
            "set max_train_epochs too to train by epochs instead",
        ),
    )


def _derived(
    acc: Mapping[str, Setting], model: ModelPreset, rules: Rules, user_keys: set[str]
) -> list[Setting]:
    """Rules that follow from the final precision: SDXL in fp16 needs no_half_vae."""
    precision = acc.get("mixed_precision")
    if (
        model.family != "sdxl"
        or precision is None
        or precision.value != "fp16"
        or "no_half_vae" in user_keys
    ):
        return []
    rule = rules.precision["sdxl_fp16_no_half_vae"]
    return [Setting("no_half_vae", bool(rule.value), "precision rule (SDXL + fp16)", rule.source)]


def parse_override(text: str, script: str = "train_network.py") -> tuple[str, Any]:
    """``key=value`` from ``--set``: the value as a TOML literal (``16``, ``1e-4``, ``true``,
    ``["a=1"]``), or as text when it is not one. Options sd-scripts reads as strings
    (``resolution``, ``face_crop_aug_range``, ...) keep the text: ``resolution=768`` gives
    ``"768"``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--set needs key=value, got {text!r}", hint="e.g. --set network_dim=16")
    raw = raw.strip()
    literal = _toml_literal(raw)
    arg = arguments(script).get(key)
    if arg is not None and arg.type in ("str", "pathlib.Path") and not arg.is_list:
        return key, literal if isinstance(literal, str) and raw[:1] in "\"'" else raw
    return key, literal


def parse_overrides(texts: Iterable[str], script: str) -> tuple[tuple[str, Any], ...]:
    """Every ``--set key=value`` parsed (see :func:`parse_override`) and its key checked against
    ``script``'s options: the one path ``presets show``, ``plan``, ``config render`` and
    ``train`` take, so a key one of them refuses is refused by all (issue #12)."""
    from kohyawrap.validate import check_keys

    overrides = tuple(parse_override(text, script) for text in texts)
    problems = check_keys([key for key, _ in overrides], script=script)
    if problems:
        raise UsageError(
            f"--set names {len(problems)} option(s) {script} does not have",
            evidence=[f"--set {f.subject}: {f.message}" for f in problems],
            hint=problems[0].hint,
        )
    return overrides


def refuse_bad_overrides(resolved: Resolved, overrides: Sequence[tuple[str, Any]]) -> None:
    """Raise UsageError when a ``--set`` value is one sd-scripts would reject or misread (the
    same checks ``config render`` runs over the whole config)."""
    from kohyawrap.validate import check_settings

    keys = {key for key, _ in overrides}
    bf16 = resolved.gpu.bf16 if resolved.gpu.known else None
    errors = [
        f
        for f in check_settings(resolved.values(), script=resolved.script, bf16_supported=bf16)
        if f.severity == "error" and f.subject in keys
    ]
    if errors:
        raise UsageError(
            f"{len(errors)} --set value(s) would not train as intended",
            evidence=[f"--set {f.subject}: {f.message}" for f in errors],
            hint=errors[0].hint,
        )


def _toml_literal(raw: str) -> Any:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        return tomlkit.parse(f"v = {raw}\n").unwrap()["v"]
    except (TOMLKitError, ValueError, KeyError):
        return raw


def match_gpu(name: str | None, vram_gb: float | None, *, catalog: Catalog | None = None) -> str:
    """The preset for a GPU as nvidia-smi names it ("NVIDIA GeForce RTX 4090"), else "vram-<N>"
    from its memory. A named card whose preset has more memory than ``vram_gb`` is not matched
    (the 8 GB RTX 4060 Ti is not the 16 GB preset)."""
    catalog = catalog if catalog is not None else load_catalog()
    if name:
        for preset in sorted(catalog.gpus.values(), key=lambda g: g.name):
            matches = any(re.search(p, name, re.IGNORECASE) for p in preset.match)
            # nvidia-smi reports a little less than the label (an L4 shows ~22.5 GiB of 24 GB).
            if matches and (vram_gb is None or preset.vram_gb <= vram_gb * 1.1):
                return preset.name
    if vram_gb is None:
        raise UsageError(
            f"cannot tell which GPU preset fits {name!r}", hint="pass --gpu NAME or --vram N"
        )
    return f"vram-{math.floor(vram_gb):d}"
