"""Builds that stop half-way (issue #7): ``--strict`` lists every unusable file, found before or
while writing; a build killed with SIGKILL leaves its hidden staging folder, and the next build
removes it, but only when it is ours and its owner is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kohyawrap.dataset.build import BuildRequest, build_dataset, staging_name
from kohyawrap.errors import DatasetError
from tests.fixtures.images import write_jpeg, write_text_as_image, write_truncated_jpeg

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and pids are POSIX")


def _request(src: Path, out: Path, **kw: object) -> BuildRequest:
    options: dict[str, object] = {"triggers": ("sks dog",), "model": "sd15", "max_side": 64}
    options.update(kw)
    return BuildRequest(inputs=(src,), output=out, jobs=1, **options)  # type: ignore[arg-type]


def test_strict_lists_every_unusable_file(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_jpeg(src / "fine.jpg")
    write_text_as_image(src / "garbage.jpg")  # found while scanning headers
    write_truncated_jpeg(src / "truncated.jpg")  # header fine: found only while decoding
    (src / "anim.gif").write_bytes(b"GIF89a")  # a format we do not build from
    with pytest.raises(DatasetError, match="3 input file") as err:
        build_dataset(_request(src, tmp_path / "data", strict=True))
    listed = "\n".join(err.value.evidence)
    for name in ("garbage.jpg", "truncated.jpg", "anim.gif"):
        assert name in listed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing left behind


_KILLED_BUILD = """
import pathlib, sys, time
from kohyawrap.dataset.build import BuildRequest, build_dataset

def progress(done, total):
    if done == 2:  # two images are in the staging folder: say so, then wait to be killed
        pathlib.Path(sys.argv[3]).write_text("mid-build")
        time.sleep(600)

build_dataset(
    BuildRequest(inputs=(pathlib.Path(sys.argv[1]),), output=pathlib.Path(sys.argv[2]),
                 triggers=("sks dog",), model="sd15", max_side=64, jobs=1),
    progress=progress,
)
"""


def _kill_a_build_half_way(src: Path, out: Path, marker: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(src), str(out), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the build never got half-way"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@posix_only
def test_a_killed_build_is_swept_by_the_next_one(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(4):
        write_jpeg(src / f"d{i}.jpg", (160, 120), seed=i)
    out = tmp_path / "data"
    _kill_a_build_half_way(src, out, tmp_path / "marker")
    left = [p for p in tmp_path.iterdir() if ".building-" in p.name]
    assert len(left) == 1 and any(left[0].rglob("*.jpg")), "SIGKILL leaves the staging folder"
    assert not out.exists()

    result = build_dataset(_request(src, out))
    assert not left[0].exists()
    assert any(f.code == "stale_build_removed" for f in result.notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "data.build.json", "in", "marker"]


def test_staging_folders_that_may_still_be_in_use_are_kept(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_jpeg(src / "d.jpg")
    out = tmp_path / "data"
    alive = tmp_path / staging_name(out, pid=os.getpid())  # this very process: alive
    elsewhere = tmp_path / staging_name(out, pid=999_999_999, host="another-machine")
    old_style = tmp_path / ".data.building-12345-0a1b2c3d"  # no owner host recorded
    someone_elses = tmp_path / ".other.building-00000000-1-0a1b2c3d"  # another output's
    for folder in (alive, elsewhere, old_style, someone_elses):
        folder.mkdir()
    result = build_dataset(_request(src, out))
    assert alive.is_dir() and elsewhere.is_dir() and old_style.is_dir() and someone_elses.is_dir()
    assert not any(f.code == "stale_build_removed" for f in result.notes)


@posix_only
def test_a_dead_owner_on_this_host_is_swept(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_jpeg(src / "d.jpg")
    out = tmp_path / "data"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / staging_name(out, pid=int(gone.stdout))
    (stale / "10_x").mkdir(parents=True)
    (stale / "10_x" / "a.jpg").write_bytes(b"left over")
    build_dataset(_request(src, out))
    assert not stale.exists()
