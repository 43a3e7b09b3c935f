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

if TYPE_CHECKING:
    from kohyawrap.dataset.scan import TrainingDir
    from kohyawrap.models import RunSpec

F = TypeVar("F", bound=Callable[..., Any])

# The base model a preset means when --base-model is not given (Hugging Face repo ids).
DEFAULT_BASE_MODELS = {
    "sd15": "runwayml/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}


def run_options(func: F) -> F:
    """The options that describe a run (shared by ``config render`` and ``plan``)."""
    path = click.Path(path_type=Path)
    options = [
        click.option("--gpu", help="GPU preset (kohyawrap presets list); or --vram for others."),
        click.option(
            "--vram", type=float, help="VRAM in GB: a card without a preset, or override."
        ),
        click.option("--model", required=True, help="Model preset: sd15, sd2, sdxl (or your own)."),
        click.option(
            "--dataset", required=True, type=path, help="Parent of the <repeats>_<concept> folders."
        ),
        click.option("--reg", type=path, help="Regularisation folder (default: <dataset>/reg)."),
        click.option("--base-model", help="Repo id, URL or path; default per model preset."),
        click.option("--name", default="my_lora", show_default=True, help="The LoRA's file name."),
        click.option(
            "--caption-extension",
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


def build_spec(params: dict[str, Any], run_dir: Path, script: str) -> RunSpec:
    """A RunSpec from the shared run options; paths re-based onto ``run_dir``."""
    from kohyawrap.models import RunSpec
    from kohyawrap.presets import parse_override

    dataset: Path = params["dataset"]
    reg = reg_dir(dataset, params.get("reg"))
    return RunSpec(
        gpu=gpu_name(params.get("gpu"), params.get("vram")),
        model=params["model"],
        base_model=params.get("base_model") or DEFAULT_BASE_MODELS.get(params["model"], ""),
        output_name=params["name"],
        train_data_dir=relative_to_run(dataset, run_dir),
        reg_data_dir=relative_to_run(reg, run_dir) if reg is not None else None,
        caption_extension=params["caption_extension"],
        use_dataset_config=bool(params.get("use_dataset_config")),
        overrides=tuple(parse_override(s, script) for s in params.get("sets", ())),
        smoke=bool(params.get("smoke")),
        vram_gb=params.get("vram") if params.get("gpu") else None,
    )


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
          --base-model runwayml/stable-diffusion-v1-5 --name my_lora -o ./my_lora \\
          --set network_dim=16

    Relative --dataset paths are written relative to the output folder, because launch.sh runs
    sd-scripts from there. launch.sh runs the checkout `train` would use
    (<work-dir>/sd-scripts/<ref>); SD_SCRIPTS=... overrides it when you run it.
    """
    from kohyawrap.presets import load_catalog
    from kohyawrap.render import findings, render_run

    catalog = load_catalog()
    spec = build_spec(params, output, catalog.model(params["model"]).script)
    tdir = scan_dataset(params, required=spec.use_dataset_config)
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
            }
        )
        return
    from kohyawrap.console.config import show_rendered

    show_rendered(output, rendered, written, notes, dataset_found=tdir is not None)


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
    "--model", help="Model preset the config is for (picks the script); guessed when left out."
)
@click.option("--gpu", help="GPU preset it will run on (checks bf16 support).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def check(path: Path, model: str | None, gpu: str | None, as_json: bool) -> None:
    """Check a --config_file TOML the way sd-scripts will read it; exit 2 on errors.

    \b
    Example:
      kohyawrap config check training_config.toml --model sdxl
    """
    from kohyawrap.errors import ConfigError, UsageError
    from kohyawrap.presets import load_catalog
    from kohyawrap.validate import check_config_text

    catalog = load_catalog()
    family = catalog.model(model).family if model else None
    bf16 = catalog.gpu(gpu).bf16 if gpu else None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {path}: {err}") from err
    report = check_config_text(text, family=family, bf16_supported=bf16, where=str(path))
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
