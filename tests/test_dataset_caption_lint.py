"""After captioning, ``dataset lint`` reports what is still wrong with the captions (missing,
empty, wordless) and the near-duplicate photos, through the real entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from kohyawrap.dataset.example import make_example_photos
from tests.fixtures.hub import FakeHub
from tests.test_dataset_caption_cli import REPO, kohyawrap


@pytest.fixture
def hub(fake_hub: FakeHub) -> FakeHub:
    from tests.fixtures.wd14 import model_bytes, selected_tags_csv

    fake_hub.files[f"{REPO}/model.onnx"] = model_bytes()
    fake_hub.files[f"{REPO}/selected_tags.csv"] = selected_tags_csv().encode()
    return fake_hub


@pytest.mark.slow
def test_lint_after_caption(tmp_path: Path, hub: FakeHub) -> None:
    data = tmp_path / "训练数据"
    concept = make_example_photos(data / "10_sks robot")
    home = tmp_path / "home"
    captioned = kohyawrap(
        home, "dataset", "caption", str(concept), "--trigger", "sks robot",
        "--tagger-repo", REPO, env={"HF_ENDPOINT": hub.url},
    )  # fmt: skip
    assert captioned.returncode == 0, captioned.stderr
    clean = json.loads(kohyawrap(home, "dataset", "lint", str(data), "--model", "sd15",
                                 "--trigger", "sks robot", "--json").stdout)  # fmt: skip
    assert not {"no_caption", "empty_caption", "near_duplicate"} & {
        f["code"] for f in clean["findings"]
    }

    (concept / "IMG_0002.txt").unlink()
    (concept / "IMG_0006.txt").write_text("\n", encoding="utf-8")
    (concept / "IMG_0008.txt").write_text(", ,\n", encoding="utf-8")
    with Image.open(concept / "studio.png") as image:  # a smaller copy: a near duplicate
        image.resize((320, 320)).save(concept / "studio copy.png")
    shutil.copyfile(concept / "studio.txt", concept / "studio copy.txt")
    result = kohyawrap(home, "dataset", "lint", str(data), "--model", "sd15", "--json")
    report = json.loads(result.stdout)
    found: dict[str, list[str]] = {}
    for finding in report["findings"]:
        found.setdefault(finding["code"], []).append(finding["subject"])
    assert found["no_caption"] == ["10_sks robot/IMG_0002.JPG"]
    assert sorted(found["empty_caption"]) == [
        "10_sks robot/IMG_0006.jpg",
        "10_sks robot/IMG_0008.jpg",
    ]
    assert found["near_duplicate"] == ["10_sks robot/studio.png"]
    wordless = next(f for f in report["findings"] if (f["subject"] or "").endswith("IMG_0008.jpg"))
    assert "has no words" in wordless["message"]
