"""``kohyawrap demo``: the whole local path on a fresh machine, no GPU and no network needed."""

from __future__ import annotations

from pathlib import Path

import click

DEMO_GPU = "rtx4090"
DEMO_MODEL = "sd15"
DEMO_TRIGGER = "zkw robot"  # a rare token for the example's red toy robot
DEMO_CLASS = "robot"
# Left in the output folder by the demo: a later demo may replace what is in there. The demo only
# ever writes these (the build report goes beside training_data, as for any build).
MARKER = ".kohyawrap-demo"
DEMO_PARTS = ("photos", "training_data", "training_data.build.json", "my_lora")


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("demo_out"),
    show_default=True,
    help="Folder for the demo's photos, dataset and config.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write into a folder that already has files the demo did not make (an earlier demo's "
    "output is replaced without it).",
)
def demo(output: Path, force: bool) -> None:
    """Build the bundled example dataset, render its config and print the plan.

    \b
    Example:
      kohyawrap demo -o ./demo_out
    \b
    It writes ./demo_out/photos (8 synthetic photos), ./demo_out/training_data (the sd-scripts
    dataset), ./demo_out/my_lora (training_config.toml, sample_prompts.txt, launch.sh), then plans
    the run on an RTX 4090 and compares every GPU preset. Run it again and it replaces its own
    earlier output there (it says so); a folder with other files needs --force or another -o.
    """
    from kohyawrap.cli.runspec import with_dataset_subjects, write_run_files
    from kohyawrap.console import stdout
    from kohyawrap.console.config import show_rendered
    from kohyawrap.console.forecast import show_compare, show_forecast
    from kohyawrap.dataset.build import BuildRequest, build_dataset
    from kohyawrap.dataset.example import make_example_photos
    from kohyawrap.dataset.scan import read_training_dir
    from kohyawrap.forecast import build_forecast, compare_forecasts, preset_steps
    from kohyawrap.models import RunSpec
    from kohyawrap.presets import load_catalog
    from kohyawrap.render import findings

    con = stdout()
    replacing = _claim(output, force)
    con.print(
        f"0. replacing the earlier demo in {output}"
        if replacing
        else f"0. writing the demo into {output}"
    )
    photos = make_example_photos(output / "photos")
    con.print(f"1. example photos: {photos}")
    data = output / "training_data"
    catalog = load_catalog()
    request = BuildRequest(
        inputs=(photos,),
        output=data,
        triggers=(DEMO_TRIGGER,),
        model=DEMO_MODEL,
        class_words=(DEMO_CLASS,),
        force=True,  # _claim made sure it is an earlier demo's (or --force was given)
        length=preset_steps(DEMO_MODEL, DEMO_GPU, catalog=catalog).length,  # as the plan counts
    )
    built = build_dataset(request)
    con.print(f"2. dataset: {data} ({len(built.outcomes)} images; report {built.report_path})")
    run_dir = output / "my_lora"
    spec = RunSpec(
        gpu=DEMO_GPU,
        model=DEMO_MODEL,
        base_model=catalog.model(DEMO_MODEL).base_model,
        output_name="my_lora",
        train_data_dir="../training_data",
    )
    tdir = read_training_dir(data)
    spec = with_dataset_subjects(spec, tdir)
    plan = build_forecast(spec, tdir, catalog=catalog)
    written = write_run_files(run_dir, plan.rendered.files, force=True)
    con.print("3. config:")
    notes = findings(plan.rendered, catalog=catalog)
    show_rendered(run_dir, plan.rendered, written, notes, dataset_found=True)
    con.print("4. plan:")
    show_forecast(plan)
    show_compare(compare_forecasts(spec, tdir, catalog=catalog), current=DEMO_GPU)
    con.print(
        f"Next: rent a GPU and run `kohyawrap train --host ... --gpu auto --model {DEMO_MODEL} "
        f"--dataset {data} --base-model {spec.base_model} --name my_lora`, or run "
        f"{run_dir / 'launch.sh'} where sd-scripts is."
    )


def _claim(output: Path, force: bool) -> bool:
    """Make ``output`` the demo's; True when an earlier demo's output is being replaced.

    A folder an earlier demo made (it holds MARKER) is the demo's to replace: its photos are
    written afresh. Any other folder that is not empty needs --force, and is then never marked
    as the demo's, so no later demo deletes anything in it.
    """
    import shutil

    from kohyawrap.errors import UsageError

    if output.exists() and not output.is_dir():
        raise UsageError(f"{output} exists and is not a folder", hint="pass -o another folder")
    earlier = (output / MARKER).is_file()
    foreign = output.is_dir() and any(output.iterdir()) and not earlier
    if foreign and not force:
        raise UsageError(
            f"{output} already has files the demo did not make",
            hint="pass -o another folder, or --force to write the demo there anyway",
        )
    if earlier:
        shutil.rmtree(output / "photos", ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    if not foreign:
        note = "kohyawrap demo output: a later `kohyawrap demo` here replaces "
        (output / MARKER).write_text(note + ", ".join(DEMO_PARTS) + "\n", encoding="utf-8")
    return earlier
