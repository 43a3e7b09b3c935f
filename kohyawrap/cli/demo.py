"""``kohyawrap demo``: the whole local path on a fresh machine, no GPU and no network needed."""

from __future__ import annotations

from pathlib import Path

import click

DEMO_GPU = "rtx4090"
DEMO_MODEL = "sd15"
DEMO_TRIGGER = "zkw robot"  # a rare token for the example's red toy robot
DEMO_CLASS = "robot"


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("demo_out"),
    show_default=True,
    help="Folder for the demo's photos, dataset and config.",
)
@click.option("--force", is_flag=True, help="Rebuild into an output folder that already has files.")
def demo(output: Path, force: bool) -> None:
    """Build the bundled example dataset, render its config and print the plan.

    \b
    Example:
      kohyawrap demo -o ./demo_out
    \b
    It writes ./demo_out/photos (8 synthetic photos), ./demo_out/training_data (the sd-scripts
    dataset), ./demo_out/my_lora (training_config.toml, sample_prompts.txt, launch.sh), then plans
    the run on an RTX 4090 and compares every GPU preset.
    """
    from kohyawrap.cli.config import with_dataset_subjects, write_run_files
    from kohyawrap.console import stdout
    from kohyawrap.console.config import show_rendered
    from kohyawrap.console.forecast import show_compare, show_forecast
    from kohyawrap.dataset.build import BuildRequest, build_dataset
    from kohyawrap.dataset.example import make_example_photos
    from kohyawrap.dataset.scan import read_training_dir
    from kohyawrap.errors import UsageError
    from kohyawrap.forecast import build_forecast, compare_forecasts
    from kohyawrap.models import RunSpec
    from kohyawrap.presets import load_catalog
    from kohyawrap.render import findings

    if output.exists() and any(output.iterdir()) and not force:
        raise UsageError(
            f"{output} already has files",
            hint="pass --force to rebuild the demo there, or -o another folder",
        )
    con = stdout()
    photos = make_example_photos(output / "photos")
    con.print(f"1. example photos: {photos}")
    data = output / "training_data"
    request = BuildRequest(
        inputs=(photos,),
        output=data,
        triggers=(DEMO_TRIGGER,),
        model=DEMO_MODEL,
        class_words=(DEMO_CLASS,),
        force=force,
    )
    built = build_dataset(request)
    con.print(f"2. dataset: {data} ({len(built.outcomes)} images; report {built.report_path})")
    run_dir = output / "my_lora"
    spec = RunSpec(
        gpu=DEMO_GPU,
        model=DEMO_MODEL,
        base_model="runwayml/stable-diffusion-v1-5",
        output_name="my_lora",
        train_data_dir="../training_data",
    )
    tdir = read_training_dir(data)
    spec = with_dataset_subjects(spec, tdir)
    catalog = load_catalog()
    plan = build_forecast(spec, tdir, catalog=catalog)
    written = write_run_files(run_dir, plan.rendered.files, force=force)
    con.print("3. config:")
    notes = findings(plan.rendered, catalog=catalog)
    show_rendered(run_dir, plan.rendered, written, notes, dataset_found=True)
    con.print("4. plan:")
    show_forecast(plan)
    show_compare(compare_forecasts(spec, tdir, catalog=catalog), current=DEMO_GPU)
    con.print(
        "Next: rent a GPU and run `kohyawrap train --host ... --gpu auto --model sd15 "
        f"--dataset {data} --base-model runwayml/stable-diffusion-v1-5 --name my_lora`, or run {run_dir / 'launch.sh'} where sd-scripts is."
    )
