"""The options that describe a run, shared by ``config render``, ``plan`` and ``demo`` (GPU, model,
dataset, ``--set``), the RunSpec they build, and writing rendered files into a folder.

A shared CLI module: command modules import from here (and options, types, complete), never from
each other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kohyawrap.cli.complete import gpu_names, model_names
from kohyawrap.cli.options import COMPANION_OPTIONS, companion_specs

if TYPE_CHECKING:
    from kohyawrap.dataset.scan import TrainingDir
    from kohyawrap.models import RunSpec
    from kohyawrap.presets import ModelPreset

F = TypeVar("F", bound=Callable[..., Any])


def run_options(func: F) -> F:
    """The options that describe a run (shared by ``config render`` and ``plan``)."""
    from kohyawrap.cli.types import CAPTION_EXTENSION, OUTPUT_NAME, VRAM_GB, WORDS

    path = click.Path(path_type=Path)
    options = [
        click.option(
            "--gpu",
            shell_complete=gpu_names,
            help="GPU preset (kohyawrap presets list); or --vram for others.",
        ),
        click.option(
            "--vram", type=VRAM_GB, help="VRAM in GB: a card without a preset, or override."
        ),
        click.option(
            "--model",
            required=True,
            shell_complete=model_names,
            help="Model preset, e.g. sdxl or flux-dev (`kohyawrap presets list`; or your own).",
        ),
        click.option(
            "--dataset", required=True, type=path, help="Parent of the <repeats>_<concept> folders."
        ),
        click.option("--reg", type=path, help="Regularisation folder (default: <dataset>/reg)."),
        click.option(
            "--base-model",
            help="Repo id, URL or path; default: the model preset's base model.",
        ),
        *(
            click.option(*decls, **attrs)
            for decls, attrs in companion_specs("default models/<the preset's file>")
        ),
        click.option(
            "--name",
            type=OUTPUT_NAME,
            default="my_lora",
            show_default=True,
            help="The LoRA's file name.",
        ),
        click.option(
            "--trigger",
            type=WORDS,
            help="Trigger word for the sample prompts (default: from the dataset's folders).",
        ),
        click.option(
            "--class-word",
            type=WORDS,
            help='Class of the subject ("dog"), beside the trigger in the sample prompts.',
        ),
        click.option(
            "--caption-extension",
            type=CAPTION_EXTENSION,
            default=".txt",
            show_default=True,
            help="Caption extension (sd-scripts' own default is .caption).",
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override an sd-scripts option (TOML literal); repeatable.",
        ),
        click.option(
            "--dataset-config",
            "use_dataset_config",
            is_flag=True,
            help="Describe the dataset in dataset_config.toml, not train_data_dir.",
        ),
        click.option("--smoke", is_flag=True, help="A few steps at 128 px that run on a CPU."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def gpu_name(gpu: str | None, vram: float | None) -> str:
    """The GPU preset to use: --gpu, or "vram-N" for --vram alone."""
    from kohyawrap.errors import UsageError

    if gpu:
        return gpu
    if vram is None:
        raise UsageError(
            "say which GPU: --gpu NAME, or --vram N for a card without a preset",
            hint="kohyawrap presets list",
        )
    return f"vram-{vram:g}"


def relative_to_run(path: Path, run_dir: Path) -> str:
    """``path`` as sd-scripts should see it from the run folder (it resolves relative paths
    against its working directory): absolute paths stay, relative ones are re-based."""
    if path.is_absolute():
        return path.as_posix()
    return Path(os.path.relpath(path.resolve(), run_dir.resolve())).as_posix()


def reg_dir(dataset: Path, reg: Path | None) -> Path | None:
    """The regularisation folder: --reg, or ``<dataset>/reg`` when the builder made one."""
    if reg is not None:
        return reg
    default = dataset / "reg"
    return default if default.is_dir() else None


def build_spec(params: dict[str, Any], run_dir: Path, model: ModelPreset) -> RunSpec:
    """A RunSpec from the shared run options for ``model`` (the catalog's preset named by
    --model); paths re-based onto ``run_dir``; a ``--set sample_prompts=FILE`` read into the spec
    (the file travels with the configs)."""
    from kohyawrap.dataset.layout import concept_name
    from kohyawrap.models import RunSpec
    from kohyawrap.models_fetch import render_paths
    from kohyawrap.prompts import parse_sets

    dataset: Path = params["dataset"]
    reg = reg_dir(dataset, params.get("reg"))
    overrides, prompts = parse_sets(params.get("sets", ()), model.script)
    trigger, class_word = params.get("trigger") or "", params.get("class_word") or ""
    subject = concept_name(trigger, class_word) if trigger else class_word
    base, companions = render_paths(model, given_files(params, run_dir))
    return RunSpec(
        gpu=gpu_name(params.get("gpu"), params.get("vram")),
        model=params["model"],
        base_model=base,
        companions=companions,
        output_name=params["name"],
        train_data_dir=relative_to_run(dataset, run_dir),
        reg_data_dir=relative_to_run(reg, run_dir) if reg is not None else None,
        caption_extension=params["caption_extension"],
        use_dataset_config=bool(params.get("use_dataset_config")),
        overrides=overrides,
        smoke=bool(params.get("smoke")),
        vram_gb=params.get("vram") if params.get("gpu") else None,
        prompt_subjects=(subject,) if subject else (),
        sample_prompts_file=prompts.name if prompts else None,
        sample_prompts_text=prompts.text if prompts else None,
    )


def with_dataset_subjects(spec: RunSpec, tdir: TrainingDir | None) -> RunSpec:
    """The spec with its sample prompts' subjects read from the dataset's concept folders, unless
    --trigger/--class-word already named them (or there is no dataset yet)."""
    from dataclasses import replace

    from kohyawrap.prompts import subjects_from_dataset

    if spec.prompt_subjects or tdir is None:
        return spec
    return replace(spec, prompt_subjects=subjects_from_dataset(tdir))


def given_files(params: dict[str, Any], run_dir: Path) -> dict[str, str | None]:
    """--base-model (as given) and the companion files (relative paths re-based onto
    ``run_dir``, like --dataset), by sd-scripts option."""
    from kohyawrap.models_fetch import BASE_KEY

    given: dict[str, str | None] = {BASE_KEY: params.get("base_model")}
    for key in COMPANION_OPTIONS:
        value = params.get(key)
        given[key] = relative_to_run(Path(value), run_dir) if value else None
    return given


def scan_dataset(params: dict[str, Any], *, required: bool) -> TrainingDir | None:
    """Read the dataset folder as sd-scripts will; None when it is missing and not required."""
    from kohyawrap.dataset.scan import read_training_dir

    dataset: Path = params["dataset"]
    if not dataset.is_dir() and not required:
        return None
    return read_training_dir(
        dataset, params["caption_extension"], reg_dir(dataset, params.get("reg"))
    )


def write_run_files(folder: Path, files: dict[str, str], *, force: bool) -> dict[str, str]:
    """Write each file atomically; an existing different file needs ``force``. Returns
    name -> "written" | "unchanged" | "replaced"."""
    from kohyawrap.errors import UsageError
    from kohyawrap.fileio import atomic_write

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder")
    status = {name: _status(folder / name, text) for name, text in files.items()}
    clashes = [name for name, s in status.items() if s == "replaced"]
    if clashes and not force:
        raise UsageError(
            f"{folder} already has different versions of these files",
            evidence=clashes,
            hint="pass --force to replace them, or choose another -o folder",
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if status[name] != "unchanged":
            atomic_write(folder / name, text, mode=0o755 if name.endswith(".sh") else 0o644)
    return status


def _status(path: Path, text: str) -> str:
    if not path.exists():
        return "written"
    try:
        same = path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        same = False
    return "unchanged" if same else "replaced"
