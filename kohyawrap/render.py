"""Render a run's files from a RunSpec: training_config.toml, dataset_config.toml (optional),
sample_prompts.txt and launch.sh.

Values reach TOML only through the ``toml`` filter (tomlkit), the shell script only through ``q``
(shlex); templates use StrictUndefined. The training config is parsed back and validated before
it is returned, and the same spec always gives the same bytes. Pure apart from reading templates.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from kohyawrap import __version__
from kohyawrap.errors import ConfigError, UsageError
from kohyawrap.models import Finding, RenderedRun, RunSpec
from kohyawrap.presets import (
    Catalog,
    Resolved,
    SampleDefaults,
    Setting,
    load_catalog,
    parse_override,
    resolve,
)
from kohyawrap.prompts import PROMPT_FILES, generated_prompts
from kohyawrap.resources import templates_dir
from kohyawrap.sdscripts import PINNED_COMMIT
from kohyawrap.validate import check_dataset_config, check_settings, flatten

if TYPE_CHECKING:
    import jinja2

    from kohyawrap.dataset.scan import TrainingDir

__all__ = [
    "parse_override",
    "render_run",
    "resolve_spec",
    "toml_value",
]  # parse_override: for --set

TRAINING_CONFIG = "training_config.toml"
DATASET_CONFIG = "dataset_config.toml"
SAMPLE_PROMPTS = "sample_prompts.txt"
LAUNCH = "launch.sh"
DEFAULT_WORK_DIR = "$HOME/kohyawrap"  # the launcher's default --work-dir, as launch.sh spells it


def sd_scripts_checkout(work_dir: str = DEFAULT_WORK_DIR, ref: str = PINNED_COMMIT) -> str:
    """Where the launcher keeps sd-scripts at ``ref`` under ``work_dir`` (its remote layout)."""
    return f"{work_dir.rstrip('/')}/sd-scripts/{ref}"


DEFAULT_SD_SCRIPTS = sd_scripts_checkout()


def _double_quoted(path: str) -> str:
    """``path`` for the inside of ``"${SD_SCRIPTS:-...}"``: a leading ``$HOME/`` expands, every
    other character is literal (a work dir named ``a $(b)`` is a name, never a command)."""
    home = path.startswith("$HOME/")
    rest = path[len("$HOME/") :] if home else path
    escaped = re.sub(r'([\\$`"}])', r"\\\1", rest)
    return ("$HOME/" if home else "") + escaped


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

# Where each option is written (sections are for people; sd-scripts flattens them).
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "model",
        (
            "pretrained_model_name_or_path",
            "model_type",
            "clip_l",
            "clip_g",
            "t5xxl",
            "ae",
            "v2",
            "v_parameterization",
            "vae",
            "no_half_vae",
            "tokenizer_cache_dir",
        ),
    ),
    (
        "dataset",
        (
            "train_data_dir",
            "reg_data_dir",
            "dataset_config",
            "resolution",
            "enable_bucket",
            "min_bucket_reso",
            "max_bucket_reso",
            "bucket_reso_steps",
            "bucket_no_upscale",
            "caption_extension",
            "train_batch_size",
            "cache_latents",
            "cache_latents_to_disk",
            "cache_text_encoder_outputs",
            "cache_text_encoder_outputs_to_disk",
            "max_data_loader_n_workers",
        ),
    ),
    (
        "network",
        (
            "network_module",
            "network_dim",
            "network_alpha",
            "network_args",
            "network_train_unet_only",
            "network_dropout",
        ),
    ),
    (
        "optimizer",
        (
            "optimizer_type",
            "optimizer_args",
            "learning_rate",
            "unet_lr",
            "text_encoder_lr",
            "lr_scheduler",
            "lr_warmup_steps",
            "lr_scheduler_num_cycles",
        ),
    ),
    (
        "training",
        (
            "max_train_epochs",
            "max_train_steps",
            "gradient_accumulation_steps",
            "mixed_precision",
            "gradient_checkpointing",
            "sdpa",
            "xformers",
            "seed",
        ),
    ),
    (
        "saving",
        (
            "output_dir",
            "output_name",
            "save_model_as",
            "save_precision",
            "save_every_n_epochs",
            "save_every_n_steps",
            "save_state",
        ),
    ),
    ("sampling", ("sample_prompts", "sample_every_n_epochs", "sample_sampler")),
    ("logging", ("logging_dir", "log_with", "log_prefix")),
)
_GROUP_SECTION = {
    "add_dataset_arguments": "dataset",
    "add_optimizer_arguments": "optimizer",
    "add_sd_models_arguments": "model",
}
# Options that move into dataset_config.toml [general] when one is used
# (training option name -> dataset config name).
DATASET_KEYS = {
    "resolution": "resolution",
    "enable_bucket": "enable_bucket",
    "min_bucket_reso": "min_bucket_reso",
    "max_bucket_reso": "max_bucket_reso",
    "bucket_reso_steps": "bucket_reso_steps",
    "bucket_no_upscale": "bucket_no_upscale",
    "caption_extension": "caption_extension",
    "train_batch_size": "batch_size",
}


def toml_value(value: Any) -> str:
    """A value as a TOML literal (the templates' ``toml`` filter)."""
    import tomlkit

    text: str = tomlkit.item(value).as_string()
    return text


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - TOML and shell, not HTML; values go through toml/q filters
    )
    env.filters["toml"] = toml_value
    env.filters["toml_key"] = _toml_key
    env.filters["q"] = lambda value: shlex.quote(str(value))
    env.filters["join_q"] = lambda values: " ".join(shlex.quote(str(v)) for v in values)
    return env


# ---------------------------------------------------------------------------------------------
# From spec to options


def resolve_spec(spec: RunSpec, catalog: Catalog | None = None) -> Resolved:
    """The spec's GPU x model presets with tier, precision, smoke and ``--set`` applied."""
    return resolve(
        catalog if catalog is not None else load_catalog(),
        spec.gpu,
        spec.model,
        vram_gb=spec.vram_gb,
        overrides=spec.overrides,
        smoke=spec.smoke,
    )


def _run_rows(spec: RunSpec) -> list[Setting]:
    """Options that come from the run itself (paths, names), written exactly as given."""
    rows = [
        ("pretrained_model_name_or_path", spec.base_model),
        *spec.companions,  # clip_l / clip_g / t5xxl / ae paths, as given
        ("train_data_dir", spec.train_data_dir),
        ("reg_data_dir", spec.reg_data_dir),
        ("tokenizer_cache_dir", spec.tokenizer_cache_dir),
        (
            "caption_extension",
            spec.caption_extension,
        ),  # always explicit: sd-scripts defaults to .caption
        ("output_dir", spec.output_dir),
        ("output_name", spec.output_name),
        ("logging_dir", spec.logging_dir),
    ]
    return [Setting(key, value, "run") for key, value in rows if value is not None]


def run_settings(spec: RunSpec, resolved: Resolved) -> dict[str, Setting]:
    """Every option of the run, by key: presets, then the run's paths (``--set`` still wins)."""
    acc = {s.key: s for s in resolved.settings}
    for row in _run_rows(spec):
        if acc.get(row.key, row).origin != "--set":
            acc[row.key] = row
    sampling = acc.get("sample_every_n_epochs")
    on = sampling is not None and isinstance(sampling.value, int) and sampling.value > 0
    user_prompts = _user_prompts(spec, acc)
    if user_prompts and not on:
        state = f"{sampling.value} ({sampling.origin})" if sampling else "not set"
        raise UsageError(
            f"your sample prompts would never be used: sample_every_n_epochs is {state}",
            hint="--set sample_every_n_epochs=2 (each round of samples costs time: see "
            "`kohyawrap plan`)",
        )
    if on:
        acc["sample_prompts"] = Setting(
            "sample_prompts", user_prompts or SAMPLE_PROMPTS, "--set" if user_prompts else "run"
        )
    else:
        # sd-scripts disables sampling at <= 0 but warns; leaving the keys out is quiet.
        for key in ("sample_every_n_epochs", "sample_sampler", "sample_prompts"):
            acc.pop(key, None)
    acc.update(scaled_learning_rates(spec, acc))
    return acc


def _user_prompts(spec: RunSpec, acc: Mapping[str, Setting]) -> str | None:
    """The name of the user's prompt file in the run, or None. A prompt file path that reached
    the options unread would point at the laptop: refused rather than silently replaced."""
    given = acc.get("sample_prompts")
    if given is not None and given.origin == "--set" and spec.sample_prompts_text is None:
        raise UsageError(
            f"sample_prompts = {given.value!r} names a file on this machine, which the run "
            "never reads: the file must be read and copied into the run",
            hint="pass it with --set sample_prompts=FILE to config render, plan or train",
        )
    if spec.sample_prompts_text is None:
        return None
    if spec.sample_prompts_file not in PROMPT_FILES:
        raise UsageError(
            f"sample prompts file name {spec.sample_prompts_file!r} is not one of "
            f"{', '.join(PROMPT_FILES)}"
        )
    return spec.sample_prompts_file


def _split_dataset(acc: dict[str, Setting], use_dataset_config: bool) -> dict[str, Any]:
    """Move dataset options into dataset_config's [general] (when used); return that table."""
    if not use_dataset_config:
        return {}
    general = {DATASET_KEYS[k]: acc.pop(k).value for k in list(acc) if k in DATASET_KEYS}
    for key in ("train_data_dir", "reg_data_dir"):
        acc.pop(key, None)
    acc["dataset_config"] = Setting("dataset_config", DATASET_CONFIG, "run")
    if isinstance(general.get("resolution"), str):
        width, _, height = general["resolution"].partition(",")
        # In a dataset config resolution is a number or [w, h]; in --config_file a string
        # (docs/sources.md [2]).
        general["resolution"] = [int(width), int(height)] if height else int(width)
    return general


def _section_of(key: str, script_args: Mapping[str, Any]) -> str:
    for name, keys in SECTIONS:
        if key in keys:
            return name
    group = str(getattr(script_args.get(key), "group", ""))
    return next((s for g, s in _GROUP_SECTION.items() if group.endswith(g)), "training")


def _sections(acc: Mapping[str, Setting], script: str) -> list[dict[str, Any]]:
    from kohyawrap.sdscripts import arguments

    args = arguments(script)
    out = []
    for name, keys in SECTIONS:
        listed = [acc[k] for k in keys if k in acc]
        extra = sorted(
            (s for k, s in acc.items() if k not in keys and _section_of(k, args) == name),
            key=lambda s: s.key,
        )
        rows = listed + extra
        if rows:
            out.append(
                {
                    "name": name,
                    "rows": [{"key": r.key, "value": r.value, "origin": r.origin} for r in rows],
                }
            )
    return out


def _validate(acc: Mapping[str, Setting], resolved: Resolved) -> None:
    """Raise ConfigError with every error finding (tagged with where the value came from)."""
    flat = {k: s.value for k, s in acc.items()}
    bf16 = resolved.gpu.bf16 if resolved.gpu.known else None
    errors = [
        f
        for f in check_settings(flat, script=resolved.script, bf16_supported=bf16)
        if f.severity == "error"
    ]
    if errors:
        raise _config_error(errors, acc, f"{resolved.gpu.name} x {resolved.model.name}")


def _config_error(errors: Sequence[Finding], acc: Mapping[str, Setting], what: str) -> ConfigError:
    def origin(f: Finding) -> str:
        setting = acc.get(f.subject or "")
        return f" (from {setting.origin})" if setting is not None else ""

    def fix(f: Finding) -> str:
        return f" (fix: {f.hint})" if f.hint and len(errors) > 1 else ""

    return ConfigError(
        f"the options for {what} would not train as intended",
        evidence=[f"{f.subject}{origin(f)}: {f.message}{fix(f)}" for f in errors],
        hint=errors[0].hint,
    )


# ---------------------------------------------------------------------------------------------
# The other files


def _subsets(spec: RunSpec, tdir: TrainingDir) -> list[list[tuple[str, Any]]]:
    """One dataset_config subset per concept folder (image_dir relative like train_data_dir)."""
    out = []
    for subset in tdir.subsets:
        base = spec.reg_data_dir if subset.is_reg and spec.reg_data_dir else spec.train_data_dir
        rows: list[tuple[str, Any]] = [
            ("image_dir", posixpath.join(base, subset.folder)),
            ("num_repeats", subset.repeats),
            ("class_tokens", subset.class_tokens),
        ]
        if subset.is_reg:
            rows.append(("is_reg", True))
        out.append(rows)
    return out


def _prompts(spec: RunSpec) -> list[str]:
    """Sample prompts from the spec alone, so a recorded spec re-renders byte for byte."""
    return generated_prompts(tuple(spec.prompt_subjects), spec.output_name)


def _size(acc: Mapping[str, Setting], general: Mapping[str, Any]) -> tuple[int, int]:
    value = general.get("resolution", acc["resolution"].value if "resolution" in acc else 512)
    if isinstance(value, list):
        return int(value[0]), int(value[1])
    width, _, height = str(value).partition(",")
    return int(width), int(height or width)


def _sample_prompts(
    env: jinja2.Environment, prompts: list[str], size: tuple[int, int], sample: SampleDefaults
) -> str:
    return env.get_template("sample_prompts.txt.j2").render(
        version=__version__,
        prompts=prompts,
        negative="lowres, blurry, bad anatomy",  # estimate: a common short negative prompt
        width=size[0],
        height=size[1],
        # estimate: a usual CFG scale for SD1.5/SDXL; DiT presets name theirs in [sample]
        cfg=f"{sample.cfg:g}" if sample.cfg is not None else "7",
        guidance=f"{sample.guidance:g}" if sample.guidance is not None else None,  # FLUX.1 --g
        steps=sample.steps or 28,  # 28 must match [plan] sample_steps in presets/tiers.toml
    )


def accelerate_args(
    mixed_precision: str, *, cpu: bool, processes: int = 1, machines: int = 1
) -> tuple[str, ...]:
    """Options of ``accelerate launch``, all explicit: no guessed defaults (docs/sources.md [43]).

    ``processes`` is the total over all ``machines`` (one per GPU): above 1 the job is launched
    with ``--multi_gpu`` (accelerate's data-parallel training, docs/scale.md).
    """
    if processes < 1 or machines < 1 or processes % machines:
        raise UsageError(
            f"{processes} training process(es) cannot be spread evenly over {machines} machine(s)"
        )
    if cpu and processes > 1:
        raise UsageError(
            "training on the CPU runs one process: --multi-gpu needs GPUs",
            hint="leave --multi-gpu out for a CPU (smoke) run",
        )
    args: tuple[str, ...] = (
        "--num_processes", str(processes), "--num_machines", str(machines),
        "--mixed_precision", mixed_precision,
        "--dynamo_backend", "no", "--num_cpu_threads_per_process", "2",
    )  # fmt: skip
    if processes > 1:
        args = ("--multi_gpu", *args)
    return ("--cpu", *args) if cpu else args


# The learning rates --scale-lr multiplies (sd-scripts' option names).
_LEARNING_RATES = ("learning_rate", "unet_lr", "text_encoder_lr")


def scaled_learning_rates(spec: RunSpec, acc: Mapping[str, Setting]) -> dict[str, Setting]:
    """``--scale-lr``: each learning rate in effect times the number of processes (the linear
    scaling rule for an N-times larger batch); sd-scripts itself leaves them as given."""
    if not spec.scale_lr or spec.processes <= 1:
        return {}
    scaled = {}
    for key in _LEARNING_RATES:
        setting = acc.get(key)
        if setting is None or setting.value is None:
            continue
        value = setting.value
        if isinstance(value, list):
            new: Any = [v * spec.processes for v in value]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            new = float(value) * spec.processes
        else:
            continue
        source = f"{value} ({setting.origin}) x {spec.processes} processes"
        scaled[key] = Setting(key, new, "--scale-lr", source)
    return scaled


_LATER_SPEC_FIELDS = ("prompt_subjects", "sample_prompts_file", "sample_prompts_text", "companions")
# Later fields whose default is not empty: left out of the hash (and the record) at that default.
LATER_SPEC_DEFAULTS: dict[str, Any] = {"processes": 1, "scale_lr": False, "machines": 1}


def inputs_hash(
    spec: RunSpec, acc: Mapping[str, Setting], general: Mapping[str, Any], extra: Any
) -> str:
    """sha256 (16 hex digits) of everything that decides the files: tool version, spec, options."""
    spec_data = asdict(spec)
    spec_data["overrides"] = [list(pair) for pair in spec.overrides]
    # Fields added after a spec format was recorded count only when used, so a spec that does not
    # use them hashes as before and recorded runs still reproduce byte for byte.
    for key in _LATER_SPEC_FIELDS:
        if not spec_data.get(key):
            spec_data.pop(key, None)
    for key, default in LATER_SPEC_DEFAULTS.items():
        if spec_data.get(key) == default:
            spec_data.pop(key, None)
    data = {
        "version": __version__,
        "spec": spec_data,
        "settings": [[s.key, s.value, s.origin] for s in acc.values()],
        "general": general,
        "extra": extra,
    }
    text = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The whole run


def _launch(
    common: dict[str, str], launch_args: tuple[str, ...], script: str, sd_scripts: str
) -> str:
    return (
        _environment()
        .get_template("launch.sh.j2")
        .render(
            **common,
            commit=PINNED_COMMIT,
            default_sd_scripts=_double_quoted(sd_scripts),
            accelerate_args=launch_args,
            script=script,
            config_file=TRAINING_CONFIG,
        )
    )


def relaunch(
    rendered: RenderedRun, sd_scripts: str, *, catalog: Catalog | None = None
) -> RenderedRun:
    """``rendered`` with its launch.sh pointing at the checkout ``sd_scripts`` (a run's own:
    its --work-dir and commit); every other file is unchanged."""
    resolved = resolve_spec(rendered.spec, catalog)
    common = {
        "version": __version__,
        "gpu": resolved.gpu.name,
        "model": resolved.model.name,
        "inputs_hash": rendered.inputs_hash,
    }
    text = _launch(common, rendered.accelerate_args, rendered.script, sd_scripts)
    return replace(rendered, files=dict(sorted({**rendered.files, LAUNCH: text}.items())))


def render_run(
    spec: RunSpec,
    *,
    tdir: TrainingDir | None = None,
    catalog: Catalog | None = None,
    sd_scripts: str = DEFAULT_SD_SCRIPTS,
) -> RenderedRun:
    """Render every file of a run; raises ConfigError when the options would not train.

    ``tdir`` (the scanned dataset) is only needed when ``spec.use_dataset_config``: the dataset
    config lists its concept folders. ``sd_scripts`` is the checkout launch.sh runs by default
    (for a run: the run's own, in its --work-dir at its commit). Everything else depends on the
    spec (and presets) alone.
    """
    resolved = resolve_spec(spec, catalog)
    acc = run_settings(spec, resolved)
    general = _split_dataset(acc, spec.use_dataset_config)
    _validate(acc, resolved)
    if spec.use_dataset_config and tdir is None:
        raise UsageError(
            "a dataset config lists the concept folders: it needs the scanned dataset folder"
        )
    subsets = _subsets(spec, tdir) if spec.use_dataset_config and tdir is not None else []
    user_prompts = acc["sample_prompts"].origin == "--set" if "sample_prompts" in acc else False
    prompts = _prompts(spec) if "sample_prompts" in acc and not user_prompts else []
    digest = inputs_hash(spec, acc, general, {"subsets": subsets})
    mixed = str(acc["mixed_precision"].value) if "mixed_precision" in acc else "no"
    launch_args = accelerate_args(
        mixed,
        cpu=spec.smoke if spec.cpu is None else spec.cpu,
        processes=spec.processes,
        machines=spec.machines,
    )
    common = {
        "version": __version__,
        "gpu": resolved.gpu.name,
        "model": resolved.model.name,
        "inputs_hash": digest,
    }
    env = _environment()
    tier = resolved.tier.label if resolved.tier else ""
    files = {
        TRAINING_CONFIG: env.get_template("training_config.toml.j2").render(
            **common, script=resolved.script, tier=tier, sections=_sections(acc, resolved.script)
        ),
        LAUNCH: _launch(common, launch_args, resolved.script, sd_scripts),
    }
    if prompts:
        files[SAMPLE_PROMPTS] = _sample_prompts(
            env, prompts, _size(acc, general), resolved.model.sample
        )
    if user_prompts and spec.sample_prompts_file and spec.sample_prompts_text is not None:
        files[spec.sample_prompts_file] = spec.sample_prompts_text  # byte for byte
    if spec.use_dataset_config:
        files[DATASET_CONFIG] = env.get_template("dataset_config.toml.j2").render(
            **common, general=list(general.items()), datasets=[{"subsets": subsets}]
        )
    settings = _parse_back(files, acc)
    return RenderedRun(
        spec, resolved.script, dict(sorted(files.items())), launch_args, settings, digest
    )


def _parse_back(files: Mapping[str, str], acc: Mapping[str, Setting]) -> dict[str, Any]:
    """Re-read what was rendered: it must be the options we meant, and the dataset config valid."""
    import tomlkit

    flat = flatten(tomlkit.parse(files[TRAINING_CONFIG]).unwrap())
    wanted = {k: s.value for k, s in acc.items()}
    if flat.settings != wanted or flat.findings:
        raise RuntimeError(
            f"rendered training config does not round-trip: {flat.settings} != {wanted}"
        )
    if DATASET_CONFIG in files:
        problems = [
            f
            for f in check_dataset_config(tomlkit.parse(files[DATASET_CONFIG]).unwrap())
            if f.severity == "error"
        ]
        if problems:
            raise _config_error(problems, acc, "the dataset config")
    return flat.settings


def findings(rendered: RenderedRun, *, catalog: Catalog | None = None) -> tuple[Finding, ...]:
    """The warnings and notes about a rendered run (errors were raised while rendering)."""
    resolved = resolve_spec(rendered.spec, catalog)
    bf16 = resolved.gpu.bf16 if resolved.gpu.known else None
    found = check_settings(rendered.settings, script=rendered.script, bf16_supported=bf16)
    return (
        tuple(f for f in found if f.severity != "error")
        + resolved.notes
        + _prompt_findings(rendered)
    )


def _prompt_findings(rendered: RenderedRun) -> tuple[Finding, ...]:
    spec = rendered.spec
    if rendered.files.get(SAMPLE_PROMPTS) is None or spec.prompt_subjects:
        return ()
    if spec.sample_prompts_text is not None:
        return ()
    return (
        Finding(
            "warning",
            "prompts-without-trigger",
            "sample_prompts",
            "no trigger word known (no --trigger, and no dataset folder to read it from): the "
            f"sample prompts name the LoRA's file name {spec.output_name!r}, which it never learned",
            'pass --trigger "sks" --class-word dog, or --set sample_prompts=FILE',
        ),
    )


def dataset_options(rendered: RenderedRun) -> dict[str, Any]:
    """The dataset-level options in effect (training config, or the dataset config's [general]
    under the training option names): resolution, buckets, train_batch_size, caption_extension."""
    import tomlkit

    options = dict(rendered.settings)
    if DATASET_CONFIG in rendered.files:
        general = tomlkit.parse(rendered.files[DATASET_CONFIG]).unwrap().get("general", {})
        back = {v: k for k, v in DATASET_KEYS.items()}
        options.update({back[k]: v for k, v in general.items() if k in back})
    return options
