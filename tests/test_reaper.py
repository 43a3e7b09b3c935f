"""The test reaper finds and ends a detached process left in a test's folder (Linux)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.reaper import left_behind, reap

pytestmark = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="reads /proc")


def test_a_detached_process_in_the_test_folder_is_found_and_ended(tmp_path: Path) -> None:
    folder = tmp_path / "host 柴犬"
    folder.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], cwd=folder, start_new_session=True
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        found = left_behind(tmp_path)
        assert child.pid in found and other.pid not in found
        assert reap(tmp_path) == []
        assert child.wait(timeout=10) is not None
        assert other.poll() is None  # not under the folder: left alone
    finally:
        other.kill()
        other.wait()
