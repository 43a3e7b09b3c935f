"""``kohyawrap config``: render training configs from presets, or check a hand-written one.

Also holds the options shared with ``kohyawrap plan`` (GPU, model, dataset, ``--set``) and the
RunSpec they build.
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


@click.group()
def config() -> None:
    """Render training configs from presets, or check a hand-written one.

    \b
    Examples:
      kohyawrap config render --gpu rtx4090 --model sd15 --dataset ./training_data -o ./my_lora
      kohyawrap config render --gpu rtx4090 --model flux-dev --dataset ./training_data -o ./flux
      kohyawrap config check training_config.toml --model sdxl
    """


@config.command()
@run_options
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write the run's files into.",
)
@click.option("--force", is_flag=True, help="Overwrite files there that differ.")
@click.option(
    "--work-dir",
    default="~/kohyawrap",
    show_default=True,
    help="launch.sh runs sd-scripts from <work-dir>/sd-scripts/<ref>, as `train` lays it out.",
)
@click.option(
    "--sd-scripts-ref",
    default=None,
    help="The sd-scripts commit launch.sh runs (default: the one kohyawrap is pinned to).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def render(
    output: Path,
    force: bool,
    work_dir: str,
    sd_scripts_ref: str | None,
    as_json: bool,
    **params: Any,
) -> None:
    """Write training_config.toml, sample_prompts.txt, launch.sh (and dataset_config.toml).

    \b
    Example:
      kohyawrap config render --gpu rtx4090 --model sd15 --dataset ./training_data \\
          --base-model stable-diffusion-v1-5/stable-diffusion-v1-5 --name my_lora -o ./my_lora \\
          --set network_dim=16 --set sample_prompts=./my_prompts.txt --trigger sks --class-word dog
      kohyawrap config render --gpu rtx3090 --model flux-dev --dataset ./training_data \\
          --t5xxl /data/models/t5xxl_fp8_e4m3fn.safetensors -o ./flux_lora

    Relative --dataset (and --clip-l/--clip-g/--t5xxl/--ae) paths are written relative to the
    output folder, because launch.sh runs sd-scripts from there. FLUX.1, Chroma and SD3.5 load
    single files: those not given are expected in <output>/models/ (the output lists where to get
    them; `kohyawrap train` fetches them on the host itself).
    launch.sh runs the checkout `train` would use (<work-dir>/sd-scripts/<ref>); SD_SCRIPTS=...
    overrides it when you run it.
    """
    from kohyawrap.models_fetch import render_downloads
    from kohyawrap.presets import load_catalog
    from kohyawrap.render import findings, render_run

    catalog = load_catalog()
    model = catalog.model(params["model"])
    spec = build_spec(params, output, model)
    downloads = render_downloads(model, given_files(params, output))
    tdir = scan_dataset(params, required=spec.use_dataset_config)
    spec = with_dataset_subjects(spec, tdir)
    rendered = render_run(
        spec, tdir=tdir, catalog=catalog, sd_scripts=launch_checkout(work_dir, sd_scripts_ref)
    )
    written = write_run_files(output, rendered.files, force=force)
    notes = findings(rendered, catalog=catalog)
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(
            {
                "output": str(output),
                "files": written,
                "inputs_hash": rendered.inputs_hash,
                "findings": [f.to_json() for f in notes],
                "dataset_found": tdir is not None,
                "downloads": downloads,
            }
        )
        return
    from kohyawrap.console.config import show_rendered

    show_rendered(
        output, rendered, written, notes, dataset_found=tdir is not None, downloads=downloads
    )


def launch_checkout(work_dir: str, ref: str | None) -> str:
    """The checkout launch.sh defaults to: ``~`` as ``$HOME``, so it expands where it runs."""
    from kohyawrap.render import sd_scripts_checkout
    from kohyawrap.sdscripts import PINNED_COMMIT

    if work_dir == "~" or work_dir.startswith("~/"):
        work_dir = "$HOME" + work_dir[1:]
    return sd_scripts_checkout(work_dir, ref or PINNED_COMMIT)


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


@config.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--model",
    shell_complete=model_names,
    help="Model preset the config is for (picks the script); guessed when left out.",
)
@click.option(
    "--gpu", shell_complete=gpu_names, help="GPU preset it will run on (checks bf16 support)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def check(path: Path, model: str | None, gpu: str | None, as_json: bool) -> None:
    """Check a --config_file TOML the way sd-scripts will read it; exit 2 on errors.

    \b
    Example:
      kohyawrap config check training_config.toml --model sdxl
    """
    from kohyawrap.configfile import check_config_file
    from kohyawrap.errors import ConfigError
    from kohyawrap.presets import load_catalog

    catalog = load_catalog()
    family = catalog.model(model).family if model else None
    bf16 = catalog.gpu(gpu).bf16 if gpu else None
    report = check_config_file(path, family=family, bf16_supported=bf16)
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(report.to_json())
    else:
        from kohyawrap.console.config import show_check

        show_check(report)
    if report.errors:
        raise ConfigError(
            f"{len(report.errors)} problem(s) would break this run or silently change it",
            where=str(path),
        )
