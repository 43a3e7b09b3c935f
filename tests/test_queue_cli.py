"""What a user can type to `kohyawrap queue` and is refused before anything is contacted or
recorded: a clear message, exit code 2, no traceback, no run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.cli import run_cli
from tests.test_forecast import make_dataset

GOOD = """
[defaults]
model = "sd15"
base_model = "org/model"
dataset = "数据"
gpu = "rtx4090"
[[job]]
name = "柴犬"
"""


def queue(tmp_path: Path, text: str = GOOD) -> Path:
    make_dataset(tmp_path / "数据")
    path = tmp_path / "jobs.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("extra", "text", "message"),
    [
        ((), GOOD + '[[job]]\nname = "柴犬"\n', "two jobs are named '柴犬'"),
        ((), GOOD.replace('gpu = "rtx4090"', 'gpu = "rtx9999"'), "rtx9999"),
        ((), GOOD + '[[job]]\nname = "b"\nset = { max_train_epochs = "ten" }\n', "max_train_epochs"),
        (("--on-finish", "destory"), GOOD, "did you mean 'destroy'"),
        (("--on-finish", "shutdown"), GOOD, "looks like this machine"),
        (("--host", "local"), GOOD, "the same --host is given twice"),
        (("--gpus", "two"), GOOD, "not a GPU selection"),
        ((), GOOD + '[[job]]\nname = "b"\nmax_dollars = 0.0001\n', "budget"),
    ],
)  # fmt: skip
def test_refused_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], text: str,
    message: str,
) -> None:  # fmt: skip
    runs = tmp_path / "runs"
    code, out = run_cli(["queue", "run", str(queue(tmp_path, text)), "--host", "local",
                         "--runs-dir", str(runs), "--yes", *extra], capsys)  # fmt: skip
    assert code == 2, out
    assert message in out
    assert "Traceback" not in out
    assert not runs.exists(), "nothing recorded"


def test_a_missing_queue_file_or_queue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = str(tmp_path / "runs")
    code, out = run_cli(["queue", "run", str(tmp_path / "nope.toml"), "--host", "local",
                         "--runs-dir", runs], capsys)  # fmt: skip
    assert code == 2 and "queue file" in out and "Traceback" not in out
    for args in (["queue", "status", "nope"], ["queue", "add", "nope", str(queue(tmp_path))],
                 ["attach", "nope"]):  # fmt: skip
        code, out = run_cli([*args, "--runs-dir", runs], capsys)
        assert code == 2 and "matches 'nope'" in out and "Traceback" not in out, out
    code, out = run_cli(["queue", "list", "--runs-dir", runs], capsys)
    assert code == 0 and "no queues" in out
