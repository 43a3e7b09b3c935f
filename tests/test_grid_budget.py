"""A grid that runs out of money is stopped by the laptop, what it drew is kept, and the run stays
as it was. The launcher is driven as a library with a clock that runs 50 times faster than the
wall, so minutes of a rented card pass in a second."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kohyawrap.evaluate.options import parse_grid
from kohyawrap.hosts.connect import ConnectOptions
from kohyawrap.launcher.grid import GridRequest
from kohyawrap.launcher.manifest import RunStatus
from kohyawrap.launcher.report import SilentReporter
from kohyawrap.launcher.runstore import RunDir, RunStore
from kohyawrap.launcher.stages import FollowOptions
from kohyawrap.launcher.verbs import Launcher
from tests.fixtures.fakesds import FakeBehaviour, FakeSdScripts
from tests.fixtures.runs import only_run
from tests.test_evaluate_e2e import args_for, cli, make_world

pytestmark = pytest.mark.slow
SPEED = 50.0


class FastClock:
    """Wall time x SPEED since the clock was made; sleeps are SPEED times shorter."""

    def __init__(self) -> None:
        self.start_wall, self.start_mono = time.time(), time.monotonic()

    def now(self) -> float:
        return self.start_wall + (time.time() - self.start_wall) * SPEED

    def monotonic(self) -> float:
        return self.start_mono + (time.monotonic() - self.start_mono) * SPEED

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / SPEED)


def test_a_grid_over_its_budget_is_stopped_and_keeps_what_it_drew(
    tmp_path: Path, fake_sdscripts: FakeSdScripts
) -> None:
    env = make_world(tmp_path / "w")
    commit = fake_sdscripts.commit_behaviour(FakeBehaviour(gen_seconds=1.0))
    trained = cli(env, *args_for(env, fake_sdscripts, commit, "--no-grid"))
    assert trained.returncode == 0, trained.stderr
    run = RunDir(only_run(env))
    options = parse_grid("epochs=2,strengths=0,1,seeds=4")
    launcher = Launcher(RunStore(env.runs), SilentReporter(), clock=FastClock(),
                        options=FollowOptions(poll_seconds=10.0))  # fmt: skip
    # The estimate (2 model loads of 45 s, 8 images) fits in $250 at $3600/h ($1 a second); the
    # fake card takes 1 s of wall time per image, 50 s on this clock: the money runs out mid-way.
    request = GridRequest(options, price_per_hour=3600.0, max_dollars=250.0)
    manifest = launcher.grid(run, ConnectOptions(), request)
    record = manifest.grid
    assert record is not None and record.status == "stopped", record
    assert "--max-dollars" in record.reason
    assert record.exit_code == 143
    assert 0 < record.pulled < record.images
    assert manifest.status is RunStatus.FINISHED, "the run itself is untouched"
    pulled = [rel for rel in manifest.pulled if rel.startswith("grid/")]
    assert len(pulled) == record.pulled
    assert (run.path / "report" / "index.html").is_file()
