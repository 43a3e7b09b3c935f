"""What kohyawrap predicts against what the REAL sd-scripts did (captured runs, no fake).

tests/data/sdscripts/buckets_run: a smoke run on a CPU with images of four aspect ratios and a
Chinese LoRA name (README beside it).
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from kohyawrap.dataset.buckets import bucket_settings_from, count_batches
from kohyawrap.dataset.scan import read_training_dir
from kohyawrap.logparse import parse, readable_lines
from kohyawrap.models import CheckpointSaved, Failure, ModelSaved, TrainingStarted
from kohyawrap.presets import load_catalog, resolve

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "tests" / "data" / "sdscripts" / "buckets_run"
# The captured smoke run's images (name, width, height), in the folder 2_柴犬.
SMOKE_IMAGES = (("横长", 320, 160), ("竖长", 160, 320), ("方形", 240, 240), ("宽屏", 300, 200))
BUCKET_LINE = re.compile(r"bucket \d+: resolution \((\d+), (\d+)\), count: (\d+)")


def logged_buckets(log: bytes) -> dict[tuple[int, int], int]:
    """sd-scripts' 'bucket N: resolution (w, h), count: c' lines."""
    found = (BUCKET_LINE.search(line) for line in readable_lines(log))
    return {(int(m[1]), int(m[2])): int(m[3]) for m in found if m}


def test_smoke_keeps_buckets_and_predicts_sd_scripts_buckets(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "2_柴犬"
    folder.mkdir(parents=True)
    for name, width, height in SMOKE_IMAGES:
        Image.new("RGB", (width, height), (180, 120, 60)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"柴犬, {name}\n", encoding="utf-8")
    catalog = load_catalog(user_dir=tmp_path / "no-user-presets")
    resolved = resolve(catalog, "rtx3060-12gb", "sd15", smoke=True)
    options = resolved.values()
    assert options["enable_bucket"] is True

    settings = bucket_settings_from(resolved.model.dataset, resolved.model.family, options)
    counted = count_batches(
        read_training_dir(tmp_path / "data").subset_sizes(),
        settings,
        options["train_batch_size"],
    )
    log = (SMOKE / "smoke_stdout.log").read_bytes()
    assert "enable_bucket: True" in " ".join(readable_lines(log))
    # The 2:1 image ties between 1:1 and 3:1 and takes the first (128x128), as sd-scripts did.
    assert counted.buckets == logged_buckets(log) == {(64, 192): 2, (128, 128): 6}
    started = [e for e in parse(log) if isinstance(e, TrainingStarted)]
    assert started == [TrainingStarted(8, counted.batches_per_epoch, 1, 1, 4)]


def test_smoke_run_saved_the_chinese_named_lora_and_kohyawrap_verified_it() -> None:
    events = parse((SMOKE / "smoke_stdout.log").read_bytes())
    assert [e for e in events if isinstance(e, CheckpointSaved)] == [
        CheckpointSaved("output/柴犬.safetensors")
    ]
    assert [e for e in events if isinstance(e, ModelSaved)] == [ModelSaved()]
    assert [e for e in events if isinstance(e, Failure)] == []
    console = (SMOKE / "smoke_kohyawrap.txt").read_text(encoding="utf-8")
    assert "pulled 柴犬.safetensors (9.6 MB, sha256 verified)" in console
    assert "finished (exit 0)" in console


def test_grid_ran_gen_img_with_the_lora_of_each_epoch() -> None:
    console = (SMOKE / "grid_kohyawrap.txt").read_text(encoding="utf-8")
    assert "grid done: 3 of 3 images" in console
    command = (SMOKE / "grid_gen_img_command.txt").read_text(encoding="utf-8")
    assert "gen_img.py" in command and "柴犬-000001.safetensors" in command
    excerpt = (SMOKE / "grid_gen_img_excerpt.log").read_text(encoding="utf-8")
    assert "weights are loaded: <All keys matched successfully>" in excerpt
    assert "KW done=e000001 code=0" in excerpt
