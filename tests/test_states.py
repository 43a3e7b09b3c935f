"""Training states and where a resumed leg starts (kohyawrap/launcher/states.py), checked on
literals and on the captured real resume (tests/data/sdscripts/sample_run3_resume_stdout.log)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohyawrap.errors import UsageError
from kohyawrap.launcher.states import (
    StateRef,
    TrainState,
    epochs_done,
    newest,
    parse_train_state,
    resume_settings,
    state_kind,
)
from kohyawrap.logparse import parse
from kohyawrap.models import EpochStart, Progress

DATA = Path(__file__).parent / "data" / "sdscripts"


@pytest.mark.parametrize(
    ("folder", "kind"),
    [
        ("demo-000001-state", "epoch"),
        ("demo-step00000004-state", "step"),
        ("demo-state", "end"),
        ("epoch-000002-state", "epoch"),  # sd-scripts' names without output_name
        ("at-step00000010-state", "step"),
        ("last-state", "end"),
        ("other-000001-state", None),
        ("demo-000001", None),
        ("demo-01-state", None),
    ],
)
def test_state_kinds_follow_sd_scripts_names(folder: str, kind: str | None) -> None:
    assert state_kind(folder, "demo") == kind


def test_state_kinds_with_names_in_any_script() -> None:
    assert state_kind("柴犬 v2-000003-state", "柴犬 v2") == "epoch"
    assert state_kind("a.b-state", "a.b") == "end"
    assert state_kind("aXb-state", "a.b") is None  # the name is matched literally


def test_train_state_as_sd_scripts_writes_it() -> None:
    # what sd-scripts wrote in the captured run: the resume in sample_run3_resume_stdout.log loads
    # this state back as {'current_epoch': 1, 'current_step': 40} (docs/sources.md [58])
    assert parse_train_state('{"current_epoch": 1, "current_step": 40}') == TrainState(1, 40)
    for bad in ("", "[]", '{"current_epoch": 1}', '{"current_epoch": "x", "current_step": 1}'):
        with pytest.raises(UsageError):
            parse_train_state(bad)
    with pytest.raises(UsageError, match="too large"):
        parse_train_state("{" + " " * 10_000 + "}")


def test_the_real_resume_restarts_the_step_count() -> None:
    """sample_run3_resume: a state saved at step 40 of 80; the resumed run starts at epoch 2
    with its bar still at total 80, and counts steps from 1 again (ending at 40/80)."""
    log = (DATA / "sample_run3_resume_stdout.log").read_bytes()
    assert b"load train state from output/demo-000001-state/train_state.json:" in log
    events = parse(log)
    assert [e for e in events if isinstance(e, EpochStart)] == [EpochStart(2, 2)]
    steps = [e for e in events if isinstance(e, Progress)]
    assert (steps[1].step, steps[-1].step, steps[-1].total) == (1, 40, 80)


def _ref(leg: int, folder: str, kind: str, epoch: int, step: int, local: str = "") -> StateRef:
    return StateRef(leg, folder, kind, TrainState(epoch, step), local=local)  # type: ignore[arg-type]


def test_epochs_done_never_trusts_a_later_legs_step_count() -> None:
    # Leg 2 started at step 40 (epoch 2): its state at the end of epoch 3 says step 80, not 120.
    leg2 = _ref(2, "demo-000003-state", "epoch", 3, 80)
    assert epochs_done(leg2, 40, 40) == 3
    assert 80 // 40 == 2  # what sd-scripts alone would resume from: epoch 3 again
    mid = _ref(2, "demo-step00000050-state", "step", 3, 50)
    assert epochs_done(mid, 40, 40) == 2  # step 90 of the run: epoch 3 is redone from its start
    assert epochs_done(_ref(1, "demo-state", "end", 4, 160), 40, 0) == 4


def test_newest_state_across_legs() -> None:
    refs = [
        _ref(1, "demo-000001-state", "epoch", 1, 40),
        _ref(1, "demo-000002-state", "epoch", 2, 80),
        _ref(2, "demo-000003-state", "epoch", 3, 40),  # leg 2 began at step 80
        _ref(2, "demo-step00000020-state", "step", 3, 20),
    ]
    assert newest(refs, {1: 0, 2: 80}, 40) == refs[2]
    assert newest([], {}, 40) is None
    laptop = _ref(2, "demo-000003-state", "epoch", 3, 40, local="checkpoints/leg2/x")
    assert newest([refs[2], laptop], {2: 80}, 40) == laptop  # a copy on the laptop wins a tie


def test_resume_settings() -> None:
    assert resume_settings(3, "demo-000002-state") == (
        ("resume", "resume/demo-000002-state"),
        ("initial_epoch", 3),
    )
    assert resume_settings(11, "demo-state", epochs=14)[-1] == ("max_train_epochs", 14)
