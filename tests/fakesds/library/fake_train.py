"""A stand-in for sd-scripts' LoRA training, for kohyawrap's tests: no torch, no GPU, no model.

It reads options and the dataset like sd-scripts, prints what sd-scripts prints in the same formats
and order (the captured runs in tests/data/sdscripts/sample_run*_stdout.log), and writes real
.safetensors checkpoints, state folders and TensorBoard event files with sd-scripts' names. The
committed ``fake_behaviour.json`` makes it slow or fail (oom, crash, nan, disk, import).

Mistakes fail as in sd-scripts: an int ``resolution`` crashes on ``.split``; a missing
``network_module`` crashes in ``importlib.import_module(None)`` after the dataset is prepared; a
dataset with no images logs "No data found" and exits 0.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library import fake_config, fake_dit, fake_images, fake_outputs, kw_safetensors
from library.fake_console import Console, format_num, frame

REPO = Path(__file__).resolve().parent.parent
_IGNORED = "ignore directory without repeats / 繰り返し回数のないディレクトリを無視します"
_NO_DATA = (
    "No data found. Please verify arguments (train_data_dir must be the parent of folders with"
    " images) / 画像がありません。引数指定を確認してください（train_data_dirには画像があるフォルダ"
    "ではなく、画像があるフォルダの親フォルダを指定する必要があります）"
)
_OPTIMIZERS = {
    "adamw": "torch.optim.adamw.AdamW",
    "adamw8bit": "bitsandbytes.optim.adamw.AdamW8bit",
    "adafactor": "transformers.optimization.Adafactor",
    "lion8bit": "bitsandbytes.optim.lion.Lion8bit",
}


class OutOfMemoryError(RuntimeError):
    """Shown as ``torch.OutOfMemoryError`` in the traceback, like the real one."""

    __module__ = "torch"


class SafetensorError(Exception):
    """Shown as ``safetensors_rust.SafetensorError``, what a full disk raises while saving."""

    __module__ = "safetensors_rust"


def _behaviour() -> dict[str, Any]:
    path = REPO / "fake_behaviour.json"
    defaults = {
        "step_seconds": 0.0,
        "fail": None,
        "fail_at_step": 2,
        "startup_seconds": 0.0,
        "oom_max_batch": None,
        "oom_fixed_by_checkpointing": False,
        "lora_effect": 1.0,
    }
    return {**defaults, **(json.loads(path.read_text()) if path.is_file() else {})}


def _git_commit() -> str | None:
    # Like sd-scripts: git's own complaint ("fatal: not a git repository") reaches the log.
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@dataclass
class Run:
    """Everything the training loop and the savers need."""

    family: str
    options: dict[str, Any]
    console: Console
    behaviour: dict[str, Any]
    subsets: list[fake_config.Subset] = field(default_factory=list)
    resolution: tuple[int, int] = (512, 512)
    schedule: fake_config.Schedule | None = None
    commit: str | None = None
    session_id: int = 0
    started_at: float = 0.0
    optimizer_name: str = ""
    events: fake_outputs.EventLog | None = None


def _load_options(run_argv: list[str], console: Console) -> dict[str, Any]:
    cli = fake_config.parse_command_line(run_argv)
    path = fake_config.config_path(str(cli["config_file"])) if "config_file" in cli else None
    if path is not None and not path.is_file():
        console.info(f"{path} not found.", "train_util.py:4740")
        sys.exit(1)
    if path is not None:
        console.info(f"Loading settings from {path}...", "train_util.py:4744")
    options = fake_config.merged_options(run_argv, path)
    console.simple = bool(options.get("console_log_simple"))
    return options


def _prepare_dataset(run: Run) -> int:
    """Log the dataset like sd-scripts; return images x repeats (0 = nothing to train on)."""
    o, con = run.options, run.console
    if o.get("resolution") is not None or not o.get("dataset_config"):
        run.resolution = fake_config.resolution(o)  # checked first, even with a dataset_config
    con.info("Using DreamBooth method.", "train_network.py:530")
    extension = str(o.get("caption_extension", ".caption"))
    if o.get("dataset_config"):
        path = Path(str(o["dataset_config"]))
        run.subsets, size, batch = fake_config.read_dataset_config(path, o)
        run.resolution = size or run.resolution
        o["train_batch_size"] = batch or o.get("train_batch_size", 1)
    else:
        for key, is_reg in (("train_data_dir", False), ("reg_data_dir", True)):
            if o.get(key):
                subsets, ignored = fake_config.read_concept_folders(
                    Path(str(o[key])), extension, is_reg
                )
                for name in ignored:
                    con.warning(
                        f"{_IGNORED}: {name}",
                        "config_util.py:613",
                    )
                run.subsets += subsets
    con.info("prepare images.", "train_util.py:2112")
    for subset in run.subsets:
        con.info(
            f"found directory {subset.folder} contains {len(subset.images)} image files",
            "train_util.py:2059",
        )
        if subset.missing_captions:
            count = len(subset.missing_captions)
            names = "\n".join(str(p) for p in subset.missing_captions)
            con.warning(
                f"No caption file found for {count} images. Training will continue without"
                " captions for these images. If class token exists, it will be used. / "
                f"{count}枚の画像にキャプションファイルが見つかりませんでした。\n{names}",
                "train_util.py:2087",
            )
    train = sum(s.count for s in run.subsets if not s.is_reg)
    reg = sum(s.count for s in run.subsets if s.is_reg)
    con.info(f"{train} train images with repeats.", "train_util.py:2158")
    con.info(f"{reg} reg images with repeats.", "train_util.py:2162")
    if reg == 0:
        con.warning(
            "no regularization images / 正則化画像が見つかりませんでした", "train_util.py:2167"
        )
    return train


def _load_model(run: Run) -> None:
    o, con = run.options, run.console
    con.info("preparing accelerator", "train_network.py:593")
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
    con.print(f"accelerator device: {'cpu' if cpu else 'cuda'}")
    if run.family in fake_dit.DIT_FAMILIES:
        time.sleep(float(run.behaviour["startup_seconds"]))
        fake_dit.load(run)
    else:
        con.info("loading model for process 0/1", "train_util.py:5574")
        con.info(
            f"load StableDiffusion checkpoint: {o.get('pretrained_model_name_or_path')}",
            "train_util.py:5530",
        )
        time.sleep(float(run.behaviour["startup_seconds"]))
        for part in ("u-net", "vae", "text encoder"):
            con.info(f"loading {part}: <All keys matched successfully>", "model_util.py:1011")
    module_name = o.get("network_module")
    con.print(f"import network module: {module_name}")
    # None crashes here exactly as in sd-scripts (importlib calls None.startswith).
    network = importlib.import_module(module_name)  # type: ignore[arg-type]
    dim, alpha = o.get("network_dim") or 4, o.get("network_alpha", 1.0)
    con.info(f"create LoRA network. base dim (rank): {dim}, alpha: {alpha}", "lora.py:935")
    network.describe(con, bool(o.get("network_train_unet_only")))


def _prepare_optimizer(run: Run) -> None:
    o, con = run.options, run.console
    con.print("prepare optimizer, data loader etc.")
    optimizer = str(o.get("optimizer_type") or "AdamW")
    if run.behaviour["fail"] == "import":  # what an 8-bit optimizer without bitsandbytes does
        raise ModuleNotFoundError("No module named 'bitsandbytes'", name="bitsandbytes")
    run.optimizer_name = _OPTIMIZERS.get(optimizer.lower(), optimizer)
    con.info(f"use {optimizer} optimizer | {{}}", "train_util.py:5096")


def _override_steps(run: Run) -> None:
    s = run.schedule
    assert s is not None
    if s.from_epochs:
        run.console.print(
            f"override steps. steps for {s.epochs} epochs is / 指定エポックまでのステップ数:"
            f" {s.total_steps}"
        )


def _announce(run: Run) -> None:
    s, con = run.schedule, run.console
    assert s is not None
    reg = sum(x.count for x in run.subsets if x.is_reg)
    con.print("running training / 学習開始")
    con.print(f"  num train images * repeats / 学習画像の数×繰り返し回数: {s.num_images}")
    con.print("  num validation images * repeats / 学習画像の数×繰り返し回数: 0")
    con.print(f"  num reg images / 正則化画像の数: {reg}")
    con.print(f"  num batches per epoch / 1epochのバッチ数: {s.batches_per_epoch}")
    con.print(f"  num epochs / epoch数: {s.epochs}")
    con.print(f"  batch size per device / バッチサイズ: {run.options.get('train_batch_size', 1)}")
    con.print(
        "  gradient accumulation steps / 勾配を合計するステップ数 ="
        f" {run.options.get('gradient_accumulation_steps', 1)}"
    )
    con.print(f"  total optimization steps / 学習ステップ数: {s.total_steps}")


def _steps_from_state(run: Run) -> int | None:
    """``--resume <state folder>``: load it like accelerate does; the step count it saved."""
    folder = run.options.get("resume")
    if not folder:
        return None
    con = run.console
    con.info(f"resume training from local state: {folder}", "train_util.py:4776")
    con.info(f"Loading states from {folder}", "accelerator.py:3405")
    state = json.loads((Path(str(folder)) / "train_state.json").read_text())
    # sd-scripts logs the dict as Python prints it: {'current_epoch': 1, 'current_step': 40}
    con.info(f"load train state from {folder}/train_state.json: {state!r}", "train_network.py:969")
    for what in ("model weights", "optimizer states", "scheduler states"):
        con.info(f"All {what} loaded successfully", "checkpointing.py:240")
    con.info("All dataloader sampler states loaded successfully", "checkpointing.py:272")
    con.info("Could not load random states", "checkpointing.py:303")
    con.info("Loading in 0 custom states", "accelerator.py:3479")
    return int(state["current_step"])


def _first_epoch(run: Run, steps_from_state: int | None) -> int:
    """The first epoch index, by sd-scripts' rule (train_network.py at the pinned commit).

    ``initial_epoch`` / ``initial_step`` win over the state's step count (with a warning); the
    start epoch is that step count divided by the steps per epoch. The epoch restarts at its first
    batch (without ``skip_until_initial_step``, which the fake does not model).
    """
    s = run.schedule
    assert s is not None
    initial_epoch = fake_config.number(run.options, "initial_epoch")
    initial_step = fake_config.number(run.options, "initial_step")
    if initial_epoch is not None or initial_step is not None:
        if steps_from_state is not None:
            run.console.warning(
                "steps from the state is ignored because initial_step is specified /"
                " initial_stepが指定されているため、stateからのステップ数は無視されます",
                "train_network.py:1236",
            )
        step = initial_step if initial_step is not None else (initial_epoch - 1) * s.steps_per_epoch
    else:
        step = steps_from_state or 0
    if step > 0:
        assert s.total_steps > step, (
            "max_train_steps should be greater than initial step / max_train_stepsは初期ステップより"
            f"大きい必要があります: {s.total_steps} vs {step}"
        )
    return int(step) // s.steps_per_epoch


class Trainer:
    """The step loop: progress bar, losses, saves, failures."""

    def __init__(self, run: Run) -> None:
        assert run.schedule is not None
        self.run, self.s, self.con = run, run.schedule, run.console
        self.o = run.options
        self.rng = random.Random(str(self.o.get("seed")))
        self.losses: list[float] = []
        self.avr: float | None = None
        self.step = 0
        self.started = time.time()

    def _bar(self, end: str = "") -> None:
        postfix = f"avr_loss={format_num(self.avr)}" if self.avr is not None else ""
        self.con.bar(
            frame("steps", self.step, self.s.total_steps, time.time() - self.started, postfix), end
        )

    def _loss(self) -> float:
        behaviour = self.run.behaviour
        if behaviour["fail"] == "nan" and self.step >= behaviour["fail_at_step"]:
            return math.nan
        return 1.2 - 0.2 * self.step / self.s.total_steps + self.rng.uniform(-0.08, 0.08)

    def _out_of_memory(self) -> bool:
        """Whether these settings "do not fit": above ``oom_max_batch``, and without gradient
        checkpointing when ``oom_fixed_by_checkpointing`` (like a card a little too small)."""
        behaviour = self.run.behaviour
        limit = behaviour["oom_max_batch"]
        if limit is not None and fake_config.number(self.o, "train_batch_size", 1) <= limit:
            return False
        return not (
            behaviour["oom_fixed_by_checkpointing"] and self.o.get("gradient_checkpointing")
        )

    def _fail_now(self) -> None:
        behaviour = self.run.behaviour
        if self.step != behaviour["fail_at_step"]:
            return
        if behaviour["fail"] == "oom" and self._out_of_memory():
            raise OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of"
                " 23.55 GiB of which 1.06 GiB is free. Including non-PyTorch memory, this process"
                " has 22.48 GiB memory in use. Of the allocated memory 21.37 GiB is allocated by"
                " PyTorch, and 640.21 MiB is reserved by PyTorch but unallocated. If reserved but"
                " unallocated memory is large try setting"
                " PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
            )
        if behaviour["fail"] == "crash":
            raise RuntimeError(f"fake sd-scripts crashed at step {self.step} (fake_behaviour.json)")

    def train_step(self, epoch: int, index: int, first_epoch: int) -> None:
        """One optimization step: two bar redraws, the loss record and TensorBoard scalars."""
        time.sleep(float(self.run.behaviour["step_seconds"]))
        self.step += 1
        self._fail_now()
        loss = self._loss()
        # sd-scripts' loss recorder: appended in the first epoch, replaced in place afterwards.
        if epoch == first_epoch or index >= len(self.losses):
            self.losses.append(loss)
        else:
            self.losses[index] = loss
        self._bar()
        self.avr = sum(self.losses) / len(self.losses)
        self._bar()
        if self.run.events is not None:
            unet_lr = float(self.o.get("unet_lr") or self.o.get("learning_rate", 2e-06))
            te_lr = self.o.get("text_encoder_lr") or self.o.get("learning_rate", 2e-06)
            te_lr = float(te_lr[0] if isinstance(te_lr, list) else te_lr)
            self.run.events.scalars(
                self.step,
                {
                    "loss/current": loss,
                    "loss/average": self.avr,
                    "lr/textencoder": te_lr,
                    "lr/unet": unet_lr,
                    "lr/group1": unet_lr,
                },
            )

    def _tensors(self) -> dict[str, Any]:
        effect = float(self.run.behaviour["lora_effect"])
        return fake_outputs.lora_tensors(self.o, self.run.family, self.step, effect)

    def sample(self, epoch: int) -> None:
        """Sample images at the end of an epoch, as sd-scripts' sample_images does: one PNG per
        prompt line in ``<output_dir>/sample/<name>_e<epoch:06d>_<nn>_<time>_<seed>.png``."""
        every = fake_config.number(self.o, "sample_every_n_epochs")
        prompts = self.o.get("sample_prompts")
        if not every or not prompts or epoch % every:
            return
        self.con.info("", "train_util.py:6393")
        self.con.info(
            f"generating sample images at step / サンプル画像生成 ステップ: {self.step}",
            "train_util.py:6394",
        )
        path = Path(str(prompts))
        if not path.is_file():
            self.con.error(
                f"No prompt file / プロンプトファイルがありません: {path}", "train_util.py:6396"
            )
            return
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if ln and ln[0] != "#"]
        folder = Path(str(self.o.get("output_dir", "."))) / "sample"
        folder.mkdir(parents=True, exist_ok=True)
        ups = [v for name, (dtype, _, data) in self._tensors().items() if name.endswith("lora_up.weight")
               for v in fake_images._floats(data, dtype)]  # fmt: skip
        effect = 100 * sum(abs(v) for v in ups) / len(ups) if ups else 0.0
        name = self.o.get("output_name")
        for i, line in enumerate(lines):
            prompt, *parts = line.split(" --")
            options = dict(p.partition(" ")[::2] for p in parts)
            seed = int(options["d"]) if options.get("d", "").isdigit() else None
            size = (int(options.get("w") or 512), int(options.get("h") or 512))
            self.con.info(f"prompt: {prompt}", "train_util.py:6542")
            stamp = time.strftime("%Y%m%d%H%M%S")
            file = f"{name + '_' if name else ''}e{epoch:06d}_{i:02d}_{stamp}{'' if seed is None else f'_{seed}'}.png"
            fake_images.write_image(
                folder / file, prompt, seed or 0, size, effect, (200, 40, 40), {}
            )

    def save(self, stem: str, *, epoch: int) -> None:
        """``saving checkpoint: <path>`` and the file (half of it when the disk "fills up")."""
        out = Path(str(self.o.get("output_dir", ".")))
        out.mkdir(parents=True, exist_ok=True)
        path = f"{out.as_posix()}/{stem}.{self.o.get('save_model_as') or 'safetensors'}"
        self.con.print(f"\nsaving checkpoint: {path}")
        tensors = self._tensors()
        meta = {}
        if not self.o.get("no_metadata"):
            meta = fake_outputs.metadata(self.run, epoch=epoch, step=self.step, tensors=tensors)
        data = kw_safetensors.encode_safetensors(tensors, meta)
        behaviour = self.run.behaviour
        if behaviour["fail"] == "disk" and self.step >= behaviour["fail_at_step"]:
            Path(path).write_bytes(data[: len(data) // 2])
            raise SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull,"
                ' message: "No space left on device" })'
            )
        Path(path).write_bytes(data)  # sd-scripts writes in place, not atomically
        vanish = behaviour["fail"] == "vanish" and self.step >= behaviour["fail_at_step"]
        if vanish and not getattr(self, "_vanished", False):
            # Announced, written, then gone (a cleaner, a full disk's victim): the one missing file
            # a run must not call finished without.
            self._vanished = True
            Path(path).unlink()
        if self.run.commit is None:
            self.con.warning(
                "Failed to get git commit hash, using fallback", "sai_model_spec.py:288"
            )

    def save_state(self, stem: str, epoch: int, reason: str) -> None:
        """A ``--save_state`` folder next to the checkpoint, logged like accelerate does."""
        folder = Path(str(self.o.get("output_dir", "."))) / f"{stem}-state"
        self.con.info(reason, "train_util.py:5942")
        self.con.info(f"Saving current state to {folder.as_posix()}", "accelerator.py:3241")
        self.con.info(
            f"save train state to {folder.as_posix()}/train_state.json"
            f" at epoch {epoch} step {self.step}",
            "train_network.py:946",
        )
        fake_outputs.save_state(folder, self._tensors(), epoch, self.step)
        self.con.info(
            f"Model weights saved in {folder.as_posix()}/model.safetensors", "checkpointing.py:108"
        )

    def _epoch(self, epoch: int, first_epoch: int, every_steps: int | None) -> None:
        self.con.print(f"\nepoch {epoch + 1}/{self.s.epochs}\n")
        # The collator's epoch starts at 0 in every process, resumed or not (sample_run3_resume).
        before = 0 if epoch == first_epoch else epoch
        self.con.info(
            f"epoch is incremented. current_epoch: {before}, epoch: {epoch + 1}",
            "train_util.py:784",
        )
        for index in range(self.s.steps_per_epoch):
            self.train_step(epoch, index, first_epoch)
            if every_steps and self.step % every_steps == 0:
                stem = fake_outputs.checkpoint_stem(self.o, step=self.step)
                self.save(stem, epoch=epoch)  # sd-scripts records step saves with a 0-based epoch
                if self.o.get("save_state"):
                    self.save_state(stem, epoch + 1, f"saving state at step {self.step}")
            if self.step >= self.s.total_steps:
                return

    def loop(self, first_epoch: int) -> int:
        """All epochs; returns the last epoch number (1-based).

        After ``--resume`` the step counter restarts at 0 while the bar keeps the full total, so
        the run ends when the epochs run out (sd-scripts does the same).
        """
        every_epochs = fake_config.number(self.o, "save_every_n_epochs")
        every_steps = fake_config.number(self.o, "save_every_n_steps")
        self._bar()
        epoch = first_epoch
        for epoch in range(first_epoch, self.s.epochs):
            self._epoch(epoch, first_epoch, every_steps)
            if self.run.events is not None and self.avr is not None:
                self.run.events.scalars(epoch + 1, {"loss/epoch_average": self.avr})
            if every_epochs and (epoch + 1) % every_epochs == 0 and epoch + 1 < self.s.epochs:
                stem = fake_outputs.checkpoint_stem(self.o, epoch=epoch + 1)
                self.save(stem, epoch=epoch + 1)
                if self.o.get("save_state"):
                    self.save_state(stem, epoch + 1, f"saving state at epoch {epoch + 1}")
            self.sample(epoch + 1)
            if self.step >= self.s.total_steps:
                break
        return epoch + 1

    def finish(self, last_epoch: int) -> None:
        """Last state, final checkpoint, ``model saved.``, and tqdm's closing redraw."""
        stem = fake_outputs.checkpoint_stem(self.o)
        if self.o.get("save_state") or self.o.get("save_state_on_train_end"):
            self.save_state(stem, last_epoch, "saving last state.")
        self.save(stem, epoch=last_epoch)
        self.con.info("model saved.", "train_network.py:1729")
        self._bar(end="\n")


_FAMILIES = {
    "train_network.py": "sd",
    "sdxl_train_network.py": "sdxl",
    "flux_train_network.py": "flux",  # "chroma" with --model_type chroma
    "sd3_train_network.py": "sd3",
}


def main(script: str, argv: list[str]) -> None:
    """Run the fake training for ``script`` (train_network.py, sdxl_train_network.py,
    flux_train_network.py or sd3_train_network.py)."""
    console = Console()
    options = _load_options(argv, console)
    family = _FAMILIES[script]
    if family == "flux" and options.get("model_type") == "chroma":
        family = "chroma"
    run = Run(family, options, console, _behaviour())
    if family in fake_dit.DIT_FAMILIES:
        fake_dit.tokenizer_strategy(run)
    num_images = _prepare_dataset(run)
    if num_images == 0:
        console.error(_NO_DATA, "train_network.py:569")
        return  # sd-scripts returns here: exit status 0
    if family in fake_dit.DIT_FAMILIES:
        fake_dit.assert_extra_args(run)
    _load_model(run)
    _prepare_optimizer(run)
    processes = int(os.environ.get("WORLD_SIZE") or 1)
    run.schedule = fake_config.schedule(num_images, options, processes)
    _override_steps(run)
    first_epoch = _first_epoch(run, _steps_from_state(run))
    _announce(run)
    run.commit = _git_commit()
    run.session_id = random.randint(0, 2**31)
    run.started_at = time.time()
    run.events = fake_outputs.EventLog(options)
    trainer = Trainer(run)
    last_epoch = trainer.loop(first_epoch)
    trainer.finish(last_epoch)
