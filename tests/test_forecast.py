"""The plan: steps as sd-scripts counts them (on real image files), time, VRAM, dollars, compare,
and GPU names as nvidia-smi prints them."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from kohyawrap.dataset.scan import read_training_dir
from kohyawrap.errors import DatasetError, UsageError
from kohyawrap.forecast import build_forecast, compare_forecasts, count_steps
from kohyawrap.models import RunSpec
from kohyawrap.presets import load_catalog, match_gpu
from tests.fixtures.images import write_jpeg, write_png

CATALOG = load_catalog(user_dir=Path("/nonexistent-kohyawrap-user-dir"))


def make_dataset(root: Path, reg: bool = False) -> Path:
    """10_sks dog: 3 squares + 2 landscapes (3:2); 5_zkw cat: 2 portraits (2:3); reg/1_dog: 2."""
    for i in range(3):
        write_jpeg(root / "10_sks dog" / f"sq{i}.jpg", (512, 512), seed=i)
        (root / "10_sks dog" / f"sq{i}.txt").write_text("sks dog")
    for i in range(2):
        write_png(root / "10_sks dog" / f"wide{i}.png", (768, 512), seed=10 + i)
    for i in range(2):
        write_jpeg(root / "5_zkw cat" / f"tall{i}.jpg", (512, 768), seed=20 + i)
    if reg:
        for i in range(2):
            write_jpeg(root / "reg" / "1_dog" / f"r{i}.jpg", (512, 512), seed=30 + i)
    return root


@pytest.fixture(scope="module")
def tdir(tmp_path_factory):
    return read_training_dir(make_dataset(tmp_path_factory.mktemp("plan") / "data"))


def spec(gpu="rtx4090", model="sd15", **kw) -> RunSpec:
    return RunSpec(gpu=gpu, model=model, base_model="base", output_name="my_lora", **kw)


def test_steps_are_counted_like_sd_scripts(tdir):
    # SD1.5 at 512, buckets 256-1024 by 64, batch 4 (rtx4090 tier), 10 epochs, worked by hand:
    #   512x512 bucket: 3 images x 10 = 30 -> ceil(30/4) = 8 batches
    #   768x512 (3:2) -> the 640x384 bucket (ratio 1.67 is nearest 1.5): 20 -> 5 batches
    #   512x768 (2:3) -> 384x640: 2 x 5 = 10 -> 3 batches
    plan = build_forecast(spec(), tdir, catalog=CATALOG)
    s = plan.steps
    assert (s.images, s.images_with_repeats, s.batch_size) == (7, 60, 4)
    assert dict(s.buckets) == {(384, 640): 10, (512, 512): 30, (640, 384): 20}
    assert (s.batches_per_epoch, s.epochs, s.total_steps, s.basis) == (
        16,
        10,
        160,
        "max_train_epochs",
    )
    assert plan.estimate.steps == 160


def test_gradient_accumulation_rounds_up_per_epoch(tdir):
    plan = build_forecast(
        spec(overrides=(("gradient_accumulation_steps", 2),)), tdir, catalog=CATALOG
    )
    assert plan.steps.total_steps == 10 * math.ceil(16 / 2)


def test_reg_images_are_repeated_to_match_the_train_images(tmp_path):
    data = make_dataset(tmp_path / "data", reg=True)
    tdir = read_training_dir(data, reg_dir=data / "reg")
    s = build_forecast(spec(reg_data_dir="data/reg"), tdir, catalog=CATALOG).steps
    # 2 reg images fill up to the 60 train images x repeats, all in the 512x512 bucket:
    # (30 + 60) / 4 -> 23, plus 5 + 3 as before.
    assert (s.reg_images, s.reg_images_with_repeats, s.batches_per_epoch) == (2, 2, 31)


def test_without_epochs_sd_scripts_trains_its_default_1600_steps(tdir):
    rendered = build_forecast(spec(), tdir, catalog=CATALOG).rendered
    settings = {k: v for k, v in rendered.settings.items() if k != "max_train_epochs"}
    s = count_steps(replace(rendered, settings=settings), tdir, CATALOG.model("sd15"))
    assert (s.total_steps, s.epochs) == (1600, math.ceil(1600 / 16))
    assert "default 1600" in s.basis


def test_smoke_plan_uses_steps_not_epochs(tdir):
    s = build_forecast(spec(smoke=True), tdir, catalog=CATALOG).steps
    # enable_bucket off: every image is one 128x128 bucket; batch 1 -> 60 batches; 4 steps.
    assert (s.batches_per_epoch, s.total_steps, s.epochs, s.basis) == (60, 4, 1, "max_train_steps")


def test_time_and_money_follow_the_preset_numbers(tdir):
    plan = build_forecast(spec(), tdir, price_per_hour=0.70, catalog=CATALOG)
    speed = CATALOG.gpus["rtx4090"].speed["sd15"]
    te = CATALOG.rules.number("text_encoder_training_slowdown")  # SD1.5 trains the text encoder
    per_step = speed.step_overhead_s + 4 * speed.s_per_image * te
    assert plan.seconds_per_step == pytest.approx(per_step)
    stages = {s.name: s.seconds for s in plan.stages}
    assert stages["training"] == pytest.approx(160 * per_step)
    assert plan.estimate.train_seconds == pytest.approx(
        stages["training"] + stages["sampling"], abs=0.1
    )
    assert plan.estimate.dollars == pytest.approx(0.70 * plan.total_seconds / 3600, rel=1e-3)
    assert plan.price_basis == "--price"
    host = CATALOG.rules.number("host_download_mb_s")
    assert stages["model download"] == pytest.approx(4.27 * 1000 / host)  # v1-5 4.27 GB
    warm = build_forecast(spec(), tdir, setup="warm", catalog=CATALOG)
    warm_stages = {s.name: s.seconds for s in warm.stages}
    assert warm_stages["model download"] == 0 and warm_stages["install"] < stages["install"]
    assert warm.estimate.dollars < build_forecast(spec(), tdir, catalog=CATALOG).estimate.dollars


def test_bandwidth_changes_upload_and_pull(tdir):
    slow = {
        s.name: s.seconds
        for s in build_forecast(spec(), tdir, bandwidth_mbps=1, catalog=CATALOG).stages
    }
    fast = {
        s.name: s.seconds
        for s in build_forecast(spec(), tdir, bandwidth_mbps=100, catalog=CATALOG).stages
    }
    assert slow["dataset upload"] == pytest.approx(fast["dataset upload"] * 100)
    assert slow["pull results"] == pytest.approx(fast["pull results"] * 100)
    with pytest.raises(UsageError):
        build_forecast(spec(), tdir, bandwidth_mbps=0, catalog=CATALOG)


def test_vram_estimate_and_fit(tdir):
    plan = build_forecast(spec(), tdir, catalog=CATALOG)
    v = CATALOG.models["sd15"].vram
    assert plan.estimate.vram_needed_gb == pytest.approx(
        v.base_gb + v.text_encoder_gb + 4 * v.per_image_gb
    )
    assert plan.estimate.fits
    big = build_forecast(
        spec(
            "rtx3060-12gb",
            "sdxl",
            overrides=(("train_batch_size", 8), ("gradient_checkpointing", False)),
        ),
        tdir,
        catalog=CATALOG,
    )
    assert not big.estimate.fits and big.estimate.vram_available_gb == 12
    assert "gradient_checkpointing" in big.estimate.notes[0]


def test_compare_runs_every_gpu_preset(tdir):
    plans = compare_forecasts(spec(), tdir, catalog=CATALOG)
    assert sorted(p.estimate.gpu for p in plans) == sorted(CATALOG.gpus)
    assert [p.estimate.vram_available_gb for p in plans] == sorted(
        p.estimate.vram_available_gb for p in plans
    )
    by_gpu = {p.estimate.gpu: p for p in plans}
    assert by_gpu["rtx3060-12gb"].steps.batch_size == 2 and by_gpu["h100"].steps.batch_size == 8
    assert by_gpu["h100"].estimate.train_seconds < by_gpu["rtx3060-12gb"].estimate.train_seconds
    assert all(
        p.estimate.price_per_hour == CATALOG.gpus[p.estimate.gpu].price_per_hour for p in plans
    )


def test_plan_json_is_data(tdir):
    data = json.loads(json.dumps(build_forecast(spec(), tdir, catalog=CATALOG).to_json()))
    assert data["steps"]["total_steps"] == 160 and data["steps"]["buckets"]["512x512"] == 30
    assert data["estimate"]["gpu"] == "rtx4090" and data["settings"]["train_batch_size"] == 4
    assert data["stages"][0]["name"] == "connect"


def test_a_folder_without_images_is_a_dataset_error(tmp_path):
    (tmp_path / "data" / "10_empty").mkdir(parents=True)
    (tmp_path / "data" / "10_empty" / "note.txt").write_text("no images here")
    with pytest.raises(DatasetError):
        build_forecast(spec(), read_training_dir(tmp_path / "data"), catalog=CATALOG)


@pytest.mark.parametrize(
    ("name", "vram", "expected"),
    [
        ("NVIDIA GeForce RTX 4090", 24, "rtx4090"),
        ("NVIDIA GeForce RTX 3090 Ti", 24, "rtx3090"),
        ("NVIDIA A100-SXM4-80GB", 80, "a100-80gb"),
        ("NVIDIA A100-PCIE-40GB", 40, "a100-40gb"),
        ("NVIDIA A100 80GB PCIe", 80, "a100-80gb"),
        ("NVIDIA H100 80GB HBM3", 80, "h100"),
        ("NVIDIA L4", 22.5, "l4"),
        ("NVIDIA L40S", 45, "vram-45"),  # no preset: by its memory
        ("NVIDIA RTX A6000", 48, "rtx-a6000"),
        ("NVIDIA A10G", 23, "a10g"),
        ("NVIDIA GeForce RTX 3060", 12, "rtx3060-12gb"),
        ("NVIDIA GeForce RTX 3060 Ti", 8, "vram-8"),
        ("NVIDIA GeForce RTX 4060 Ti", 8, "vram-8"),  # the 8 GB model is not the 16 GB preset
        ("NVIDIA GeForce RTX 4060 Ti", 16, "rtx4060ti-16gb"),
        ("Tesla T4", 15.1, "vram-15"),
        (None, 20, "vram-20"),
        ("NVIDIA GeForce RTX 4080 SUPER", None, "rtx4080-16gb"),
    ],
)
def test_match_gpu_maps_nvidia_smi_names(name, vram, expected):
    assert match_gpu(name, vram, catalog=CATALOG) == expected


def test_match_gpu_needs_something_to_go_on():
    with pytest.raises(UsageError):
        match_gpu("Mystery GPU", None, catalog=CATALOG)


def test_set_up_counts_the_longest_of_the_overlapped_steps(tdir):
    cold = build_forecast(spec(), tdir, catalog=CATALOG, bandwidth_mbps=0.05)
    stages = {s.name: s.seconds for s in cold.stages}
    together = [stages["install"], stages["model download"], stages["dataset upload"]]
    assert stages["at once"] == pytest.approx(max(together) - sum(together))
    non_train = sum(s.seconds for s in cold.stages if s.name not in ("training", "sampling"))
    assert cold.estimate.setup_seconds == pytest.approx(non_train, abs=0.1)
    uv = build_forecast(spec(), tdir, catalog=CATALOG, bandwidth_mbps=0.05, installer="uv")
    uv_install = next(s for s in uv.stages if s.name == "install")
    n = CATALOG.rules.number
    assert stages["install"] - uv_install.seconds == pytest.approx(
        n("install_pip_s") - n("install_uv_s")
    )
    assert "uv" in uv_install.basis
    warm = build_forecast(spec(), tdir, setup="warm", catalog=CATALOG)
    warm_stages = {s.name: s.seconds for s in warm.stages}
    assert warm_stages.get("at once", 0) == pytest.approx(
        max(warm_stages["install"], warm_stages["dataset upload"])
        - warm_stages["install"]
        - warm_stages["dataset upload"]
    )
