"""``kohyawrap train``: dataset + GPU host (or this machine) -> a trained LoRA on the laptop."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kohyawrap.cli.complete import model_names
from kohyawrap.cli.options import (
    GRID_HELP,
    SAMPLE_PROMPTS_HELP,
    GroupedCommand,
    companion_specs,
    connect_options,
    follow_options,
    grouped,
    launch,
    option_group,
    read_sample_prompts,
    read_token,
    runs_dir_option,
    skypilot_options,
)
from kohyawrap.cli.types import (
    CAPTION_EXTENSION,
    DOLLARS,
    HOURS,
    MINUTES,
    PRICE,
    VRAM_GB,
    WORDS,
)

if TYPE_CHECKING:
    from kohyawrap.evaluate.options import GridOptions
    from kohyawrap.launcher.gpus import GpuRequest
    from kohyawrap.launcher.request import TrainRequest
    from kohyawrap.launcher.runplan import MoneyOptions, SetupOptions
    from kohyawrap.launcher.skypilot import SkyOptions


# ---------------------------------------------------------------------------------------------
# Option groups


def _what(
    gpu: str,
    vram: float | None,
    model: str,
    dataset: Path,
    base_model: str | None,
    base_model_file: str | None,
    clip_l: str | None,
    clip_g: str | None,
    t5xxl: str | None,
    ae: str | None,
    output_name: str,
    sets: tuple[str, ...],
    caption_extension: str,
    smoke: bool,
    trigger: str | None,
    class_word: str | None,
) -> TrainRequest:
    from kohyawrap.dataset.layout import concept_name
    from kohyawrap.launcher.request import TrainRequest
    from kohyawrap.models import RunSpec
    from kohyawrap.presets import load_catalog
    from kohyawrap.prompts import parse_sets

    overrides, prompts = parse_sets(sets, load_catalog().model(model).script)
    subject = concept_name(trigger, class_word or "") if trigger else class_word or ""
    given = {"clip_l": clip_l, "clip_g": clip_g, "t5xxl": t5xxl, "ae": ae}
    spec = RunSpec(
        gpu=gpu,
        model=model,
        base_model=base_model or "",  # "": the model preset's [files.base]
        companions=tuple((key, value) for key, value in given.items() if value),
        output_name=output_name,
        caption_extension=caption_extension,
        overrides=overrides,
        smoke=smoke,
        vram_gb=vram,
        prompt_subjects=(subject,) if subject else (),
        sample_prompts_file=prompts.name if prompts else None,
        sample_prompts_text=prompts.text if prompts else None,
    )
    return TrainRequest(spec=spec, dataset=dataset, base_model_file=base_model_file)


what_options = option_group(
    "What to train",
    "what",
    _what,
    [
        (("--gpu",), {"default": "auto", "show_default": True,
                      "help": "GPU preset (`kohyawrap presets list`), or 'auto' to read it from the host."}),
        (("--vram",), {"type": VRAM_GB, "default": None, "help": "VRAM in GB, for a GPU without a preset."}),
        (("--model",), {"required": True, "shell_complete": model_names,
                        "help": "Model preset, e.g. sdxl or flux-dev (`kohyawrap presets list`; or your own)."}),
        (("--dataset",), {"type": click.Path(file_okay=False, path_type=Path), "required": True,
                          "help": "A dataset made by `kohyawrap dataset build` (parent of the N_concept folders)."}),
        (("--base-model",), {"default": None,
                             "help": "Hugging Face repo id (or owner/repo/file), URL, or local .safetensors file "
                             "(uploaded); default: the model preset's base model."}),
        (("--base-model-file",), {"default": None,
                                  "help": "File inside the --base-model repo (the preset's repo needs none)."}),
        *companion_specs("owner/repo/file, a URL or a local file (uploaded); default: the preset's, "
                         "fetched on the host"),
        (("--name", "output_name"), {"required": True,
                                     "help": "The LoRA's name (any language): the stem of its files."}),
        (("--set", "sets"), {"multiple": True, "metavar": "KEY=VALUE",
                             "help": "Override a training option (repeatable); sample_prompts=FILE "
                             "uses your own prompt file."}),
        (("--caption-extension",), {"type": CAPTION_EXTENSION, "default": ".txt", "show_default": True,
                                    "help": "Extension of the caption files."}),
        (("--smoke",), {"is_flag": True, "help": "A few steps at tiny resolution to prove the chain works (CPU ok)."}),
        (("--trigger",), {"type": WORDS, "default": None,
                          "help": "Trigger word for the sample prompts (default: the dataset's folder names)."}),
        (("--class-word",), {"type": WORDS, "default": None,
                             "help": 'Class of the subject ("dog"), beside the trigger in the sample prompts.'}),
    ],
)  # fmt: skip


def _setup(
    sd_scripts_repo: str | None,
    sd_scripts_ref: str | None,
    sd_scripts_path: str | None,
    python: str,
    torch_spec: str | None,
    xformers: bool,
    installer: str,
) -> SetupOptions:
    from kohyawrap.launcher.runplan import DEFAULT_TORCH, SetupOptions
    from kohyawrap.sdscripts import DEFAULT_REPO, PINNED_COMMIT

    return SetupOptions(
        repo=sd_scripts_repo or DEFAULT_REPO,
        ref=sd_scripts_ref or PINNED_COMMIT,
        sd_scripts_path=sd_scripts_path or "",
        python=python,
        torch_spec=torch_spec or DEFAULT_TORCH,
        xformers=xformers,
        installer="uv" if installer == "uv" else "pip" if installer == "pip" else "auto",
    )


setup_options = option_group(
    "Host set-up",
    "setup",
    _setup,
    [
        (("--sd-scripts-repo",), {"default": None, "help": "Git URL of sd-scripts (default: kohya-ss on GitHub)."}),
        (("--sd-scripts-ref",), {"default": None, "help": "Commit, tag or branch (default: the tested pinned commit)."}),
        (("--sd-scripts-path",), {"default": None, "help": "Use a pre-installed sd-scripts on the host (no install)."}),
        (("--python",), {"default": "python3", "show_default": True,
                         "help": "Python on the host (with --sd-scripts-path: the one whose environment to use)."}),
        (("--torch-spec",), {"default": None, "help": "pip arguments for torch (default: torch 2.6.0 cu124), or 'skip'."}),
        (("--xformers",), {"is_flag": True, "help": "Also install xformers (sdpa is used by default)."}),
        (("--installer",), {"type": click.Choice(["auto", "uv", "pip"]), "default": "auto", "show_default": True,
                            "help": "auto: uv when the host has it, pip when uv fails or is missing."}),
    ],
)  # fmt: skip


def _money(
    price: float | None,
    max_dollars: float | None,
    max_hours: float | None,
    on_finish: str,
    idle_minutes: float,
    provider: str,
    push_to_hub: str | None,
    hub_public: bool,
) -> MoneyOptions:
    from kohyawrap.launcher.runplan import MoneyOptions

    return MoneyOptions(
        price,
        max_dollars,
        max_hours,
        on_finish.strip() or "none",
        idle_minutes=idle_minutes,
        provider=provider,
        push_to_hub=(push_to_hub or "").strip(),
        hub_private=not hub_public,
    )


money_options = option_group(
    "Money",
    "money",
    _money,
    [
        (("--price",), {"type": PRICE, "default": None,
                        "help": "$ per hour of the host (default: the preset's typical)."}),
        (("--max-dollars",), {"type": DOLLARS, "default": None,
                              "help": "Refuse a plan predicted to cost more; stop the run (right after a "
                              "checkpoint save) before it does. Held on the host, laptop or not."}),
        (("--max-hours",), {"type": HOURS, "default": None,
                            "help": "Stop the run this many hours after its launch (held on the host)."}),
        (("--on-finish",), {"default": "none", "show_default": True,
                            "help": "When the run has ended and its checkpoints are safe: none, stop, destroy, "
                            "shutdown, or a shell command for the host (docs/money.md)."}),
        (("--idle-minutes",), {"type": MINUTES, "default": 30.0, "show_default": True,
                               "help": "The host carries out --on-finish by itself when no laptop has "
                               "finished the run this long after it ended."}),
        (("--provider",), {"type": click.Choice(["auto", "runpod", "vast", "none"]), "default": "auto",
                           "show_default": True, "help": "Who rents the host (auto: read from the host)."}),
        (("--push-to-hub",), {"default": None, "metavar": "USER/REPO",
                              "help": "The host pushes every checkpoint to this Hugging Face repo (private) "
                              "and checks the Hub's sha256 of each."}),
        (("--hub-public",), {"is_flag": True, "help": "Make a repo that --push-to-hub creates public."}),
    ],
)  # fmt: skip


def _recovery(retry_oom: int, keep_states: int) -> tuple[int, int]:
    return retry_oom, keep_states


recovery_options = option_group(
    "Recovery",
    "recovery",
    _recovery,
    [
        (("--retry-oom",), {"type": click.IntRange(0, 10), "default": 2, "show_default": True,
                            "help": "After 'CUDA out of memory', train again up to N times, each time with the "
                            "next rung of the model's OOM ladder (presets/ladders.toml); 0: never."}),
        (("--keep-states",), {"type": click.IntRange(0, 100), "default": 2, "show_default": True,
                              "help": "Save the training state with each checkpoint, keeping the last N, so "
                              "`kohyawrap resume` can continue the run; 0: no states."}),
    ],
)  # fmt: skip


def _evaluation(
    grid: str | None, no_grid: bool, sample_prompts: Path | None
) -> tuple[GridOptions, bool]:
    """The grid's options, and whether --grid was given (a smoke run draws none unless asked)."""
    from dataclasses import replace

    from kohyawrap.errors import UsageError
    from kohyawrap.evaluate.options import GridOptions, parse_grid

    if grid is not None and no_grid:
        raise UsageError("--grid and --no-grid together: choose one")
    options = parse_grid(grid) if grid is not None else GridOptions(enabled=not no_grid)
    return replace(options, prompts=read_sample_prompts(sample_prompts)), grid is not None


evaluation_options = option_group(
    "Evaluation",
    "evaluation",
    _evaluation,
    [
        (("--grid",), {"default": None, "metavar": "SPEC", "help": GRID_HELP}),
        (("--no-grid",), {"is_flag": True, "help": "Draw no grid: the run ends when its files are pulled."}),
        (("--sample-prompts",), {"type": click.Path(dir_okay=False, path_type=Path), "default": None,
                                 "help": SAMPLE_PROMPTS_HELP}),
    ],
)  # fmt: skip


def _gpus(gpus: str | None, multi_gpu: bool, scale_lr: bool) -> GpuRequest:
    from kohyawrap.launcher.gpus import GpuRequest, parse_gpus

    count, every, devices = parse_gpus(gpus) if gpus is not None else (None, False, ())
    return GpuRequest(count, every, devices, multi_gpu, scale_lr)


gpu_options = option_group(
    "GPUs of the host",
    "gpus",
    _gpus,
    [
        (("--gpus",), {"default": None, "metavar": "all|N|device=I,J",
                       "help": "Which GPUs: N free ones (no other process, most free memory), all "
                       "free ones, or nvidia-smi's indices. Without --multi-gpu: one GPU."}),
        (("--multi-gpu",), {"is_flag": True,
                            "help": "One job across the chosen GPUs (accelerate --multi_gpu, one "
                            "process each): fewer steps per epoch, a larger effective batch."}),
        (("--scale-lr",), {"is_flag": True,
                           "help": "With --multi-gpu: multiply the learning rates by the number of "
                           "GPUs (sd-scripts keeps them as given)."}),
    ],
)  # fmt: skip


@click.command(cls=GroupedCommand)
@grouped("Connection", "--host", "target", required=True,
         help="'local' for this machine's GPU, or [user@]host / an alias from ~/.ssh/config.")  # fmt: skip
@grouped("Connection", "--via", type=click.Choice(["ssh", "skypilot"]), default="ssh", show_default=True,
         help="skypilot: SkyPilot launches the machine (--host names its cluster), then the run goes "
         "over SSH as with any host.")  # fmt: skip
@connect_options
@skypilot_options
@what_options
@gpu_options
@setup_options
@grouped("Host set-up", "--work-dir", default="~/kohyawrap", show_default=True,
         help="Where kohyawrap works on the host.")  # fmt: skip
@money_options
@recovery_options
@evaluation_options
@follow_options
@runs_dir_option
@grouped("Following", "--hf-token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
         help="File holding a Hugging Face token (else $HF_TOKEN).")  # fmt: skip
@grouped("Following", "--pull-state", is_flag=True,
         help="Also pull the training states, each as soon as it is saved (to resume on another "
         "host if this one dies).")  # fmt: skip
@click.option(
    "--force", is_flag=True, help="Go ahead even when the plan says it will not fit in VRAM."
)
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed without a terminal)."
)
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
def train(
    target: str,
    via: str,
    connect: Any,
    sky: SkyOptions,
    what: TrainRequest,
    gpus: GpuRequest,
    setup: SetupOptions,
    work_dir: str,
    money: MoneyOptions,
    recovery: tuple[int, int],
    evaluation: tuple[GridOptions, bool],
    follow: Any,
    runs_dir: Path,
    hf_token_file: Path | None,
    pull_state: bool,
    force: bool,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Train a LoRA on an SSH host (or this machine) and pull the results back, verified.

    Nothing is typed on the host: kohyawrap clones sd-scripts at a pinned commit, builds its
    environment once (a second run skips it), fetches the model files into the host's shared
    model cache (the base model and, for FLUX.1, Chroma and SD3.5, the text encoders and
    autoencoder: once per host), uploads the dataset (only what changed), starts the
    training detached (it survives a dropped connection: `kohyawrap attach RUN`), follows loss and
    cost, and pulls every checkpoint as it appears into runs/<run-id>/checkpoints/. Then, on the
    same card, it draws a grid of test images (checkpoints x strengths x seeds; --grid, --no-grid)
    and writes runs/<run-id>/report/index.html: which file to use, and why.

    \b
    Examples:
      kohyawrap train --host root@1.2.3.4 -p 22022 --gpu auto --model sdxl --dataset ./training_data \\
          --base-model stabilityai/stable-diffusion-xl-base-1.0 --name my_lora --price 0.59 --yes
      kohyawrap train --host local --gpu rtx3090 --model sd15 --dataset ./training_data \\
          --base-model ./models/v1-5-pruned-emaonly.safetensors --name 柴犬 --yes
      kohyawrap train --host root@1.2.3.4 -p 22022 --gpu auto --model flux-dev \\
          --dataset ./training_data --name my_flux_lora --hf-token-file ~/.hf_token --yes
      kohyawrap train --host gpu-box --gpu rtx3090 --model chroma --dataset ./training_data \\
          --t5xxl comfyanonymous/flux_text_encoders/t5xxl_fp8_e4m3fn.safetensors --name test --dry-run
      kohyawrap train --host gpu-box --model sd15 --dataset ./training_data --base-model ./m.safetensors \\
          --name test --smoke --dry-run
      kohyawrap train --host root@1.2.3.4 -p 22022 --model sdxl --dataset ./training_data \\
          --base-model stabilityai/stable-diffusion-xl-base-1.0 --name my_lora --price 0.44 \\
          --max-dollars 3 --on-finish destroy --push-to-hub me/my_lora --yes
      kohyawrap train --host root@1.2.3.4 --model sdxl --dataset ./training_data --name my_lora \\
          --base-model stabilityai/stable-diffusion-xl-base-1.0 --pull-state --retry-oom 3 --keep-states 3
      kohyawrap train ... --grid epochs=6,8,10,strengths=0,0.7,1,seeds=5 --sample-prompts prompts.txt
      kohyawrap train --via skypilot --host lora-1 --gpu rtx4090 --model sdxl --dataset ./training_data \\
          --base-model stabilityai/stable-diffusion-xl-base-1.0 --name my_lora --autostop 10
      kohyawrap train --host root@8gpu.example --gpus all --multi-gpu --model sdxl \\
          --dataset ./training_data --base-model stabilityai/stable-diffusion-xl-base-1.0 --name my_lora
    """
    from dataclasses import replace

    grid, asked = evaluation
    if what.spec.smoke and not asked:
        grid = replace(grid, enabled=False)  # a smoke run proves the chain; --grid draws anyway
    request = replace(
        what,
        setup=setup,
        money=money,
        work_dir=work_dir,
        pull_state=pull_state,
        force=force,
        retry_oom=recovery[0],
        keep_states=recovery[1],
        grid=grid,
    )
    request = replace(request, gpus=gpus)
    if via == "skypilot":
        from kohyawrap.hosts.skypilot import SkyPilotProvisioner
        from kohyawrap.launcher.skypilot import provision

        provisioner = None if dry_run else SkyPilotProvisioner()
        connect = provision(request, target, connect, sky, provisioner)
    else:
        _no_skypilot_options(sky)
    launch(
        request,
        target,
        connect,
        follow=follow,
        runs_dir=runs_dir,
        token=read_token(hf_token_file),
        yes=yes,
        dry_run=dry_run,
        as_json=as_json,
    )
    if via == "skypilot" and not dry_run:
        from kohyawrap.hosts.skypilot import SkyPilotProvisioner
        from kohyawrap.launcher.skypilot import after_pull

        click.echo(after_pull(target, sky, SkyPilotProvisioner()), err=True)


def _no_skypilot_options(sky: SkyOptions) -> None:
    from kohyawrap.errors import UsageError
    from kohyawrap.launcher.skypilot import SkyOptions

    if sky != SkyOptions():
        raise UsageError(
            "--nodes, --gpus-per-node, --accelerator, --autostop, --down, --spot, --infra and "
            "--disk-size are for SkyPilot",
            hint="add --via skypilot (SkyPilot launches the machine), or leave them out",
        )
