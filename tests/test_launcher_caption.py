"""The host captioner over a real sshd on loopback: upload, the rendered caption.sh, the verified
download. The only stand-in is the captioner model itself (Florence-2 / JoyCaption cannot run
here): a small Python file made by the test, passed as the model script."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from kohyawrap.errors import HostError, RemoteCommandError, UsageError
from kohyawrap.hosts.base import Host
from kohyawrap.launcher.caption import (
    CAPTIONERS,
    HostCaptioner,
    HostCaptionOptions,
    SilentCaptionReporter,
    caption_on_host,
    prepare_uploads,
)
from kohyawrap.launcher.scripts import render_script
from tests.fixtures.images import write_rotated_jpeg, write_zero_bytes
from tests.fixtures.sshd import Sshd, TcpRelay

# Deterministic captions derived from the picture: its size, shape and strongest colour. It
# also records (as a sha256) the token it was given, beside itself on the host.
STAND_IN = """
import hashlib, os
from PIL import ImageStat

def load(model_id, token, prompt):
    seen = hashlib.sha256((token or "").encode()).hexdigest()
    with open(os.path.join(os.path.dirname(__file__), "token.sha256"), "w") as fh:
        fh.write(seen)

    def caption(image):
        if image.width == 13:
            raise RuntimeError("the stand-in refuses 13 px wide pictures")
        means = ImageStat.Stat(image).mean
        colour = ["red", "green", "blue"][means.index(max(means))]
        shape = "portrait" if image.height > image.width else "landscape"
        return f"A {shape} picture,\\n mostly {colour}, {image.width}x{image.height}. [{prompt}] by {model_id}"

    return caption
"""


def _stand_in(tmp_path: Path) -> Path:
    path = tmp_path / "stand_in.py"
    path.write_text(STAND_IN, encoding="utf-8")
    return path


def _solid(path: Path, size: tuple[int, int], rgb: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, rgb).save(path, "JPEG", quality=95)
    return path


@pytest.fixture
def ssh_host(sshd: Sshd) -> Iterator[Host]:
    host = sshd.connect()
    yield host
    host.close()


def test_captions_come_back_verified_with_the_trigger_first(any_host: Host, tmp_path: Path) -> None:
    images = {
        "00000.jpg": _solid(tmp_path / "红.jpg", (120, 80), (230, 20, 20)),
        "00001.jpg": _solid(tmp_path / "blue.jpg", (60, 90), (10, 10, 240)),
    }
    work = tmp_path / "work dir $(touch pwned)"
    options = HostCaptionOptions(
        "florence2",
        trigger="sks robot",
        work_dir=str(work),
        model_script=_stand_in(tmp_path),
    )
    seen: list[tuple[int, int]] = []

    class Watch:
        def stage(self, name: str, detail: str = "") -> None:
            seen.append((-1, len(name)))

        def transfer(self, label: str, done: int, total: int) -> None:
            pass

        def progress(self, done: int, total: int) -> None:
            seen.append((done, total))

    token = "hf_" + "SecretTokenValue" * 3
    result = caption_on_host(any_host, sys.executable, images, options, Watch(), hf_token=token)
    florence = CAPTIONERS["florence2"]
    assert result.raw["00000.jpg"] == (
        f"A landscape picture, mostly red, 120x80. [{florence.prompt}] by {florence.model}"
    )
    assert result.captions["00000.jpg"] == "sks robot, " + result.raw["00000.jpg"]
    assert result.captions["00001.jpg"].startswith(
        "sks robot, A portrait picture, mostly blue, 60x90."
    )
    assert not result.errors and not result.cached
    assert (1, 2) in seen and (2, 2) in seen
    job = Path(result.job_dir)
    assert job.parent == work / "captions"
    # the token reached the captioner, and its file is gone
    assert (job / "token.sha256").read_text() == hashlib.sha256(token.encode()).hexdigest()
    assert not (job / ".hf-token").exists()
    assert not any(p.exists() for p in (tmp_path / "pwned", Path("pwned"), Path.home() / "pwned"))
    for path in work.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path

    again = caption_on_host(any_host, sys.executable, images, options)
    assert again.cached and again.captions == result.captions


@pytest.mark.slow
def test_one_bad_picture_and_a_hostile_result(ssh_host: Host, tmp_path: Path) -> None:
    images = {
        "00000.jpg": _solid(tmp_path / "a.jpg", (13, 40), (0, 200, 0)),
        "00001.jpg": _solid(tmp_path / "b.jpg", (40, 40), (0, 200, 0)),
    }
    options = HostCaptionOptions(
        "joycaption", prompt="Describe it.", work_dir=str(tmp_path / "w"),
        model_script=_stand_in(tmp_path),
    )  # fmt: skip
    result = caption_on_host(ssh_host, sys.executable, images, options)
    assert "refuses 13 px" in result.errors["00000.jpg"]
    assert result.raw["00001.jpg"].endswith("[Describe it.] by " + CAPTIONERS["joycaption"].model)
    # a host that answers with names we never sent and non-text captions: ignored
    out = Path(result.job_dir) / "captions.json"
    out.write_text('{"captions": {"../../x": "evil", "00001.jpg": 7}, "errors": []}')
    hostile = caption_on_host(ssh_host, sys.executable, images, options)
    assert hostile.raw == {} and set(hostile.errors) == {"00000.jpg", "00001.jpg"}
    out.write_text("not json")
    with pytest.raises(HostError, match="not JSON"):
        caption_on_host(ssh_host, sys.executable, images, options)


def test_a_captioner_that_fails_to_load_says_why(ssh_host: Host, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text(
        "def load(model_id, token, prompt):\n    raise ImportError('no torch here')\n"
    )
    images = {"00000.jpg": _solid(tmp_path / "a.jpg", (40, 40), (9, 9, 9))}
    options = HostCaptionOptions(work_dir=str(tmp_path / "w"), model_script=broken)
    with pytest.raises(RemoteCommandError) as caught:
        caption_on_host(ssh_host, sys.executable, images, options)
    assert "no torch here" in "\n".join(caught.value.evidence)
    assert "--host-python" in (caught.value.hint or "")
    with pytest.raises(UsageError, match="unknown captioner"):
        caption_on_host(ssh_host, sys.executable, images, HostCaptionOptions("blip"))


def test_host_captioner_keeps_the_callers_order(ssh_host: Host, tmp_path: Path) -> None:
    photos = [
        write_rotated_jpeg(tmp_path / "sideways 侧.jpg", upright=(300, 2400)),
        write_zero_bytes(tmp_path / "broken.jpg"),
        _solid(tmp_path / "wide.jpg", (2000, 500), (200, 10, 10)),
    ]
    captioner = HostCaptioner(
        ssh_host,
        sys.executable,
        HostCaptionOptions(trigger="ignored", work_dir=str(tmp_path / "w"),
                           model_script=_stand_in(tmp_path)),
    )  # fmt: skip
    progress: list[tuple[int, int]] = []
    results = list(captioner.caption(photos, lambda d, t: progress.append((d, t))))
    # upright (EXIF applied) and at most 1024 px before it leaves the laptop
    assert results[0].text is not None and "A portrait picture" in results[0].text
    assert "128x1024" in results[0].text
    assert results[1].error is not None and "empty" in results[1].error
    assert results[2].text is not None and "1024x256" in results[2].text
    assert "ignored" not in (results[2].text or "")
    assert progress[-1] == (2, 2)
    assert captioner.label.startswith("florence2 microsoft/Florence-2-large on ")


def test_prepare_uploads_names_by_index(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    photos = [_solid(tmp_path / "x'$(id).jpg", (50, 20), (1, 2, 3)), tmp_path / "missing.jpg"]
    uploads, problems = prepare_uploads(photos, tmp_path / "out")
    assert list(uploads) == ["00000.jpg"]
    assert Image.open(uploads["00000.jpg"]).size == (50, 20)
    assert 1 in problems


def test_rendered_script_is_valid_bash_and_quotes_everything() -> None:
    hostile = "/w/it's $(touch pwned) `id`"
    script = render_script(
        "caption", python="", work=hostile, images=hostile + "/i", out=hostile + "/o.json",
        captioner="florence2", model="m/x", prompt="<MORE_DETAILED_CAPTION>", model_script="",
        token_file="", deps=hostile + "/deps", needs=("timm", "einops"), hf_home=hostile,
    )  # fmt: skip
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)
    assert f"WORK={shlex.quote(hostile)}\n" in script
    assert "NEEDS='timm einops'" in script


@pytest.mark.slow
def test_a_dropped_connection_is_reported_and_a_rerun_finishes(sshd: Sshd, tmp_path: Path) -> None:
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import time\n"
        "def load(model_id, token, prompt):\n"
        "    def caption(image):\n"
        "        time.sleep(0.4)\n"
        "        return f'{image.width} px wide'\n"
        "    return caption\n"
    )
    images = {
        f"{i:05d}.jpg": _solid(tmp_path / f"{i}.jpg", (40 + i, 30), (9, 9, 9)) for i in range(4)
    }
    options = HostCaptionOptions(work_dir=str(tmp_path / "w"), model_script=slow)

    with TcpRelay(sshd.port) as relay:
        host = sshd.connect(port=relay.port)

        class CutAfterOne(SilentCaptionReporter):
            def progress(self, done: int, total: int) -> None:
                if done == 1:
                    relay.cut()

        with pytest.raises(HostError) as caught:
            caption_on_host(host, sys.executable, images, options, CutAfterOne())
        host.close()
    assert "broke while captioning" in caught.value.message
    assert "#" not in caught.value.message  # not the script's text
    again = sshd.connect()
    try:
        result = caption_on_host(again, sys.executable, images, options)
    finally:
        again.close()
    assert result.raw == {f"{i:05d}.jpg": f"{40 + i} px wide" for i in range(4)}
