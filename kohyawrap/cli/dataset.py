"""``kohyawrap dataset build``, ``lint`` and ``caption``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kohyawrap.cli import echo_json
from kohyawrap.cli.complete import gpu_names, model_names
from kohyawrap.cli.options import connect_options, read_token
from kohyawrap.cli.types import CAPTION_EXTENSION, RESOLUTION

if TYPE_CHECKING:
    from kohyawrap.dataset.caption import Captioner
    from kohyawrap.hosts.base import Host

_DIR = click.Path(path_type=Path, file_okay=False)


@click.group()
def dataset() -> None:
    """Build an sd-scripts dataset from folders of photos, caption photos, or lint a dataset.

    \b
      kohyawrap dataset caption ./photos --trigger "sks dog"
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
    shell_complete=model_names,
    help="Model preset, e.g. sdxl or flux-dev (decides repeats and the default --max-side).",
)
@click.option(
    "--gpu",
    shell_complete=gpu_names,
    help="GPU preset it will train on: its tier's batch size counts the steps, as `plan` does "
    "(default: batch size 1, said beside the count).",
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
    type=CAPTION_EXTENSION,
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
    gpu: str | None,
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
      kohyawrap dataset build ./photos --trigger "sks dog" --model sdxl --gpu rtx4090 -o ./data
      kohyawrap dataset build ./dogs ./cats --trigger "sks dog" --trigger "sks cat" --model sd15 \\
          -o ./data
      kohyawrap dataset build ./photos --trigger "sks dog" --class-word dog --reg ./dog_photos \\
          --model sd15 -o ./data
    """
    from kohyawrap.console.dataset import print_build, progress
    from kohyawrap.dataset.build import BuildRequest, build_dataset
    from kohyawrap.forecast import preset_steps

    steps = preset_steps(model, gpu)
    request = BuildRequest(
        inputs=inputs,
        output=output,
        triggers=triggers,
        model=steps.family,
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
        length=steps.length,
        bucket=steps.bucket,
        min_short_side=steps.min_short_side,
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
    "--model",
    required=True,
    shell_complete=model_names,
    help="Model preset, e.g. sdxl or flux-dev (resolution, buckets, epochs).",
)
@click.option(
    "--gpu",
    shell_complete=gpu_names,
    help="GPU preset it will train on: its tier's batch size counts the steps, as `plan` does "
    "(default: batch size 1, said beside the count).",
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
    type=CAPTION_EXTENSION,
    default=".txt",
    show_default=True,
    help="caption_extension of the training config.",
)
@click.option("--trigger", default=None, help="Check that every caption contains this trigger.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="train_batch_size (default: the GPU preset's tier, else 1).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="max_train_epochs (default: the model preset's).",
)
@click.option(
    "--max-train-steps",
    type=click.IntRange(min=1),
    default=None,
    help="max_train_steps: the length when --epochs is not given (replaces the preset's epochs).",
)
@click.option(
    "--gradient-accumulation-steps",
    type=click.IntRange(min=1),
    default=None,
    help="gradient_accumulation_steps (default: the presets', else 1).",
)
@click.option(
    "--resolution",
    type=RESOLUTION,
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
    gpu: str | None,
    reg_dir: Path | None,
    caption_extension: str,
    trigger: str | None,
    batch_size: int | None,
    epochs: int | None,
    max_train_steps: int | None,
    gradient_accumulation_steps: int | None,
    resolution: str | None,
    no_near_duplicates: bool,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Check a dataset folder the way sd-scripts will read it; exit 1 if it has errors.

    Finds images sd-scripts would not see or would fail on, missing or misnamed captions,
    duplicates, images too small for the model or cropped by extreme aspect ratios, and prints
    the bucket histogram, batches per epoch and total steps. Steps are counted from the same
    presets as `kohyawrap plan` (give --gpu for the card's batch size); the options given here
    replace the presets' values.

    \b
    Examples:
      kohyawrap dataset lint ./training_data --model sdxl --gpu rtx4090
      kohyawrap dataset lint ./training_data --model sd15 --batch-size 4 --epochs 10 --json
      kohyawrap dataset lint ./training_data --model sdxl --max-train-steps 1500 \\
          --gradient-accumulation-steps 2 --resolution 896 --no-near-duplicates --jobs 2
    """
    from kohyawrap.console.dataset import print_lint
    from kohyawrap.dataset.build import LintRequest, lint_dataset
    from kohyawrap.errors import OutputClosed
    from kohyawrap.forecast import preset_steps

    given = {
        "train_batch_size": batch_size,
        "max_train_epochs": epochs,
        "max_train_steps": max_train_steps,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "resolution": resolution,
    }
    steps = preset_steps(model, gpu, given=given)
    report = lint_dataset(
        LintRequest(
            path=path,
            model=steps.family,
            reg_dir=reg_dir,
            caption_extension=caption_extension,
            trigger=trigger,
            length=steps.length,
            bucket=steps.bucket,
            min_short_side=steps.min_short_side,
            near_duplicates=not no_near_duplicates,
            jobs=jobs,
        )
    )
    try:
        if as_json:
            echo_json(report.to_json())
        else:
            print_lint(report)
    except OutputClosed:
        if not report.errors:
            raise
        sys.exit(1)  # the verdict stands when the reader leaves early (`| head`)
    if report.errors:
        # sys.exit, not ctx.exit: main() runs click with standalone_mode=False, which turns
        # ctx.exit(1) into a return value that is dropped.
        sys.exit(1)


_TAGGER_REPO = "SmilingWolf/wd-swinv2-tagger-v3"  # = kohyawrap.dataset.tagger.DEFAULT_REPO


@dataset.command(name="caption")
@click.argument("folder", type=_DIR)
@click.option("--trigger", default=None, help='Put first in every caption, e.g. "sks dog".')
@click.option(
    "--tagger",
    type=click.Choice(["wd14"]),
    default=None,
    help="Tag the photos on this machine (the default): the WD14 tagger on the CPU.",
)
@click.option(
    "--tagger-repo",
    default=None,
    help=f"Hugging Face repo of the WD14 tagger (model.onnx + selected_tags.csv) [default: {_TAGGER_REPO}].",
)
@click.option(
    "--general-threshold", type=float, default=None, help="Lowest score of a general tag [0.35]."
)
@click.option(
    "--character-threshold",
    type=float,
    default=None,
    help="Lowest score of a character tag [0.85].",
)
@click.option("--exclude-tags", default=None, help='Tags never written: "watermark, text".')
@click.option("--keep-underscores", is_flag=True, help="Write long_hair, not long hair.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 256),
    default=None,
    help="Photos per tagger run [8].",
)
@click.option(
    "--captioner",
    type=click.Choice(["florence2", "joycaption"]),
    default=None,
    help="Write sentences with this captioner on the GPU host (needs --host).",
)
@click.option(
    "--host", "host_target", default=None, help='The GPU host: user@host, an alias, "local".'
)
@connect_options
@click.option(
    "--host-python",
    default="",
    help="Python on the host with torch and transformers (default: kohyawrap's venv there).",
)
@click.option(
    "--work-dir", default="~/kohyawrap", show_default=True, help="kohyawrap's folder on the host."
)
@click.option(
    "--captioner-model", default=None, help="Another Hugging Face repo for the captioner."
)
@click.option(
    "--prompt",
    default=None,
    help="JoyCaption: the instruction; Florence-2: the task, e.g. <DETAILED_CAPTION>.",
)
@click.option(
    "--captioner-script",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Your own captioner: a Python file with load(model, token, prompt) (docs/dataset.md).",
)
@click.option(
    "--hf-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding a Hugging Face token (else $HF_TOKEN).",
)
@click.option(
    "--caption-extension",
    default=".txt",
    show_default=True,
    help="Caption file extension; must equal caption_extension in the training config.",
)
@click.option("--overwrite", is_flag=True, help="Replace captions that already exist.")
@click.option(
    "--dry-run", is_flag=True, help="Show which photos would be captioned; write nothing."
)
@click.option(
    "--review",
    is_flag=True,
    help="Write nothing: show tag frequencies and the captions without --trigger.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def caption_command(
    folder: Path,
    trigger: str | None,
    caption_extension: str,
    overwrite: bool,
    dry_run: bool,
    review: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Write a caption beside each photo of FOLDER that has none, the trigger first.

    By default the WD14 tagger runs here on the CPU (pip install 'kohyawrap[caption]'; the
    model is downloaded once from the Hugging Face Hub). --captioner florence2|joycaption writes
    sentences instead (what FLUX needs) on the GPU host. Photos are never modified and a
    caption you wrote is kept unless --overwrite. Review the captions before training.

    \b
    Examples:
      kohyawrap dataset caption ./photos --trigger "sks dog"
      kohyawrap dataset caption ./photos --trigger "sks dog" --exclude-tags "watermark, text" --dry-run
      kohyawrap dataset caption ./photos --trigger "sks dog" --captioner florence2 --host root@1.2.3.4 -p 22022
      kohyawrap dataset caption --review ./photos --trigger "sks dog"
    """
    from kohyawrap.dataset.captioning import CaptionRequest, caption_folder, review_folder

    if review:
        report = review_folder(folder, trigger, caption_extension)
        _show(report, as_json, "print_review")
        return
    from kohyawrap.console.dataset import progress

    request = CaptionRequest(folder, trigger, caption_extension, overwrite, dry_run)
    opened: list[Host] = []
    try:
        with progress("captioning", enabled=not as_json) as update:
            result = caption_folder(
                request, lambda: _make_captioner(options, opened), update, label=_label(options)
            )
    finally:
        for host in opened:
            host.close()
    _show(result, as_json, "print_caption")


def _show(data: Any, as_json: bool, printer: str) -> None:
    if as_json:
        echo_json(data.to_json())
        return
    from kohyawrap.console import dataset as console

    getattr(console, printer)(data)


def _check_caption_options(options: dict[str, Any]) -> None:
    from kohyawrap.errors import UsageError

    tagger_only = ("tagger_repo", "general_threshold", "character_threshold", "exclude_tags",
                   "batch_size")  # fmt: skip
    if options["captioner"]:
        used = [f"--{k.replace('_', '-')}" for k in tagger_only if options[k] is not None]
        if options["tagger"] or used:
            raise UsageError(
                f"{' '.join(used) or '--tagger'} applies to the WD14 tagger, not --captioner",
                hint="choose one: --tagger wd14 (tags, on this machine) or --captioner (sentences)",
            )
        if not options["host_target"]:
            raise UsageError(
                f"--captioner {options['captioner']} runs on a GPU host: give --host TARGET",
                hint="e.g. --host root@1.2.3.4 -p 22022, or --host local on a machine with a GPU",
            )
    elif options["host_target"] or options["captioner_script"]:
        raise UsageError(
            "--host and --captioner-script go with --captioner florence2|joycaption",
            hint="the WD14 tagger (the default) runs on this machine",
        )


def _label(options: dict[str, Any]) -> str:
    _check_caption_options(options)
    if options["captioner"]:
        model = options["captioner_model"] or "its default model"
        return f"{options['captioner']} ({model}) on {options['host_target']}"
    return f"wd14 {options['tagger_repo'] or _TAGGER_REPO}"


def _make_captioner(options: dict[str, Any], opened: list[Host]) -> Captioner:
    """The WD14 tagger here, or the captioner on the host (added to ``opened``)."""
    if options["captioner"]:
        from kohyawrap.console.dataset import CaptionStages
        from kohyawrap.hosts.connect import open_host
        from kohyawrap.launcher.caption import HostCaptioner, HostCaptionOptions

        host = open_host(options["host_target"], options["connect"])
        opened.append(host)
        return HostCaptioner(
            host,
            options["host_python"],
            HostCaptionOptions(
                options["captioner"],
                model=options["captioner_model"],
                prompt=options["prompt"],
                work_dir=options["work_dir"],
                model_script=options["captioner_script"],
            ),
            CaptionStages(),
            hf_token=read_token(options["hf_token_file"]),
        )
    from kohyawrap.console.dataset import note
    from kohyawrap.dataset.caption import (
        DEFAULT_CHARACTER_THRESHOLD,
        DEFAULT_GENERAL_THRESHOLD,
        TagOptions,
        parse_tag_list,
    )
    from kohyawrap.dataset.tagger import DEFAULT_BATCH, open_tagger

    tag_options = TagOptions(
        general_threshold=_or(options["general_threshold"], DEFAULT_GENERAL_THRESHOLD),
        character_threshold=_or(options["character_threshold"], DEFAULT_CHARACTER_THRESHOLD),
        exclude=parse_tag_list(options["exclude_tags"]),
        keep_underscores=options["keep_underscores"],
    )
    repo = options["tagger_repo"] or _TAGGER_REPO
    note(f"WD14 tagger {repo} (downloaded once into the Hugging Face cache)")
    return open_tagger(repo, tag_options, options["batch_size"] or DEFAULT_BATCH)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
