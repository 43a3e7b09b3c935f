"""What kohyawrap predicts against what the REAL sd-scripts did (captured runs, no fake).

tests/data/sdscripts/buckets_run: a smoke run on a CPU with images of four aspect ratios and a
Chinese LoRA name; tests/data/gpu: the h100 + sdxl config on a GPU (READMEs beside them).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

from PIL import Image

from kohyawrap.dataset.buckets import bucket_settings_from, count_batches
from kohyawrap.dataset.scan import read_training_dir
from kohyawrap.logparse import parse, readable_lines
from kohyawrap.models import CheckpointSaved, Failure, ModelSaved, Progress, TrainingStarted
from kohyawrap.presets import load_catalog, read_toml, resolve

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "tests" / "data" / "sdscripts" / "buckets_run"
GPU = ROOT / "tests" / "data" / "gpu"
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


def test_gpu_run_log_matches_its_config_and_kohyawrap_buckets(tmp_path: Path) -> None:
    config, _comments = read_toml(GPU / "training_config_main.toml")
    options = {k: v for table in config.values() for k, v in table.items()}
    model = load_catalog(user_dir=tmp_path / "no-user-presets").model("sdxl")
    folder = tmp_path / "ds" / "4_sks dog"
    folder.mkdir(parents=True)
    for i in range(10):  # the run's dataset: 10 images of 1024x1024, 4 repeats
        Image.new("RGB", (1024, 1024), (i * 20, 90, 160)).save(folder / f"img{i:02d}.png")
    counted = count_batches(
        read_training_dir(tmp_path / "ds").subset_sizes(),
        bucket_settings_from(model.dataset, model.family, options),
        options["train_batch_size"],
    )
    log = (GPU / "sdxl_h100preset_main_stdout.log").read_bytes()
    assert counted.buckets == logged_buckets(log) == {(1024, 1024): 40}
    events = parse(log)
    started = [e for e in events if isinstance(e, TrainingStarted)]
    assert started == [TrainingStarted(40, counted.batches_per_epoch, 8, 8, 40)]
    saved = [e.path for e in events if isinstance(e, CheckpointSaved)]
    assert saved == [f"output/gpucheck-00000{n}.safetensors" for n in (2, 4, 6)] + [
        "output/gpucheck.safetensors"
    ]
    assert [e for e in events if isinstance(e, Failure)] == []
    assert max(e.step for e in events if isinstance(e, Progress)) == 40


def load_summarize() -> ModuleType:
    path = ROOT / "scripts" / "gpu_check" / "summarize.py"
    spec = importlib.util.spec_from_file_location("gpu_check_summarize", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_published_gpu_numbers_follow_from_the_step_lines() -> None:
    summarize = load_summarize()
    published = json.loads((GPU / "summary.json").read_text(encoding="utf-8"))
    for run, steps in (("main", 40), ("gc", 20)):
        again = summarize.summarise(GPU / f"steps_{run}.jsonl", 3)
        assert again == published[run]
        assert again["steps"] == steps
    # The no-checkpointing run's peak is the first step's: the batch's activations.
    first = json.loads((GPU / "steps_main.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["max_alloc_gib"] > 0.99 * published["main"]["peak_allocated_gib"]


def test_a_40_gb_card_holds_the_tier_batch_and_not_the_old_one(tmp_path: Path) -> None:
    """tests/data/gpu/a100-40gb-cap: the a100-40gb + sdxl config run on the H200 with torch held
    to 39.5 GiB. Batch 3 (the tier now) trained; batch 6 (the tier before) ran out of memory.
    kohyawrap's VRAM estimate says the same of both, before anything is rented."""
    from kohyawrap.forecast import vram_parts

    cap = GPU / "a100-40gb-cap"
    catalog = load_catalog(user_dir=tmp_path / "no-user-presets")
    model, card = catalog.model("sdxl"), catalog.gpu("a100-40gb")
    usable = card.vram_gb * catalog.rules.number("usable_vram_fraction")
    measured = json.loads((cap / "summary.json").read_text(encoding="utf-8"))
    estimates = {}
    for batch in (3, 6):
        config, _ = read_toml(cap / f"training_config_b{batch}.toml")
        options = {k: v for table in config.values() for k, v in table.items()}
        assert options["train_batch_size"] == batch and not options["gradient_checkpointing"]
        estimates[batch] = sum(part.seconds for part in vram_parts(model, options))
    # Batch 3: the estimate covers what torch allocated (GiB, as the card's 40 "GB" are) and fits.
    assert measured["a100"]["steps"] == 56
    assert measured["a100"]["peak_allocated_gib"] <= estimates[3] <= usable
    ran = parse((cap / "train_a100.log").read_bytes())
    assert [e for e in ran if isinstance(e, Failure)] == []
    # Batch 6: out of memory there, and over the card in the estimate.
    failed = [e for e in parse((cap / "train_a100b6.log").read_bytes()) if isinstance(e, Failure)]
    assert [f.kind for f in failed] == ["oom"]
    assert estimates[6] > usable
    # The shipped tier is the batch that fitted.
    assert resolve(catalog, "a100-40gb", "sdxl").values()["train_batch_size"] == 3
