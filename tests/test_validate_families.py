"""Validation for flux_train_network.py (FLUX.1, Chroma) and sd3_train_network.py (SD3.5): which
script a file is for, keys of the wrong script, and their start-up assertions as findings."""

from __future__ import annotations

import pytest

from kohyawrap.validate import check_config_text, check_settings, choose_script

SD = "train_network.py"
XL = "sdxl_train_network.py"
FLUX = "flux_train_network.py"
SD3 = "sd3_train_network.py"

# Configs with nothing wrong: each test below changes one thing.
FLUX_OK = {
    "pretrained_model_name_or_path": "models/flux1-dev.safetensors",
    "clip_l": "models/clip_l.safetensors",
    "t5xxl": "models/t5xxl_fp16.safetensors",
    "ae": "models/ae.safetensors",
    "train_data_dir": "dataset",
    "resolution": "1024",
    "caption_extension": ".txt",
    "network_module": "networks.lora_flux",
    "max_train_epochs": 10,
    "mixed_precision": "bf16",
    "guidance_scale": 1.0,
    "timestep_sampling": "shift",
    "discrete_flow_shift": 3.1582,
    "model_prediction_type": "raw",
    "cache_text_encoder_outputs": True,
    "network_train_unet_only": True,
    "fp8_base": True,
    "blocks_to_swap": 16,
}
CHROMA_OK = {k: v for k, v in FLUX_OK.items() if k not in ("clip_l", "discrete_flow_shift")} | {
    "model_type": "chroma",
    "apply_t5_attn_mask": True,
    "guidance_scale": 0.0,
    "timestep_sampling": "sigmoid",
}
SD3_OK = {
    "pretrained_model_name_or_path": "models/sd3.5_large.safetensors",
    "clip_l": "models/clip_l.safetensors",
    "clip_g": "models/clip_g.safetensors",
    "t5xxl": "models/t5xxl_fp16.safetensors",
    "train_data_dir": "dataset",
    "resolution": "1024",
    "caption_extension": ".txt",
    "network_module": "networks.lora_sd3",
    "max_train_epochs": 10,
    "mixed_precision": "bf16",
    "cache_text_encoder_outputs": True,
    "weighting_scheme": "uniform",
    "blocks_to_swap": 36,
}


def codes(settings, script=FLUX, **kw):
    return {(f.severity, f.code, f.subject) for f in check_settings(settings, script=script, **kw)}


@pytest.mark.parametrize(
    ("settings", "script"), [(FLUX_OK, FLUX), (CHROMA_OK, FLUX), (SD3_OK, SD3)]
)
def test_good_configs_have_no_findings(settings, script):
    assert codes(settings, script) == set()


@pytest.mark.parametrize(
    ("settings", "script", "because"),
    [
        (FLUX_OK, FLUX, "network_module = 'networks.lora_flux'"),
        (CHROMA_OK, FLUX, "network_module"),
        (SD3_OK, SD3, "network_module = 'networks.lora_sd3'"),
        ({"guidance_scale": 1.0}, FLUX, "guidance_scale"),
        ({"clip_g": "x", "network_module": "networks.lora"}, SD3, "clip_g"),
        ({"t5xxl": "x"}, FLUX, "assuming FLUX.1"),
        ({"cache_text_encoder_outputs": True}, XL, "SDXL-only"),
        ({"network_dim": 4}, SD, "assuming SD1.x/SD2.x"),
    ],
)
def test_the_script_is_guessed_from_the_module_and_the_options(settings, script, because):
    chosen, reason = choose_script(settings, None)
    assert chosen == script and because in reason


def test_a_key_of_another_script_names_that_script():
    found = check_settings(FLUX_OK | {"training_shift": 3.0}, script=FLUX)
    wrong = [f for f in found if f.code == "wrong-script-key"]
    assert len(wrong) == 1 and "sd3_train_network.py" in wrong[0].message
    assert wrong[0].severity == "error"
    on_sdxl = codes({"guidance_scale": 1.0, "network_module": "networks.lora"}, XL)
    assert ("error", "wrong-script-key", "guidance_scale") in on_sdxl
    # An SDXL-only key on train_network.py keeps its own code.
    assert ("error", "sdxl-only-key", "cache_text_encoder_outputs") in codes(
        {"cache_text_encoder_outputs": True}, SD
    )


def test_did_you_mean_runs_over_the_flux_options():
    found = check_settings(FLUX_OK | {"blocks_to_swp": 8}, script=FLUX)
    typo = next(f for f in found if f.subject == "blocks_to_swp")
    assert typo.code == "unknown-key" and "blocks_to_swap" in (typo.hint or "")
    sd3 = check_settings(SD3_OK | {"training_shif": 3.0}, script=SD3)
    assert "training_shift" in (next(f for f in sd3 if f.subject == "training_shif").hint or "")


def test_choice_options_without_a_type_take_strings():
    assert codes(FLUX_OK | {"timestep_sampling": "shift"}) == set()
    assert ("error", "choice", "timestep_sampling") not in codes(
        FLUX_OK | {"timestep_sampling": "flux_shift"}
    )
    assert ("error", "choice", "timestep_sampling") in codes(FLUX_OK | {"timestep_sampling": "x"})
    assert ("error", "type", "model_prediction_type") in codes(
        FLUX_OK | {"model_prediction_type": 1}
    )


@pytest.mark.parametrize(
    ("settings", "script", "finding"),
    [
        (FLUX_OK | {"network_module": "networks.lora"}, FLUX,
         ("error", "network-module-family", "network_module")),
        (SD3_OK | {"network_module": "networks.lora"}, SD3,
         ("error", "network-module-family", "network_module")),
        ({**FLUX_OK, "network_module": "networks.lora_flux", "v2": False} | {"clip_l": ""}, FLUX,
         ("error", "missing-companion", "clip_l")),
        ({k: v for k, v in FLUX_OK.items() if k != "ae"}, FLUX,
         ("error", "missing-companion", "ae")),
        ({k: v for k, v in CHROMA_OK.items() if k != "t5xxl"}, FLUX,
         ("error", "missing-companion", "t5xxl")),
        ({k: v for k, v in SD3_OK.items() if k != "clip_g"}, SD3,
         ("warning", "companion-from-checkpoint", "clip_g")),
        (CHROMA_OK | {"clip_l": "x.safetensors"}, FLUX, ("note", "chroma-clip-l", "clip_l")),
        (FLUX_OK | {"pretrained_model_name_or_path": "black-forest-labs/FLUX.1-dev"}, FLUX,
         ("warning", "dit-needs-a-file", "pretrained_model_name_or_path")),
        (FLUX_OK | {"cpu_offload_checkpointing": True}, FLUX,
         ("error", "swap-with-offload", "cpu_offload_checkpointing")),
        (FLUX_OK | {"blocks_to_swap": 36}, FLUX, ("error", "too-many-blocks", "blocks_to_swap")),
        (SD3_OK | {"blocks_to_swap": 37}, SD3, ("error", "too-many-blocks", "blocks_to_swap")),
        ({**SD3_OK, "blocks_to_swap": 0, "cpu_offload_checkpointing": True}, SD3,
         ("error", "offload-unsupported", "cpu_offload_checkpointing")),
        (FLUX_OK | {"shuffle_caption": True}, FLUX,
         ("error", "cache-te-caption-changes", "shuffle_caption")),
        (SD3_OK | {"caption_dropout_rate": 0.1}, SD3,
         ("error", "cache-te-caption-changes", "caption_dropout_rate")),
        ({**FLUX_OK, "cache_text_encoder_outputs": False, "cache_text_encoder_outputs_to_disk": True,
          "token_warmup_step": 10}, FLUX,
         ("error", "cache-te-caption-changes", "token_warmup_step")),
        (FLUX_OK | {"network_args": ["train_t5xxl=True"]}, FLUX,
         ("error", "cache-te-train-t5", "network_args")),
        (FLUX_OK | {"mixed_precision": "no"}, FLUX, ("error", "fp8-needs-mixed", "fp8_base")),
        (CHROMA_OK | {"apply_t5_attn_mask": False}, FLUX,
         ("error", "chroma-t5-mask", "apply_t5_attn_mask")),
        (CHROMA_OK | {"guidance_scale": 3.5}, FLUX,
         ("warning", "chroma-guidance", "guidance_scale")),
        ({k: v for k, v in FLUX_OK.items() if k != "guidance_scale"}, FLUX,
         ("warning", "flux-guidance-default", "guidance_scale")),
        (FLUX_OK | {"split_mode": True}, FLUX, ("error", "split-mode", "split_mode")),
        (FLUX_OK | {"clip_skip": 2}, FLUX, ("warning", "sd-only-option", "clip_skip")),
        (SD3_OK | {"v2": True}, SD3, ("warning", "sd-only-option", "v2")),
        (FLUX_OK | {"max_token_length": 225}, FLUX, ("warning", "sd-only-option", "max_token_length")),
        (FLUX_OK | {"timestep_sampling": "sigma"}, FLUX,
         ("note", "flow-shift-unused", "discrete_flow_shift")),
        (FLUX_OK | {"bucket_reso_steps": 32}, FLUX,
         ("error", "bucket-reso-steps", "bucket_reso_steps")),
        (FLUX_OK | {"pretrained_model_name_or_path": "sd3.5_large.safetensors"}, FLUX,
         ("warning", "model-wrong-script", "pretrained_model_name_or_path")),
        ({"pretrained_model_name_or_path": "models/flux1-dev.safetensors", "train_data_dir": "d",
          "resolution": "1024", "caption_extension": ".txt", "network_module": "networks.lora",
          "max_train_epochs": 1}, XL,
         ("warning", "model-wrong-script", "pretrained_model_name_or_path")),
        ({"pretrained_model_name_or_path": "x", "train_data_dir": "d", "resolution": "512",
          "caption_extension": ".txt", "network_module": "networks.lora_flux",
          "max_train_epochs": 1}, SD,
         ("error", "network-module-family", "network_module")),
    ],
)  # fmt: skip
def test_each_start_up_assertion_and_trap_is_a_finding(settings, script, finding):
    assert finding in codes(settings, script)


def test_sd3_accepts_32_steps_and_sdxl_like_buckets():
    assert codes(SD3_OK | {"bucket_reso_steps": 32}, SD3) == set()


def test_the_flux_network_module_is_not_an_unknown_module_note():
    assert not [f for f in check_settings(FLUX_OK, script=FLUX) if f.code == "network-module"]
    other = codes(FLUX_OK | {"network_module": "lycoris.kohya"})
    assert ("note", "network-module", "network_module") in other


def test_a_rendered_flux_file_checks_clean_as_text():
    text = "\n".join(f"{k} = {_toml(v)}" for k, v in FLUX_OK.items()) + "\n"
    report = check_config_text(text)
    assert report.script == FLUX and report.errors == ()


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
