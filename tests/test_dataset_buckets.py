"""Bucket simulation against cases worked out by hand from sd-scripts' rules."""

from __future__ import annotations

import pytest

from kohyawrap.dataset.buckets import (
    BucketSettings,
    SubsetSizes,
    bucket_resolutions,
    bucket_settings_for,
    count_batches,
    parse_resolution,
    select_bucket,
    total_steps,
)
from kohyawrap.errors import ConfigError, UsageError

SD15 = BucketSettings(resolution=(512, 512))

# resolution 512, buckets 256..1024 in steps of 64: for each width w, height = min(1024,
# floor(512*512 / w / 64) * 64), kept when >= 256, both orientations, plus the square.
SD15_BUCKETS = [
    (256, 832), (256, 896), (256, 960), (256, 1024),
    (320, 704), (320, 768),
    (384, 640),
    (448, 576),
    (512, 512),
    (576, 448),
    (640, 384),
    (704, 320), (768, 320),
    (832, 256), (896, 256), (960, 256), (1024, 256),
]  # fmt: skip


def test_sd15_bucket_list_matches_hand_computation() -> None:
    assert bucket_resolutions(SD15) == SD15_BUCKETS


def test_buckets_never_exceed_the_resolution_area() -> None:
    for settings in (SD15, bucket_settings_for("sdxl"), bucket_settings_for("sd2")):
        w, h = settings.resolution
        for bw, bh in bucket_resolutions(settings):
            assert bw * bh <= w * h
            assert bw % settings.bucket_reso_steps == 0 and bh % settings.bucket_reso_steps == 0


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        ((1024, 1024), (512, 512)),  # square
        ((4000, 3000), (576, 448)),  # 1.333: 576/448 = 1.286 is nearest (640/384 = 1.667)
        ((3000, 4000), (448, 576)),
        ((640, 384), (640, 384)),  # exactly a bucket: taken as is
        ((1920, 1080), (640, 384)),  # 1.778: 1.667 beats 704/320 = 2.2
        ((5000, 500), (1024, 256)),  # 10:1, beyond the widest bucket (4:1)
        ((300, 200), (640, 384)),  # 1.5: 1.667 is nearer than 1.286; small images are upscaled
    ],
)
def test_select_bucket_nearest_aspect(size: tuple[int, int], bucket: tuple[int, int]) -> None:
    assert select_bucket(size, SD15) == bucket


def test_bucketing_off_puts_everything_in_the_resolution() -> None:
    flat = BucketSettings(resolution=(128, 128), enable_bucket=False)
    assert bucket_resolutions(flat) == [(128, 128)]
    assert {select_bucket(s, flat) for s in [(64, 64), (4000, 3000), (10, 900)]} == {(128, 128)}


def test_no_upscale_small_image_keeps_its_size_rounded_down() -> None:
    settings = BucketSettings(resolution=(512, 512), bucket_no_upscale=True)
    # 300x200 is under 512*512 pixels: not resized; bucket = size rounded down to 64.
    assert select_bucket((300, 200), settings) == (256, 192)
    assert bucket_resolutions(settings) == []


def test_no_upscale_large_image_shrinks_to_the_area() -> None:
    settings = BucketSettings(resolution=(512, 512), bucket_no_upscale=True)
    # 2:1 at 512*512 px: 724.1 x 362.0. Rounding the width gives 704x320 (ratio 2.2), rounding
    # the height gives 640x320 (ratio 2.0): the closer ratio wins.
    assert select_bucket((2000, 1000), settings) == (640, 320)


def test_sample_run_batch_count() -> None:
    # The captured sample run (tests/data/sdscripts/sample_run_config.toml): 4 images, 10 repeats,
    # 128 px, no buckets, batch 1, 2 epochs:
    # sd-scripts printed 40 images × repeats, 40 batches per epoch, 80 total steps.
    settings = BucketSettings(resolution=(128, 128), enable_bucket=False)
    count = count_batches([SubsetSizes(((128, 128),) * 4, repeats=10)], settings, batch_size=1)
    assert (count.images_with_repeats, count.batches_per_epoch) == (40, 40)
    assert total_steps(count.batches_per_epoch, 2) == 80


def test_batches_are_rounded_up_per_bucket() -> None:
    subset = SubsetSizes(((1000, 1000), (800, 800), (600, 800)), repeats=10)
    count = count_batches([subset], SD15, batch_size=4)
    # 512x512 holds 2 images × 10 = 20 -> 5 batches; 448x576 holds 10 -> 3 batches (4+4+2).
    assert count.buckets == {(448, 576): 10, (512, 512): 20}
    assert count.batches_per_epoch == 8
    assert count.images_with_repeats == 30


def test_reg_images_are_repeated_up_to_the_train_count() -> None:
    train = SubsetSizes(((512, 512), (512, 512)), repeats=10)  # 20 images × repeats
    reg = SubsetSizes(((1000, 1000), (600, 800), (800, 600)), repeats=1, is_reg=True)
    count = count_batches([train, reg], SD15, batch_size=1)
    # Round 1 registers the 3 reg images once (3); later rounds add one repeat each in order
    # until 20: 17 more = 6 + 6 + 5 -> repeats 7, 7, 6.
    assert count.buckets == {(448, 576): 7, (512, 512): 20 + 7, (576, 448): 6}
    assert count.reg_images_with_repeats == 3  # what sd-scripts prints: before the top-up
    assert count.batches_per_epoch == 40


def test_surplus_reg_images_are_left_out() -> None:
    train = SubsetSizes(((512, 512),), repeats=2)
    reg = SubsetSizes(((600, 800),) * 2 + ((800, 600),) * 3, repeats=1, is_reg=True)
    count = count_batches([train, reg], SD15, batch_size=1)
    # Only the first two reg images are needed to match 2 training images × repeats.
    assert count.buckets == {(448, 576): 2, (512, 512): 2}
    assert count.reg_images_with_repeats == 5


def test_subsets_with_no_images_or_zero_repeats_are_skipped() -> None:
    count = count_batches(
        [
            SubsetSizes((), repeats=5),
            SubsetSizes(((512, 512),), repeats=0),
            SubsetSizes(((0, 0),), 3),
        ],
        SD15,
        batch_size=1,
    )
    assert count.buckets == {} and count.batches_per_epoch == 0


def test_total_steps_with_accumulation() -> None:
    assert total_steps(10, epochs=2, gradient_accumulation_steps=4) == 6  # 2 × ceil(10 / 4)


def test_settings_from_presets() -> None:
    sdxl = bucket_settings_for("sdxl")
    assert sdxl.resolution == (1024, 1024)
    assert (sdxl.min_bucket_reso, sdxl.max_bucket_reso, sdxl.bucket_reso_steps) == (512, 2048, 64)
    assert bucket_settings_for("sd15").resolution == (512, 512)


def test_overrides_use_sd_scripts_names() -> None:
    settings = bucket_settings_for(
        "sd15", {"resolution": "512,768", "enable_bucket": False, "learning_rate": 1e-4}
    )
    assert settings.resolution == (512, 768)
    assert settings.enable_bucket is False
    assert bucket_settings_for("sdxl", {"bucket_reso_steps": 32}).bucket_reso_steps == 32


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("512", (512, 512)), ("512,768", (512, 768)), (768, (768, 768)), ([640, 512], (640, 512))],
)
def test_parse_resolution(value: object, parsed: tuple[int, int]) -> None:
    assert parse_resolution(value) == parsed


@pytest.mark.parametrize("value", ["abc", "512,x", "0", True, None, "1,2,3"])
def test_bad_resolution_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="resolution"):
        parse_resolution(value)


def test_unknown_model_suggests_a_known_one() -> None:
    with pytest.raises(UsageError) as err:
        bucket_settings_for("sdx1")
    assert err.value.hint is not None and "sdxl" in err.value.hint


def test_sd_scripts_start_up_assertions() -> None:
    with pytest.raises(ConfigError, match="multiple of 64"):
        bucket_settings_for("sd15", {"bucket_reso_steps": 32})  # only SDXL accepts 32
    with pytest.raises(ConfigError, match="min_bucket_reso"):
        bucket_settings_for("sd15", {"min_bucket_reso": 640})
    with pytest.raises(ConfigError, match="max_bucket_reso"):
        bucket_settings_for("sd15", {"resolution": "1024,2048", "max_bucket_reso": 1024})


def test_min_and_max_are_rounded_to_the_step_like_sd_scripts() -> None:
    # min 300 -> 256 (down), max 1000 -> 1024 (up): same buckets as the defaults.
    odd = BucketSettings(resolution=(512, 512), min_bucket_reso=300, max_bucket_reso=1000)
    assert bucket_resolutions(odd) == SD15_BUCKETS


def test_min_bucket_rounding_to_zero_is_refused() -> None:
    with pytest.raises(ConfigError, match="rounds down to 0"):
        bucket_settings_for("sd15", {"min_bucket_reso": 32})


def test_no_upscale_extreme_aspect_does_not_crash() -> None:
    # sd-scripts divides by zero here (a side rounds to 0 steps); we return a 0-px bucket that
    # lint and the batch count survive (the image is unusable either way).
    settings = BucketSettings(resolution=(512, 512), bucket_no_upscale=True)
    assert select_bucket((6000, 20), settings)[1] == 0
