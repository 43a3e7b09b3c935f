"""Validation: every trap sd-scripts springs late or silently, and the tutorial's real problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohyawrap.errors import ConfigError
from kohyawrap.validate import check_config_text, check_dataset_config, check_settings, flatten

TUTORIAL = (
    Path(__file__).parent.parent.parent / "shared" / "reference" / "tutorial_training_config.toml"
)
SD = "train_network.py"
XL = "sdxl_train_network.py"

# A config with nothing wrong: the baseline each trap below changes one thing in.
GOOD = {
    "pretrained_model_name_or_path": "model.safetensors",
    "train_data_dir": "dataset",
    "resolution": "512",
    "caption_extension": ".txt",
    "network_module": "networks.lora",
    "max_train_epochs": 10,
    "output_dir": "output",
    "mixed_precision": "bf16",
}


def codes(settings, script=SD, **kw):
    return {(f.severity, f.code, f.subject) for f in check_settings(settings, script=script, **kw)}


def test_a_good_config_has_no_findings():
    assert codes(GOOD) == set()
    assert (
        codes(GOOD | {"cache_text_encoder_outputs": True, "network_train_unet_only": True}, XL)
        == set()
    )


TUTORIAL_TEXT = """\
[model]
pretrained_model_name_or_path = "./models/sd/v1-5-pruned.safetensors"
v2 = false
v_parameterization = false

[dataset]
train_data_dir = "./training_data"
resolution = 512
batch_size = 2
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 1024

[training]
output_dir = "./output"
output_name = "my_lora"
max_train_epochs = 10
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = 5e-5
lr_scheduler = "cosine_with_restarts"
lr_warmup_steps = 100
network_dim = 32
network_alpha = 16
optimizer_type = "AdamW8bit"
mixed_precision = "fp16"
save_every_n_epochs = 2
save_model_as = "safetensors"
"""


def _tutorial_text() -> str:
    # The shared copy when the checkout has shared/ beside it, else the same text inlined.
    return TUTORIAL.read_text(encoding="utf-8") if TUTORIAL.is_file() else TUTORIAL_TEXT


def test_the_tutorial_config_has_exactly_its_real_problems():
    report = check_config_text(_tutorial_text(), where="tutorial")
    found = {(f.severity, f.code, f.subject) for f in report.findings}
    assert found == {
        ("error", "resolution-type", "resolution"),  # fatal at start
        ("error", "unknown-key", "batch_size"),  # silently ignored
        ("error", "missing-network-module", "network_module"),  # fatal, late
        ("warning", "caption-extension", "caption_extension"),  # .caption default
        ("note", "no-restarts", "lr_scheduler"),
        ("note", "needs-bitsandbytes", "optimizer_type"),
    }
    assert report.script == SD
    by_key = {f.subject: f for f in report.findings}
    assert "train_batch_size" in (by_key["batch_size"].hint or "")
    assert by_key["resolution"].hint.startswith('resolution = "512"')
    assert "'int' object has no attribute 'split'" in by_key["resolution"].message
    assert "networks.lora" in by_key["network_module"].hint
    assert [f.severity for f in report.findings] == sorted(
        (f.severity for f in report.findings), key=["error", "warning", "note"].index
    )


def test_inlined_tutorial_matches_the_shared_one():
    if not TUTORIAL.is_file():
        pytest.skip("shared/ is not beside this checkout")
    shared = {k: v for k, v in check_config_text(TUTORIAL.read_text()).settings.items()}
    assert shared == check_config_text(TUTORIAL_TEXT).settings


@pytest.mark.parametrize(
    ("change", "script", "expected"),
    [
        ({"learning_rate": "1e-4"}, SD, ("error", "type", "learning_rate")),
        ({"train_batch_size": 2.0}, SD, ("error", "type", "train_batch_size")),
        ({"gradient_checkpointing": "true"}, SD, ("error", "type", "gradient_checkpointing")),
        ({"network_args": "conv_dim=4"}, SD, ("error", "type", "network_args")),
        ({"network_args": ["conv_dim"]}, SD, ("error", "network-args", "network_args")),
        ({"face_crop_aug_range": [2.0, 4.0]}, SD, ("error", "type", "face_crop_aug_range")),
        ({"resolution": "512x768"}, SD, ("error", "resolution-format", "resolution")),
        ({"mixed_precision": "fp17"}, SD, ("error", "choice", "mixed_precision")),
        ({"batch_size": 4}, SD, ("error", "unknown-key", "batch_size")),
        (
            {"cache_text_encoder_outputs": True},
            SD,
            ("error", "sdxl-only-key", "cache_text_encoder_outputs"),
        ),
        (
            {"cache_text_encoder_outputs": True},
            XL,
            ("error", "cache-te-needs-unet-only", "cache_text_encoder_outputs"),
        ),
        ({"mixed_precision": "fp16"}, XL, ("error", "sdxl-fp16-vae", "no_half_vae")),
        ({"v2": True}, XL, ("error", "sdxl-v2", "v2")),
        ({"v_parameterization": True}, SD, ("warning", "v-param-without-v2", "v_parameterization")),
        ({"bucket_reso_steps": 32}, SD, ("error", "bucket-reso-steps", "bucket_reso_steps")),
        ({"bucket_reso_steps": 48}, XL, ("error", "bucket-reso-steps", "bucket_reso_steps")),
        (
            {"enable_bucket": True, "min_bucket_reso": 768},
            SD,
            ("error", "bucket-range", "min_bucket_reso"),
        ),
        (
            {"enable_bucket": True, "resolution": "1024", "max_bucket_reso": 768},
            SD,
            ("error", "bucket-range", "max_bucket_reso"),
        ),
        (
            {"cache_latents": True, "color_aug": True},
            SD,
            ("error", "cache-latents-augment", "color_aug"),
        ),
        (
            {"full_bf16": True, "mixed_precision": "fp16"},
            SD,
            ("error", "full-precision", "full_bf16"),
        ),
        ({"fp8_base": True, "mixed_precision": "no"}, SD, ("error", "fp8-needs-mixed", "fp8_base")),
        ({"log_with": "tensorboard"}, SD, ("error", "log-without-dir", "logging_dir")),
        (
            {"optimizer_type": "Prodigy", "mixed_precision": "fp16"},
            SD,
            ("warning", "prodigy-fp16", "optimizer_type"),
        ),
        ({"output_config": True}, SD, ("warning", "output-config", "output_config")),
        ({"caption_extension": "txt"}, SD, ("warning", "caption-extension", "caption_extension")),
        (
            {"pretrained_model_name_or_path": "sd_xl_base_1.0.safetensors"},
            SD,
            ("warning", "sdxl-model-wrong-script", "pretrained_model_name_or_path"),
        ),
        ({"clip_skip": 2}, XL, ("warning", "sdxl-clip-skip", "clip_skip")),
        ({"network_module": "lycoris.kohya"}, SD, ("note", "network-module", "network_module")),
        ({"max_train_steps": 500}, SD, ("note", "epochs-win", "max_train_steps")),
        ({"dataset_config": "d.toml"}, SD, ("warning", "dataset-config-wins", "train_data_dir")),
    ],
)
def test_each_trap_is_named(change, script, expected):
    assert expected in codes(GOOD | change, script)


@pytest.mark.parametrize(
    "blocker",
    ["shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate", "token_warmup_step"],
)
def test_cached_text_encoder_outputs_forbid_caption_changes(blocker):
    settings = GOOD | {"cache_text_encoder_outputs": True, "network_train_unet_only": True}
    value = True if blocker == "shuffle_caption" else 0.1
    assert ("error", "cache-te-caption-changes", blocker) in codes(settings | {blocker: value}, XL)


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("network_module", ("error", "missing-network-module", "network_module")),
        ("caption_extension", ("warning", "caption-extension", "caption_extension")),
        ("max_train_epochs", ("warning", "default-steps", "max_train_steps")),
        ("resolution", ("error", "missing-resolution", "resolution")),
        ("train_data_dir", ("error", "missing-data", "train_data_dir")),
        (
            "pretrained_model_name_or_path",
            ("error", "missing-model", "pretrained_model_name_or_path"),
        ),
    ],
)
def test_each_missing_option_is_named(missing, expected):
    settings = {k: v for k, v in GOOD.items() if k != missing}
    assert expected in codes(settings)


def test_accepted_forms_are_not_flagged():
    ok = GOOD | {
        "text_encoder_lr": 5e-5,  # a single number: train_network's backward-compatible branch
        "learning_rate": 1,  # an int where a float goes is fine in Python
        "lr_warmup_steps": 0.1,  # int_or_float (a ratio)
        "lr_scheduler": "cosine",  # the default, constant, refuses a warmup
        "resolution": "512,768",
        "network_args": ["conv_dim=4", "conv_alpha=1"],
        "caption_extention": ".txt",  # legacy spelling sd-scripts still accepts
        "max_token_length": 225,
        "save_precision": "fp16",
    }
    assert codes(ok) == set()


def test_bf16_on_a_card_without_it():
    assert ("error", "no-bf16", "mixed_precision") in codes(GOOD, bf16_supported=False)
    assert codes(GOOD, bf16_supported=True) == set()


def test_flatten_is_one_level_and_later_wins():
    flat = flatten(
        {"top": 1, "a": {"train_batch_size": 3}, "b": {"train_batch_size": 4, "sub": {"x": 1}}}
    )
    assert flat.settings == {"top": 1, "train_batch_size": 4}
    assert flat.sections["train_batch_size"] == "b"
    found = {(f.code, f.subject) for f in flat.findings}
    assert found == {("duplicate-key", "train_batch_size"), ("nested-table", "sub")}
    assert "(4)" in next(f.message for f in flat.findings if f.code == "duplicate-key")


def test_script_is_guessed_from_sdxl_only_keys():
    report = check_config_text(
        "cache_text_encoder_outputs = true\nnetwork_train_unet_only = true\n"
    )
    assert report.script == XL and "cache_text_encoder_outputs" in report.script_reason
    assert check_config_text("", family="sdxl").script == XL


def test_not_toml_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        check_config_text("resolution = = 5", where="x.toml")
    assert "x.toml" in str(err.value)


def _dataset_doc(**subset):
    return {
        "general": {"resolution": 512, "batch_size": 2, "caption_extension": ".txt"},
        "datasets": [
            {"subsets": [{"image_dir": "dataset/10_sks dog", "num_repeats": 10} | subset]}
        ],
    }


def test_dataset_config_schema():
    assert check_dataset_config(_dataset_doc()) == ()
    assert check_dataset_config(_dataset_doc() | {"general": {"resolution": [512, 768]}}) == ()
    bad = {(f.code, f.subject) for f in check_dataset_config(_dataset_doc(num_repeat=3))}
    assert bad == {("dc-unknown-key", "num_repeat")}
    hint = check_dataset_config(_dataset_doc(num_repeat=3))[0].hint
    assert "num_repeats" in (hint or "")
    typed = {(f.code, f.subject) for f in check_dataset_config(_dataset_doc(num_repeats="10"))}
    assert typed == {("dc-type", "num_repeats")}
    doc = _dataset_doc()
    doc["general"]["resolution"] = "512"  # a string is right in --config_file, wrong here
    assert {(f.code, f.subject) for f in check_dataset_config(doc)} == {("dc-type", "resolution")}
    no_dir = {"datasets": [{"subsets": [{"num_repeats": 1}]}]}
    assert ("dc-required", "image_dir") in {
        (f.code, f.subject) for f in check_dataset_config(no_dir)
    }
    assert ("dc-unknown-key", "train") in {
        (f.code, f.subject) for f in check_dataset_config({"train": {}})
    }
