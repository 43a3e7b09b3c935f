"""``kohyawrap config``: render training configs from presets, or check a hand-written one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kohyawrap.cli.complete import gpu_names, model_names
from kohyawrap.cli.runspec import (
    build_spec,
    given_files,
    run_options,
    scan_dataset,
    with_dataset_subjects,
    write_run_files,
)

if TYPE_CHECKING:
    pass

F = TypeVar("F", bound=Callable[..., Any])


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
