"""Training states (``--save_state`` folders) and where a resumed leg of a run starts. Pure.

What sd-scripts does (main @ 48d368fa: train_network.py, library/train_util.py, docs/sources.md
[58]; observed in tests/data/sdscripts/sample_run3_resume_stdout.log and resume_chain/ [15]):

- A state folder is ``<name>-<epoch:06d>-state`` (epoch saves), ``<name>-step<step:08d>-state``
  (step saves) or ``<name>-state`` (end of training); its ``train_state.json`` holds
  ``{"current_epoch": E, "current_step": S}``.
- ``E`` is the epoch the state was saved in, counted from the start of the run (the epoch loop
  runs over absolute epoch numbers, resumed or not).
- ``S`` is ``global_step`` at the save. A resumed process starts ``global_step`` at 0 again, so a
  state saved after a resume counts only the steps of that process.
- ``--resume`` without ``--initial_epoch``/``--initial_step`` starts at epoch index
  ``S // steps_per_epoch``. After a second resume ``S`` is too small, so training restarts at an
  epoch it already did (the miscount), and its step-numbered saves repeat earlier names.
- ``--initial_epoch N`` wins over ``S`` (a warning says so) and starts at epoch index ``N - 1``;
  the optimizer, scheduler and network still come from the state.

So kohyawrap never trusts ``S`` across legs: it passes ``initial_epoch = epochs done + 1``, where
the epochs done come from ``E`` (epoch and end states) or from the leg's recorded step offset
plus ``S`` (step states), and it adds that offset to every step it shows and records.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kohyawrap.errors import UsageError

TRAIN_STATE = "train_state.json"
StateKind = Literal["epoch", "step", "end"]
_MAX_STATE_JSON = 4096


@dataclass(frozen=True)
class TrainState:
    """``train_state.json``: the epoch it was saved in, and sd-scripts' step count then."""

    epoch: int
    step: int


def parse_train_state(text: str | bytes, where: str = TRAIN_STATE) -> TrainState:
    """A ``train_state.json``; UsageError when it is not one."""
    if len(text) > _MAX_STATE_JSON:
        raise UsageError(f"{where} is too large to be a training state")
    try:
        data = json.loads(text)
        return TrainState(int(data["current_epoch"]), int(data["current_step"]))
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{where} is not a training state ({err})") from err


def state_kind(folder: str, output_name: str) -> StateKind | None:
    """Which save made ``folder`` for a LoRA named ``output_name`` (None: not one of its states)."""
    # sd-scripts' defaults without output_name: epoch / at / last (docs/sources.md [58]).
    for kind, default, pattern in (
        ("epoch", "epoch", r"-\d{6}-state"),
        ("step", "at", r"-step\d{8}-state"),
        ("end", "last", r"-state"),
    ):
        for stem in {output_name or default, default}:
            if re.fullmatch(re.escape(stem) + pattern, folder):
                return kind  # type: ignore[return-value]
    return None


@dataclass(frozen=True)
class StateRef:
    """A state folder a leg saved, and where a copy of it is: on the laptop, on a host, or both."""

    leg: int
    folder: str  # "demo-000001-state"
    kind: StateKind
    state: TrainState
    local: str = ""  # run-relative folder on the laptop ("checkpoints/demo-000001-state")
    remote: str = ""  # absolute folder on ``target``
    target: str = ""

    @property
    def label(self) -> str:
        return f"leg {self.leg}: {self.folder}"


def epochs_done(ref: StateRef, steps_per_epoch: int, step_offset: int) -> int:
    """How many whole epochs the run had done when ``ref`` was saved.

    Epoch and end states carry the epoch; a step state is placed by the run's own step count
    (the leg's offset plus sd-scripts' count), since its epoch was not finished.
    """
    if ref.kind == "step":
        return (step_offset + ref.state.step) // max(1, steps_per_epoch)
    return ref.state.epoch


def newest(
    refs: Iterable[StateRef], offsets: Mapping[int, int], steps_per_epoch: int
) -> StateRef | None:
    """The state furthest into the run (a later leg, then a laptop copy, wins a tie)."""

    def progress(ref: StateRef) -> tuple[int, int, int, bool]:
        done = epochs_done(ref, steps_per_epoch, offsets.get(ref.leg, 0))
        steps = offsets.get(ref.leg, 0) + ref.state.step if ref.kind == "step" else 0
        return (done, steps, ref.leg, bool(ref.local))

    return max(refs, key=progress, default=None)


def resume_settings(
    start_epoch: int, state_folder: str, *, epochs: int | None = None
) -> tuple[tuple[str, Any], ...]:
    """The options a leg adds to the first leg's: resume from the state uploaded beside it, at
    ``start_epoch`` (1-based); ``epochs``: a new max_train_epochs (``extend``)."""
    pairs: list[tuple[str, Any]] = [
        ("resume", f"resume/{state_folder}"),
        ("initial_epoch", start_epoch),
    ]
    if epochs is not None:
        pairs.append(("max_train_epochs", epochs))
    return tuple(pairs)


RESUME_KEYS = ("resume", "initial_epoch", "initial_step", "skip_until_initial_step")


def state_refs_from_pulled(
    leg: int, pulled: Mapping[str, Any], output_name: str, read: Callable[[str], bytes]
) -> list[StateRef]:
    """The states among a leg's pulled files (``output/<state>/train_state.json`` keys).

    ``read(local_rel_path) -> bytes`` reads a pulled file (the laptop's copy).
    """
    found = []
    for rel, info in sorted(pulled.items()):
        parts = rel.split("/")
        if len(parts) != 3 or parts[0] != "output" or parts[2] != TRAIN_STATE:
            continue
        kind = state_kind(parts[1], output_name)
        if kind is None:
            continue
        local = info.path.rsplit("/", 1)[0]
        state = parse_train_state(read(info.path), f"{info.path}")
        found.append(StateRef(leg, parts[1], kind, state, local=local))
    return found
