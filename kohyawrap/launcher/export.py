"""``kohyawrap export RUN --to DIR``: copy the chosen LoRA into a WebUI / ComfyUI LoRA folder.

The file is the checkpoint to try first (the report's choice) unless ``--epoch`` names one. Its
bytes are checked against the sha256 recorded when it was pulled, before and after the copy, and
it gets a clear name (``<name>-epoch06.safetensors``). Nothing is ever overwritten: the copy is
linked into place only if the name is free (a file with the same bytes already there is fine).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kohyawrap.errors import UsageError
from kohyawrap.evaluate.gridplan import Checkpoint
from kohyawrap.evaluate.loss import suggest
from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.fetch import ON_WINDOWS
from kohyawrap.launcher.legs import pulled_everywhere
from kohyawrap.launcher.results import checkpoints_of
from kohyawrap.launcher.runreport import verdict_of
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.names import local_file_name, remote_name_problem


@dataclass(frozen=True)
class Exported:
    """Where the LoRA went, which checkpoint it is, and whether it was already there."""

    source: Path
    target: Path
    checkpoint: Checkpoint
    reason: str
    already_there: bool
    sha256: str


def export_name(output_name: str, checkpoint: Checkpoint, suffix: str) -> str:
    """``my_lora-epoch06.safetensors``, ``my_lora-step00500.safetensors``."""
    if checkpoint.kind == "step" and checkpoint.step is not None:
        tag = f"step{checkpoint.step:05d}"
    elif checkpoint.epoch is not None:
        tag = f"epoch{checkpoint.epoch:02d}"
    else:
        tag = "last"
    return local_file_name(f"{output_name}-{tag}{suffix}", windows=ON_WINDOWS)


def choose_checkpoint(run: RunDir, epoch: int | None) -> tuple[Checkpoint, str]:
    """The checkpoint of ``epoch`` or, without one, the report's choice."""
    m = run.load()
    checkpoints = checkpoints_of(run, m)
    if not checkpoints:
        raise UsageError(
            f"run {run.run_id} has no verified checkpoint on this laptop",
            hint=f"`kohyawrap pull {run.run_id}` fetches them",
        )
    if epoch is not None:
        found = [c for c in checkpoints if c.epoch == epoch and c.kind != "step"]
        if not found:
            have = ", ".join(str(c.epoch) for c in checkpoints if c.kind != "step" and c.epoch)
            raise UsageError(
                f"run {run.run_id} has no checkpoint of epoch {epoch}",
                hint=f"epochs with a checkpoint: {have or 'none'}",
            )
        return found[-1], f"epoch {epoch}, as asked"
    _, verdict = verdict_of(run, m)
    chosen = suggest(verdict, checkpoints)
    assert chosen is not None  # there are checkpoints
    return chosen


def export(
    run: RunDir, dest: Path, *, epoch: int | None = None, name: str | None = None
) -> Exported:
    """Copy the chosen LoRA into ``dest`` (an existing folder) under a clear, free name."""
    if not dest.is_dir():
        raise UsageError(
            f"--to {dest}: no such folder",
            hint="give your WebUI's models/Lora or ComfyUI's models/loras folder",
        )
    if name is not None and (problem := remote_name_problem(name)) is not None:
        raise UsageError(f"--name {name!r}: {problem}", hint="a plain file name, e.g. my_lora_v2")
    checkpoint, reason = choose_checkpoint(run, epoch)
    m = run.load()
    source = run.path / checkpoint.local
    # Any leg's file: an extended run's earlier checkpoints are recorded with their leg.
    recorded = pulled_everywhere(m)[checkpoint.local].sha256
    if file_sha256(source) != recorded:
        raise UsageError(
            f"{source} is not the file that was pulled (its sha256 changed)",
            hint=f"move it away and `kohyawrap pull {run.run_id}` fetches it again",
        )
    file_name = (
        local_file_name(name, windows=ON_WINDOWS)
        if name
        else export_name(m.plan.output_name, checkpoint, source.suffix)
    )
    if not file_name.endswith(source.suffix):
        file_name += source.suffix
    target = dest / file_name
    if target.exists():
        if target.is_file() and file_sha256(target) == recorded:
            return Exported(source, target, checkpoint, reason, True, recorded)
        raise UsageError(
            f"{target} exists and is a different file: not overwritten",
            hint="choose another name with --name",
        )
    _copy_new(source, target, recorded)
    return Exported(source, target, checkpoint, reason, False, recorded)


def _copy_new(source: Path, target: Path, sha256: str) -> None:
    """Copy to a temporary name beside ``target``, verify, then link it to ``target`` (which
    fails rather than replace a file that appeared meanwhile)."""
    tmp = target.with_name(f".{target.name}.kohyawrap-{os.getpid()}")
    try:
        shutil.copyfile(source, tmp)
        if file_sha256(tmp) != sha256:
            raise UsageError(f"the copy in {target.parent} does not match the pulled file")
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise UsageError(f"{target} appeared meanwhile: not overwritten") from None
        except OSError:
            # File systems without hard links (FAT, some network shares): claim the name first.
            with target.open("xb") as out, tmp.open("rb") as src:
                shutil.copyfileobj(src, out)
    finally:
        tmp.unlink(missing_ok=True)
