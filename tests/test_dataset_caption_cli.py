"""``kohyawrap dataset caption`` through the real entry point: the example photos captioned on
the laptop by a tiny WD14-shaped ONNX model fetched from a fake hub (real huggingface_hub, real
onnxruntime), the review, and the host captioner over the loopback sshd with a stand-in model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from kohyawrap.dataset.example import make_example_photos
from tests.fixtures.hub import FakeHub
from tests.fixtures.images import tree_digest, write_jpeg
from tests.fixtures.sshd import Sshd
from tests.fixtures.wd14 import model_bytes, selected_tags_csv
from tests.test_launcher_caption import STAND_IN

REPO = "acme/tiny-tagger"
UNCAPTIONED = ["IMG_0002.JPG", "beach day.jpeg", "IMG_0006.jpg", "IMG_0008.jpg"]


def kohyawrap(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "HF_TOKEN")}
    environ.update(HOME=str(home), HF_HOME=str(home / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    environ.update(COLUMNS="200", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "kohyawrap", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=180,
    )


@pytest.fixture
def hub(fake_hub: FakeHub) -> FakeHub:
    fake_hub.files[f"{REPO}/model.onnx"] = model_bytes()
    fake_hub.files[f"{REPO}/selected_tags.csv"] = selected_tags_csv().encode()
    return fake_hub


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = make_example_photos(tmp_path / "照片 $(touch pwned)")
    write_jpeg(folder / "小狗 在家.jpg", size=(120, 90), seed=11)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "anim.gif")  # not a training format
    return folder


def test_the_example_photos_are_captioned_on_the_laptop(
    tmp_path: Path, hub: FakeHub, photos: Path
) -> None:
    before = tree_digest(photos)
    home = tmp_path / "home"
    result = kohyawrap(
        home, "dataset", "caption", str(photos), "--trigger", "sks robot", "--tagger-repo", REPO,
        "--exclude-tags", "watermark", "--json", env={"HF_ENDPOINT": hub.url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["counts"] == {"images": 9, "written": 5, "kept": 4, "skipped": 0, "failed": 0}
    assert report["captioner"] == f"wd14 {REPO}"
    assert report["not_captioned"] == [{"name": "anim.gif", "what": "unsupported image"}]
    after = tree_digest(photos)
    new = {name for name in after if name not in before}
    assert new == {Path(n).stem + ".txt" for n in [*UNCAPTIONED, "小狗 在家.jpg"]}
    assert {k: v for k, v in after.items() if k in before} == before  # photos and captions as were
    for name in new:
        caption = (photos / name).read_text(encoding="utf-8")
        assert caption.endswith("\n") and caption.count("\n") == 1
        tags = caption.strip().split(", ")
        assert tags[0] == "sks robot"
        assert "long hair" in tags and "^_^" in tags and "watermark" not in tags
    assert any(str(home / "hf") in str(p) for p in (home / "hf").rglob("model.onnx"))
    assert not list(photos.glob(".*.tmp"))
    assert not (tmp_path / "pwned").exists()

    again = kohyawrap(
        home, "dataset", "caption", str(photos), "--trigger", "sks robot", "--tagger-repo", REPO,
        env={"HF_ENDPOINT": hub.url},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "0 caption(s) written, 9 kept" in again.stdout
    assert tree_digest(photos) == after


@pytest.mark.slow
def test_dry_run_overwrite_and_review(tmp_path: Path, hub: FakeHub, photos: Path) -> None:
    home = tmp_path / "home"
    before = tree_digest(photos)
    dry = kohyawrap(
        home, "dataset", "caption", str(photos), "--overwrite", "--dry-run", "--json",
        "--tagger-repo", REPO,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True
    assert {i["action"] for i in plan["images"]} == {"write", "replace"}
    assert tree_digest(photos) == before
    assert not (home / "hf").exists(), "a dry run downloads nothing"

    review = kohyawrap(home, "dataset", "caption", "--review", str(photos), "--trigger", "robot")
    assert review.returncode == 0, review.stderr
    assert "Tags in 4 caption(s)" in review.stdout
    assert "no caption file" in review.stdout and "小狗 在家.jpg" in review.stdout
    data = json.loads(
        kohyawrap(home, "dataset", "caption", "--review", str(photos), "--trigger", "sks robot",
                  "--json").stdout
    )  # fmt: skip
    assert len(data["without_trigger"]) == 4 and len(data["missing"]) == 5
    # the example's 4 captions have 6 comma-separated parts, each once
    assert [t["count"] for t in data["tags"]] == [1] * 6
    assert {"tag": "plain background", "count": 1} in data["tags"]

    written = kohyawrap(
        home, "dataset", "caption", str(photos), "--overwrite", "--trigger", "sks robot",
        "--tagger-repo", REPO, env={"HF_ENDPOINT": hub.url},
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert "9 caption(s) written" in written.stdout
    assert "not captioned (format not supported, convert them first): anim.gif" in written.stdout
    assert (photos / "studio.txt").read_text(encoding="utf-8").startswith("sks robot, ")
    coverage = json.loads(
        kohyawrap(home, "dataset", "caption", "--review", str(photos), "--trigger", "sks robot",
                  "--json").stdout
    )  # fmt: skip
    assert coverage["without_trigger"] == [] and coverage["missing"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--captioner", "florence2"], "give --host TARGET"),
        (["--host", "local"], "go with --captioner"),
        (["--captioner", "joycaption", "--host", "local", "--general-threshold", "0.5"],
         "--general-threshold applies to the WD14 tagger"),
        (["--general-threshold", "2"], "--general-threshold must be above 0"),
        (["--caption-extension", ".png"], "--caption-extension '.png' is not usable"),
    ],
)  # fmt: skip
def test_options_that_do_not_fit_are_refused(
    tmp_path: Path, hub: FakeHub, photos: Path, args: list[str], message: str
) -> None:
    before = tree_digest(photos)
    result = kohyawrap(
        tmp_path / "home", "dataset", "caption", str(photos), *args, env={"HF_ENDPOINT": hub.url}
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert tree_digest(photos) == before
    assert not hub.paths_seen, "nothing is downloaded before the options are checked"


def test_missing_folder_and_missing_onnxruntime(tmp_path: Path) -> None:
    result = kohyawrap(tmp_path, "dataset", "caption", str(tmp_path / "nope"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = kohyawrap(tmp_path, "dataset", "caption", str(empty))
    assert result.returncode == 2 and "holds no photos" in result.stderr
    # onnxruntime hidden from the import system: the error says how to install it
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "onnxruntime.py").write_text("raise ImportError('hidden by the test')\n")
    folder = tmp_path / "p"
    folder.mkdir()
    write_jpeg(folder / "a.jpg")
    result = kohyawrap(
        tmp_path, "dataset", "caption", str(folder), env={"PYTHONPATH": str(blocker)}
    )
    assert result.returncode == 2, result.stderr
    assert "pip install 'kohyawrap[caption]'" in " ".join(result.stderr.split())
    assert not (folder / "a.txt").exists()


@pytest.fixture
def token_watch() -> Iterator[list[str]]:
    """Every command line seen on this machine while the test runs (sampled from /proc)."""
    seen: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    seen.append(proc.joinpath("cmdline").read_bytes().decode("utf-8", "replace"))
                except OSError:
                    continue
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    yield seen
    stop.set()
    thread.join()


@pytest.mark.slow
def test_host_captioner_through_the_cli(
    tmp_path: Path, sshd: Sshd, photos: Path, token_watch: list[str]
) -> None:
    stand_in = tmp_path / "stand in.py"
    stand_in.write_text(STAND_IN, encoding="utf-8")
    work = tmp_path / "host work"
    token = "hf_" + "CliTokenValue" * 3
    before = tree_digest(photos)
    result = kohyawrap(
        tmp_path / "home", "dataset", "caption", str(photos), "--trigger", "sks robot",
        "--captioner", "florence2", "--host", sshd.target, "-p", str(sshd.port),
        "-i", str(sshd.key_path), "--known-hosts", str(sshd.known_hosts),
        "--ssh-config", str(sshd.ssh_config), "--host-python", sys.executable,
        "--work-dir", str(work), "--captioner-script", str(stand_in), "--json",
        env={"HF_TOKEN": token},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["counts"]["written"] == 5 and report["counts"]["kept"] == 4
    assert report["captioner"].startswith("florence2 microsoft/Florence-2-large on ")
    # IMG_0008.jpg is 832x1216 upright; sent with its longest side at most 1024 px
    caption = (photos / "IMG_0008.txt").read_text(encoding="utf-8")
    assert caption.startswith("sks robot, A portrait picture, mostly ")
    width = round(832 * 1024 / 1216)
    assert f"{width}x1024. [<MORE_DETAILED_CAPTION>]" in caption and caption.count("\n") == 1
    assert (
        (photos / "小狗 在家.txt")
        .read_text(encoding="utf-8")
        .startswith("sks robot, A landscape picture")
    )
    assert {k: v for k, v in tree_digest(photos).items() if k in before} == before
    assert token not in result.stdout + result.stderr
    assert not [line for line in token_watch if token in line], "token seen in a command line"
    for path in work.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert not list(work.rglob(".hf-token"))
