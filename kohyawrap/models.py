"""Frozen data shared across layers: what a run is (spec), what rendering produced, and the
events read from an sd-scripts log. Core modules return these; the CLI and console present them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# ---------------------------------------------------------------------------------------------
# Findings: what a check noticed (config validation, dataset lint, dataset build)

Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class Finding:
    """One thing a check noticed, with what to do about it.

    ``subject`` is what it is about: an option key for config checks, a file or folder (relative
    to the dataset) for dataset checks, or None for the whole thing.
    """

    severity: Severity
    code: str
    subject: str | None
    message: str
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The finding as data (``--json``)."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Rendering a run


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's rendered configs. Same spec -> byte-identical files.

    Paths are written into the configs exactly as given; sd-scripts resolves relative paths
    against its working directory (the run folder), not against the config file.
    """

    gpu: str  # GPU preset name ("rtx4090"), or "vram-<N>" for an unknown card of N GB
    model: str  # model preset name ("sd15", "sd2", "sdxl")
    base_model: str  # pretrained_model_name_or_path as it will appear in the config
    output_name: str
    train_data_dir: str = "dataset"  # parent of the <repeats>_<concept> folders
    output_dir: str = "output"
    logging_dir: str = "logs"
    reg_data_dir: str | None = None
    tokenizer_cache_dir: str | None = None
    caption_extension: str = ".txt"
    use_dataset_config: bool = False  # write dataset_config.toml instead of train_data_dir
    overrides: tuple[tuple[str, Any], ...] = ()  # --set key=value, in order given
    smoke: bool = False  # a few steps at tiny resolution, CPU-friendly
    cpu: bool | None = None  # train on the CPU (accelerate --cpu); None = only for smoke runs
    vram_gb: float | None = None  # overrides the preset's VRAM (unknown GPUs)
    # Who the sample prompts show: "<trigger> <class>" per concept (--trigger/--class-word, or
    # the dataset's concept folders); empty = not known (the LoRA's name is used, with a warning).
    prompt_subjects: tuple[str, ...] = ()
    # The user's own prompt file (--set sample_prompts=FILE), copied into the run under this name
    # ("sample_prompts.txt", ".toml" or ".json": sd-scripts picks the syntax by the extension).
    sample_prompts_file: str | None = None
    sample_prompts_text: str | None = None
    # Files the family's script loads besides the base model, as (option, path) pairs written into
    # the config exactly as given: ("clip_l", ...), ("clip_g", ...), ("t5xxl", ...), ("ae", ...).
    companions: tuple[tuple[str, str], ...] = ()
    # Training processes accelerate launches, one per GPU (``--multi_gpu`` above 1): each sees
    # a share of the batches, so the step count depends on it (docs/scale.md).
    processes: int = 1
    machines: int = 1  # nodes the processes are spread over (SkyPilot num_nodes)
    # Multiply the learning rates by ``processes`` (sd-scripts never scales them itself).
    scale_lr: bool = False


@dataclass(frozen=True)
class RenderedRun:
    """The files of a run and how to launch it.

    ``files`` maps a file name ("training_config.toml", "sample_prompts.txt", "launch.sh", and
    "dataset_config.toml" when chosen) to its exact text. ``accelerate_args`` are the options of
    ``accelerate launch`` (``--num_processes 1 ... --mixed_precision bf16 --dynamo_backend no``);
    ``script`` is the sd-scripts file to run; its own arguments are
    ``--config_file <dir>/training_config.toml``.
    """

    spec: RunSpec
    script: str
    files: dict[str, str]
    accelerate_args: tuple[str, ...]
    settings: dict[str, Any]  # the flat, validated training options (what sd-scripts will see)
    inputs_hash: str


# ---------------------------------------------------------------------------------------------
# Events read from sd-scripts output (kohyawrap.logparse)


@dataclass(frozen=True)
class Progress:
    """A tqdm ``steps:`` frame: step N of M, with the running average loss when shown."""

    step: int
    total: int
    elapsed_s: float | None = None
    eta_s: float | None = None
    sec_per_it: float | None = None
    avr_loss: float | None = None
    epoch: int | None = None  # the epoch last announced by ``epoch N/M``


@dataclass(frozen=True)
class EpochStart:
    epoch: int
    total: int


@dataclass(frozen=True)
class TrainingStarted:
    """The ``running training`` block: images × repeats, batches per epoch, epochs, total steps."""

    num_images: int | None
    batches_per_epoch: int | None
    epochs: int | None
    batch_size: int | None
    total_steps: int | None


@dataclass(frozen=True)
class CheckpointSaved:
    """``saving checkpoint: <path>`` (the file may still be being written)."""

    path: str


@dataclass(frozen=True)
class ModelSaved:
    """The final ``model saved.`` line."""


@dataclass(frozen=True)
class LogWarning:
    message: str


FailureKind = Literal[
    "oom", "nan", "import", "disk", "no_data", "model_load", "config", "cuda", "other"
]


@dataclass(frozen=True)
class Failure:
    """A recognised fatal error in the log, with what to do about it."""

    kind: FailureKind
    message: str
    hint: str


Event = (
    Progress | EpochStart | TrainingStarted | CheckpointSaved | ModelSaved | LogWarning | Failure
)


@dataclass(frozen=True)
class Estimate:
    """Plan numbers for one GPU: steps, seconds, VRAM and dollars, each with its basis."""

    gpu: str
    steps: int
    train_seconds: float
    setup_seconds: float
    vram_needed_gb: float
    vram_available_gb: float
    fits: bool
    price_per_hour: float
    dollars: float  # the whole run: set-up, training and the grid
    notes: tuple[str, ...] = field(default_factory=tuple)
    seconds_per_step: float = 0.0  # the preset's speed for these settings (0: not recorded)
    grid_images: int = 0  # images the grid will draw after training (0: no grid)
    grid_seconds: float = 0.0
