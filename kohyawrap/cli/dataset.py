"""``kohyawrap dataset build`` and ``kohyawrap dataset lint``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kohyawrap.cli import echo_json

_DIR = click.Path(path_type=Path, file_okay=False)


@click.group()
def dataset() -> None:
    """Build an sd-scripts dataset from folders of photos, or lint an existing one.

    \b
      kohyawrap dataset build ./photos --trigger "sks dog" --class-word dog --model sdxl -o ./data
      kohyawrap dataset lint ./data --model sdxl
    """


@dataset.command()
@click.argument("inputs", nargs=-1, required=True, type=_DIR)
@click.option(
    "-o",
    "--output",
    required=True,
    type=_DIR,
    help="Dataset folder to create (the train_data_dir).",
)
@click.option(
    "--trigger",
    "triggers",
    multiple=True,
    required=True,
    help="Trigger words; once for all inputs, or once per input folder.",
)
@click.option(
    "--class-word",
    "class_words",
    multiple=True,
    help="Class of the subject (dog, woman, ...); once, or once per input.",
)
@click.option(
    "--model",
    required=True,
    help="Model preset, e.g. sdxl or flux-dev (decides repeats and the default --max-side).",
)
@click.option(
    "--repeats",
    "repeats",
    multiple=True,
    type=click.IntRange(min=1),
    help="Repeats per epoch; default: derived from the image count.",
)
@click.option(
    "--reg",
    "reg_dirs",
    multiple=True,
    type=_DIR,
    help="Folder of regularisation (class) images -> OUT/reg/1_<class>/.",
)
@click.option(
    "--caption-template",
    default=None,
    help="Caption for images without one; fields {trigger} {class} {concept}. "
    'Default: "photo of {concept}".',
)
@click.option(
    "--caption-extension",
    default=".txt",
    show_default=True,
    help="Caption file extension; must equal caption_extension in the training config.",
)
@click.option(
    "--max-side",
    type=int,
    default=None,
    help="Downscale so the longest side is at most N px (default: the model's max_bucket_reso).",
)
@click.option(
    "--no-resize",
    is_flag=True,
    help="Never downscale (EXIF orientation and colour modes are still fixed).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Stop (exit 2) on any unreadable or unsupported input file instead of skipping it.",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing output folder (only one a build made)."
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes (default: all cores).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
def build(
    inputs: tuple[Path, ...],
    output: Path,
    triggers: tuple[str, ...],
    class_words: tuple[str, ...],
    model: str,
    repeats: tuple[int, ...],
    reg_dirs: tuple[Path, ...],
    caption_template: str | None,
    caption_extension: str,
    max_side: int | None,
    no_resize: bool,
    strict: bool,
    force: bool,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Build OUT/<repeats>_<trigger> <class>/ with images and captions from folders of photos.

    Sources are never modified. Images are oriented (EXIF), converted to 8-bit RGB, downscaled and
    copied unchanged where nothing needs fixing; every image gets a caption that contains the
    trigger. The build report goes to OUT.build.json beside the dataset, and the result is linted.

    \b
    Examples:
      kohyawrap dataset build ./photos --trigger "sks dog" --class-word dog --model sdxl -o ./data
      kohyawrap dataset build ./dogs ./cats --trigger "sks dog" --trigger "sks cat" --model sd15 \\
          -o ./data
      kohyawrap dataset build ./photos --trigger "sks dog" --class-word dog --reg ./dog_photos \\
          --model sd15 -o ./data
    """
    from kohyawrap.console.dataset import print_build, progress
    from kohyawrap.dataset.build import BuildRequest, build_dataset

    request = BuildRequest(
        inputs=inputs,
        output=output,
        triggers=triggers,
        model=model,
        class_words=class_words,
        repeats=repeats,
        reg_dirs=reg_dirs,
        caption_template=caption_template,
        caption_extension=caption_extension,
        max_side=max_side,
        resize=not no_resize,
        strict=strict,
        force=force,
        jobs=jobs,
    )
    with progress("writing images", enabled=not as_json) as update:
        result = build_dataset(request, progress=update)
    if as_json:
        echo_json(result.to_json())
    else:
        print_build(result)


@dataset.command(name="lint")
@click.argument("path", type=_DIR)
@click.option(
    "--model", required=True, help="Model preset, e.g. sdxl or flux-dev (resolution and buckets)."
)
@click.option(
    "--reg",
    "reg_dir",
    type=_DIR,
    default=None,
    help="reg_data_dir (default: PATH/reg when it exists).",
)
@click.option(
    "--caption-extension",
    default=".txt",
    show_default=True,
    help="caption_extension of the training config.",
)
@click.option("--trigger", default=None, help="Check that every caption contains this trigger.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="train_batch_size.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="max_train_epochs.")
@click.option(
    "--max-train-steps",
    type=click.IntRange(min=1),
    default=None,
    help="max_train_steps (used when --epochs is not given).",
)
@click.option(
    "--gradient-accumulation-steps", type=click.IntRange(min=1), default=1, show_default=True
)
@click.option(
    "--resolution",
    default=None,
    help='Override the preset\'s resolution, e.g. "768" or "768,1024".',
)
@click.option(
    "--no-near-duplicates",
    is_flag=True,
    help="Skip the perceptual-hash check (faster on big folders).",
)
@click.option(
    "--jobs", type=click.IntRange(min=1), default=None, help="Worker processes for hashing."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def lint_command(
    path: Path,
    model: str,
    reg_dir: Path | None,
    caption_extension: str,
    trigger: str | None,
    batch_size: int,
    epochs: int | None,
    max_train_steps: int | None,
    gradient_accumulation_steps: int,
    resolution: str | None,
    no_near_duplicates: bool,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Check a dataset folder the way sd-scripts will read it; exit 1 if it has errors.

    Finds images sd-scripts would not see or would fail on, missing or misnamed captions,
    duplicates, images too small for the model or cropped by extreme aspect ratios, and prints
    the bucket histogram, batches per epoch and total steps.

    \b
    Examples:
      kohyawrap dataset lint ./training_data --model sdxl
      kohyawrap dataset lint ./training_data --model sd15 --batch-size 4 --epochs 10 --json
    """
    from kohyawrap.console.dataset import print_lint
    from kohyawrap.dataset.build import LintRequest, lint_dataset

    overrides = (("resolution", resolution),) if resolution else ()
    report = lint_dataset(
        LintRequest(
            path=path,
            model=model,
            reg_dir=reg_dir,
            caption_extension=caption_extension,
            trigger=trigger,
            batch_size=batch_size,
            epochs=epochs,
            max_train_steps=max_train_steps,
            gradient_accumulation_steps=gradient_accumulation_steps,
            overrides=overrides,
            near_duplicates=not no_near_duplicates,
            jobs=jobs,
        )
    )
    if as_json:
        echo_json(report.to_json())
    else:
        print_lint(report)
    if report.errors:
        # sys.exit, not ctx.exit: main() runs click with standalone_mode=False, which turns
        # ctx.exit(1) into a return value that is dropped.
        sys.exit(1)
