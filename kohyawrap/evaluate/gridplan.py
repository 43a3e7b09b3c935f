"""The grid as data: which checkpoints, strengths, seeds and prompts; what each generation call
reads and writes; how long it takes.

One call of sd-scripts' generation script per checkpoint (one model load), its prompt file holding
one line per image with the strength as a per-prompt network multiplier (``--am``) and the seed as
``--d``. Images are written with ``--sequential_file_name`` (``im_000001.png`` in line order, in a
folder per call) and renamed on the host to the grid's own names: gen_img.py could name them with
``--f``, but sdxl_gen_img.py has no such option, and one way for both is simpler to trust.

Strength 0 is the base model: its images are the same for every checkpoint, so they are drawn once,
in a call of their own that loads no LoRA: the base model exactly, whatever the LoRA holds. (With
``--am 0`` gen_img.py still runs the LoRA's modules and multiplies their output by 0; the real
script gave the very same pixels as no LoRA for a sound LoRA, but a LoRA with NaN or inf weights,
what a run whose loss went NaN saves, gives NaN x 0 = NaN: black "base" images. The extra call
costs one model load per grid.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kohyawrap.errors import UsageError
from kohyawrap.evaluate.options import AUTO_CHECKPOINTS, GridOptions
from kohyawrap.evaluate.prompts import PromptDefaults, completed, join_line, split_line

# Which generation script goes with which training script (sd-scripts @ 48d368fa: gen_img.py
# loads SD1.x/2.x, sdxl_gen_img.py SDXL; both read the same prompt syntax and network options).
GEN_SCRIPTS = {"train_network.py": "gen_img.py", "sdxl_train_network.py": "sdxl_gen_img.py"}
DEFAULT_SAMPLER = "euler_a"  # what the model presets sample with during training


@dataclass(frozen=True)
class Checkpoint:
    """A LoRA file of the run: where it is on the host and here, and when it was saved."""

    rel: str  # host path relative to the run folder: output/demo-000006.safetensors
    local: str  # path relative to the local run folder: checkpoints/demo-000006.safetensors
    epoch: int | None  # the epoch it was saved after
    step: int | None  # the optimizer step it was saved at
    kind: str  # "epoch" | "step" | "final"

    @property
    def key(self) -> str:
        """A short, file-name-safe id: ``e000006``, ``s00000500`` or ``final``."""
        if self.kind == "epoch" and self.epoch is not None:
            return f"e{self.epoch:06d}"
        if self.kind == "step" and self.step is not None:
            return f"s{self.step:08d}"
        return "final"

    @property
    def label(self) -> str:
        """``epoch 6``, ``step 500`` or ``epoch 10 (last)``."""
        if self.kind == "step":
            return f"step {self.step}"
        if self.kind == "final":
            return f"epoch {self.epoch} (last)" if self.epoch is not None else "last"
        return f"epoch {self.epoch}"


def checkpoint_of(
    rel: str, local: str, output_name: str, metadata: Mapping[str, str]
) -> Checkpoint | None:
    """Read a checkpoint's kind from sd-scripts' file name and its epoch/step from its metadata
    (``ss_epoch``, ``ss_steps``); None for a file that is not one of the run's LoRAs."""
    stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    epoch = _int(metadata.get("ss_epoch"))
    step = _int(metadata.get("ss_steps"))
    if stem == output_name:
        return Checkpoint(rel, local, epoch, step, "final")
    match = re.fullmatch(re.escape(output_name) + r"-(\d{6})", stem)
    if match:
        return Checkpoint(rel, local, int(match.group(1)), step, "epoch")
    match = re.fullmatch(re.escape(output_name) + r"-step(\d{8})", stem)
    if match:
        return Checkpoint(rel, local, epoch, int(match.group(1)), "step")
    return None


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def ordered(checkpoints: Sequence[Checkpoint]) -> tuple[Checkpoint, ...]:
    """In training order: by step when known, the final one last."""
    return tuple(
        sorted(
            checkpoints,
            key=lambda c: (c.kind == "final", c.step if c.step is not None else -1, c.epoch or 0),
        )
    )


def saved_epochs(total_epochs: int, save_every_n_epochs: int | None) -> tuple[int, ...]:
    """The epochs a run will have a checkpoint of: every N-th before the last, and the last."""
    every = save_every_n_epochs if save_every_n_epochs and save_every_n_epochs > 0 else 0
    numbered = range(every, total_epochs, every) if every else range(0)
    return (*numbered, total_epochs)


def check_listed_epochs(options: GridOptions, total_epochs: int, every: int | None) -> None:
    """Refuse ``--grid epochs=...`` naming an epoch the run will not save (before renting)."""
    if not options.enabled or options.choice != "listed":
        return
    saved = saved_epochs(total_epochs, every)
    missing = [e for e in options.epochs if e not in saved]
    if missing:
        shown = ", ".join(str(e) for e in saved[-12:])
        raise UsageError(
            f"--grid epochs: no checkpoint will be saved after epoch(s) "
            f"{', '.join(str(e) for e in missing)}",
            evidence=[f"this run saves after epochs {shown}"],
            hint="choose among those, --set save_every_n_epochs=1 to save every epoch, or "
            "epochs=auto",
        )


def spread(count: int, wanted: int = AUTO_CHECKPOINTS) -> list[int]:
    """Indices of ``wanted`` checkpoints out of ``count``, from 40% of the run to its end.

    Early epochs rarely decide anything; the tutorial's point is that epoch 6 may beat epoch 10.
    """
    if count <= wanted:
        return list(range(count))
    start = (count - 1) * 0.4
    chosen: list[int] = []
    for i in range(wanted):
        index = round(start + (count - 1 - start) * i / (wanted - 1))
        while index in chosen:
            index -= 1
        chosen.append(index)
    return sorted(chosen)


def choose(
    checkpoints: Sequence[Checkpoint], options: GridOptions, prefer: Sequence[int] = ()
) -> tuple[tuple[Checkpoint, ...], tuple[int, ...]]:
    """The checkpoints the grid draws, and listed epochs that have none.

    ``prefer``: epochs worth a row (the loss verdict's suggestion), swapped in for the nearest
    automatic pick; the last checkpoint always stays.
    """
    all_ = ordered(checkpoints)
    if options.choice == "all":
        return all_, ()
    if options.choice == "listed":
        by_epoch = {c.epoch: c for c in all_ if c.kind != "step" and c.epoch is not None}
        found = tuple(by_epoch[e] for e in options.epochs if e in by_epoch)
        return ordered(found), tuple(e for e in options.epochs if e not in by_epoch)
    picks = spread(len(all_))
    for epoch in prefer:
        index = next((i for i, c in enumerate(all_) if c.epoch == epoch), None)
        if index is None or index in picks or len(picks) < 2:
            continue
        nearest = min(picks[:-1], key=lambda p: abs(p - index))
        picks = sorted({*(p for p in picks if p != nearest), index})
    return tuple(all_[i] for i in picks), ()


# ---------------------------------------------------------------------------------------------
# Images and calls


@dataclass(frozen=True)
class GridCell:
    """One image of the grid."""

    name: str  # its file name, on the host and here
    checkpoint: str  # checkpoint key; "" for the base model (strength 0)
    strength: float
    seed: int
    prompt: int  # index into the grid's prompts


BASE = "base"  # the key of the call that draws the base model (strength 0)


@dataclass(frozen=True)
class GridCall:
    """One run of the generation script: one model load, one line per image."""

    checkpoint: Checkpoint | None  # None: the base model alone (strength 0)
    lines: tuple[str, ...]
    names: tuple[str, ...]  # image names in line order (im_000001.png is names[0])

    @property
    def key(self) -> str:
        return self.checkpoint.key if self.checkpoint is not None else BASE

    @property
    def label(self) -> str:
        return self.checkpoint.label if self.checkpoint is not None else "the base model"


@dataclass(frozen=True)
class GridPlan:
    """Everything the host draws for one grid."""

    checkpoints: tuple[Checkpoint, ...]
    strengths: tuple[float, ...]
    seeds: tuple[int, ...]
    prompts: tuple[str, ...]  # prompt lines (text + the options they keep)
    calls: tuple[GridCall, ...]
    cells: tuple[GridCell, ...]

    def name(self, checkpoint: str, strength: float, seed: int, prompt: int) -> str:
        """The image of one cell (strength 0 is the shared base image)."""
        return cell_name(checkpoint, strength, seed, prompt)


def strength_tag(strength: float) -> str:
    """``0.7`` -> ``m+0p700``: a strength in a file name."""
    return f"m{strength:+.3f}".replace(".", "p")


def cell_name(checkpoint: str, strength: float, seed: int, prompt: int) -> str:
    """``e000006_p01_d3_m+0p700.png``; ``base_p01_d3.png`` at strength 0."""
    if strength == 0:
        return f"base_p{prompt + 1:02d}_d{seed}.png"
    return f"{checkpoint}_p{prompt + 1:02d}_d{seed}_{strength_tag(strength)}.png"


def grid_line(prompt: str, defaults: PromptDefaults, seed: int, strength: float | None) -> str:
    """One prompt-file line: the prompt with its options, then seed and network multiplier
    (none for the base model's call)."""
    text, options = split_line(completed(prompt, defaults))
    extra = [("d", str(seed))] + ([("am", f"{strength:g}")] if strength is not None else [])
    return join_line(text, [*options, *extra])


def build_grid(
    checkpoints: Sequence[Checkpoint],
    options: GridOptions,
    prompts: Sequence[str],
    defaults: PromptDefaults,
) -> GridPlan:
    """The calls and images of a grid over ``checkpoints`` (already chosen): the base model's
    call first (when strength 0 is drawn), then one per checkpoint."""
    seeds = options.seed_values
    strengths = tuple(sorted(set(options.strengths)))
    calls: list[GridCall] = []
    cells: dict[str, GridCell] = {}
    owners: list[Checkpoint | None] = [None] if 0 in strengths and checkpoints else []
    for checkpoint in [*owners, *checkpoints]:
        lines: list[str] = []
        names: list[str] = []
        drawn = (0.0,) if checkpoint is None else tuple(s for s in strengths if s != 0)
        key = checkpoint.key if checkpoint is not None else ""
        for strength in drawn:
            for p, prompt in enumerate(prompts):
                for seed in seeds:
                    name = cell_name(key, strength, seed, p)
                    lines.append(grid_line(prompt, defaults, seed, strength if key else None))
                    names.append(name)
                    cells[name] = GridCell(name, key, strength, seed, p)
        calls.append(GridCall(checkpoint, tuple(lines), tuple(names)))
    return GridPlan(
        tuple(checkpoints), strengths, seeds, tuple(prompts), tuple(calls), tuple(cells.values())
    )


def image_count(checkpoints: int, options: GridOptions, prompts: int) -> int:
    """Images of a grid: strength 0 once, every other strength per checkpoint."""
    strengths = set(options.strengths)
    per_prompt_seed = (1 if 0 in strengths else 0) + checkpoints * len(strengths - {0})
    return per_prompt_seed * options.seeds * prompts if checkpoints else 0


MAX_IMAGES = 5000  # hours of a card; more is a typo in --grid, not an evaluation


def check_size(images: int) -> None:
    """Refuse a grid too large to be meant (before anything is rented or drawn)."""
    if images > MAX_IMAGES:
        raise UsageError(
            f"the grid would draw {images} images; at most {MAX_IMAGES}",
            hint="fewer epochs, strengths, seeds or prompts: e.g. --grid epochs=auto,seeds=5",
        )


def call_count(checkpoints: int, options: GridOptions) -> int:
    """Model loads of a grid: one per checkpoint, and one for the base model (strength 0)."""
    return checkpoints + (1 if 0 in options.strengths and checkpoints else 0)


def planned_checkpoints(options: GridOptions, total_epochs: int, every: int | None) -> int:
    """How many checkpoints the grid will draw, from what the run will save."""
    saved = len(saved_epochs(total_epochs, every))
    if options.choice == "listed":
        return len(options.epochs)
    if options.choice == "all":
        return saved
    return min(saved, AUTO_CHECKPOINTS)


# ---------------------------------------------------------------------------------------------
# The command


def generation_args(
    *,
    training_script: str,
    sd_scripts: str,
    model: str,
    lora: str | None,
    prompt_file: str,
    outdir: str,
    settings: Mapping[str, object],
    batch_size: int,
    tokenizer_cache_dir: str | None,
) -> list[str]:
    """The generation script and its arguments for one call (a list: quoted by the caller);
    ``lora`` None draws the base model alone.

    Precision, attention, clip skip, VAE and v2 follow the training settings, so the grid draws
    the model the LoRA was trained against the way it was trained.
    """
    script = GEN_SCRIPTS.get(training_script)
    if script is None:
        raise UsageError(
            f"the grid has no generation script for {training_script}",
            hint="the grid draws SD1.x/2.x (gen_img.py) and SDXL (sdxl_gen_img.py) LoRAs; --no-grid",
        )
    args = [
        f"{sd_scripts}/{script}",
        "--ckpt",
        model,
        "--outdir",
        outdir,
        "--from_file",
        prompt_file,
    ]
    if lora is not None:
        args += ["--network_module", str(settings.get("network_module") or "networks.lora")]
        args += ["--network_weights", lora, "--network_mul", "1.0"]
    args += ["--sequential_file_name", "--images_per_prompt", "1", "--batch_size", str(batch_size)]
    sampler = str(settings.get("sample_sampler") or DEFAULT_SAMPLER)
    args += ["--sampler", sampler]
    if script == "gen_img.py" and settings.get("v2"):
        args.append("--v2")
        if settings.get("v_parameterization"):
            args.append("--v_parameterization")
    precision = str(settings.get("mixed_precision") or "no")
    if precision in ("fp16", "bf16"):
        args.append(f"--{precision}")
    args.append("--xformers" if settings.get("xformers") else "--sdpa")
    if isinstance(settings.get("clip_skip"), int):
        args += ["--clip_skip", str(settings["clip_skip"])]
    if settings.get("vae"):
        args += ["--vae", str(settings["vae"])]
    if settings.get("no_half_vae"):
        args.append("--no_half_vae")
    if tokenizer_cache_dir:
        args += ["--tokenizer_cache_dir", tokenizer_cache_dir]
    return args


def estimate_seconds(images: int, calls: int, per_image_s: float, load_s: float) -> float:
    """Host time of a grid: a model load per call, then each image."""
    return calls * load_s + images * per_image_s
