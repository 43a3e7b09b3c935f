"""FLUX.1, Chroma and SD3.5 on every GPU preset: golden files, accepted by `config check`, every
key an option of the real parser at the pinned commit, and the family's documented settings."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import tomlkit

from kohyawrap.errors import ConfigError
from kohyawrap.models import RunSpec
from kohyawrap.models_fetch import render_paths
from kohyawrap.presets import load_catalog
from kohyawrap.render import render_run
from kohyawrap.resources import presets_dir
from kohyawrap.sdscripts import FAMILIES, PINNED_COMMIT, arguments
from kohyawrap.validate import check_config_text
from tests.test_render import assert_golden

CATALOG = load_catalog(user_dir=Path("/nonexistent-kohyawrap-user-dir"))
GPUS = sorted(CATALOG.gpus)
NEW = ("flux-dev", "flux-schnell", "chroma", "sd35-large", "sd35-medium")
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "sd-scripts"
DATA = Path(__file__).resolve().parents[1] / "kohyawrap" / "data"


def spec_for(gpu: str, model: str, **kw: object) -> RunSpec:
    base, companions = render_paths(CATALOG.model(model), {})
    return RunSpec(
        gpu=gpu, model=model, base_model=base, companions=companions, output_name="my_lora", **kw
    )  # type: ignore[arg-type]


def _flat(text: str) -> dict[str, object]:
    return {k: v for s in tomlkit.parse(text).unwrap().values() for k, v in s.items()}


@pytest.mark.parametrize("model", NEW)
@pytest.mark.parametrize("gpu", GPUS)
def test_every_gpu_renders_every_new_family_and_config_check_accepts_it(gpu, model):
    preset = CATALOG.model(model)
    family = preset.family_info
    rendered = render_run(spec_for(gpu, model), catalog=CATALOG)
    assert_golden(f"{gpu}-{model}", rendered.files)
    text = rendered.files["training_config.toml"]
    flat = _flat(text)
    assert flat == rendered.settings
    # config check (what `kohyawrap config check --model M --gpu G` runs): no errors, and with
    # no --model it still picks the right script.
    report = check_config_text(text, family=preset.family, bf16_supported=True)
    assert report.errors == (), report.errors
    assert check_config_text(text).script == family.script
    # Every key is an option of the real parser of that script (kohyawrap/data, 48d368fa).
    assert set(flat) <= set(arguments(family.script))
    assert rendered.script == family.script and flat["network_module"] == family.network_module
    assert "split_mode" not in flat
    companions = {c.key for c in family.companions}
    assert {k for k in ("clip_l", "clip_g", "t5xxl", "ae") if k in flat} == companions
    assert flat["bucket_reso_steps"] % family.bucket_multiple == 0
    swap = flat.get("blocks_to_swap", 0)
    assert isinstance(swap, int) and 0 <= swap <= family.max_blocks_to_swap
    assert not (swap and flat.get("cpu_offload_checkpointing"))
    if swap or flat.get("fp8_base"):
        assert flat["mixed_precision"] in ("bf16", "fp16")  # fp8_base asserts mixed precision
    if flat.get("cache_text_encoder_outputs"):
        assert not any(flat.get(k) for k in ("shuffle_caption", "caption_dropout_rate"))


@pytest.mark.parametrize("model", ("flux-dev", "flux-schnell"))
def test_flux_trains_with_the_documented_flow_settings(model):
    flat = render_run(spec_for("rtx4090", model), catalog=CATALOG).settings
    # docs/flux_train_network.md:352 and :216: not the parser defaults (sigma, sigma_scaled, 3.5)
    assert (flat["timestep_sampling"], flat["model_prediction_type"]) == ("shift", "raw")
    assert flat["discrete_flow_shift"] == 3.1582 and flat["guidance_scale"] == 1.0
    assert flat["model_type"] == "flux" and flat["fp8_base"] is True
    assert flat["train_batch_size"] == 2  # the doc's 24 GB row


def test_chroma_needs_its_mask_and_no_guidance():
    flat = render_run(spec_for("rtx4090", "chroma"), catalog=CATALOG).settings
    assert flat["model_type"] == "chroma" and flat["apply_t5_attn_mask"] is True
    assert flat["guidance_scale"] == 0.0 and flat["timestep_sampling"] == "sigmoid"
    assert "clip_l" not in flat
    prompts = render_run(spec_for("rtx4090", "chroma"), catalog=CATALOG).files["sample_prompts.txt"]
    assert "--l 4 --g 0 --s 20" in prompts  # docs/flux_train_network.md:173-176


def test_small_cards_swap_blocks_as_the_flux_doc_says():
    def swap(gpu: str, vram: float | None = None) -> object:
        spec = spec_for(gpu, "flux-dev", vram_gb=vram)
        return render_run(spec, catalog=CATALOG).settings.get("blocks_to_swap")

    assert swap("rtx3060-12gb") == 16  # flux_train_network.md:288
    assert swap("rtx3060-12gb", 10) == 22 and swap("rtx3060-12gb", 8) == 28  # :289-290
    assert swap("rtx4090") is None and swap("h100") is None


def test_sd35_uses_lora_sd3_not_the_docs_networks_lora():
    flat = render_run(spec_for("rtx4060ti-16gb", "sd35-large"), catalog=CATALOG).settings
    assert flat["network_module"] == "networks.lora_sd3"
    assert (flat["fp8_base"], flat["train_batch_size"]) == (True, 2)  # the README's 16 GB sample
    with pytest.raises(ConfigError, match=r"networks\.lora_sd3"):
        render_run(
            spec_for("rtx4090", "sd35-large", overrides=(("network_module", "networks.lora"),)),
            catalog=CATALOG,
        )


def test_split_mode_is_never_rendered():
    with pytest.raises(ConfigError, match="split_mode"):
        render_run(
            spec_for("rtx4090", "flux-dev", overrides=(("split_mode", True),)), catalog=CATALOG
        )


def test_companion_paths_are_written_as_given():
    spec = replace(
        spec_for("rtx4090", "flux-dev"),
        companions=(
            ("clip_l", "/data/模型/clip_l.safetensors"),
            ("t5xxl", "../te/t5 $(x).safetensors"),
            ("ae", "models/ae.safetensors"),
        ),
    )
    flat = render_run(spec, catalog=CATALOG).settings
    assert flat["clip_l"] == "/data/模型/clip_l.safetensors"
    assert flat["t5xxl"] == "../te/t5 $(x).safetensors"
    missing = replace(spec, companions=(("clip_l", "a"), ("t5xxl", "b")))
    with pytest.raises(ConfigError, match="ae"):
        render_run(missing, catalog=CATALOG)


def test_smoke_runs_drop_fp8_and_block_swap():
    flat = render_run(spec_for("rtx3060-12gb", "flux-dev", smoke=True), catalog=CATALOG).settings
    assert flat["mixed_precision"] == "no" and flat["resolution"] == "128"
    for key in ("fp8_base", "blocks_to_swap", "cache_text_encoder_outputs_to_disk"):
        assert key not in flat, key
    assert flat["cache_text_encoder_outputs"] is False


@pytest.mark.parametrize("script", ("flux_train_network.py", "sd3_train_network.py"))
def test_shipped_argument_lists_are_the_real_parsers(script):
    shipped = json.loads((DATA / FAMILIES_FILES[script]).read_text(encoding="utf-8"))
    assert shipped["sd_scripts_commit"] == PINNED_COMMIT and shipped["script"] == script
    reference = REFERENCE / FAMILIES_FILES[script]
    if not reference.is_file():
        pytest.skip("shared/reference is not next to this checkout")
    real = json.loads(reference.read_text(encoding="utf-8"))
    keep = ("action", "choices", "default", "group", "name", "nargs", "type")
    wanted = [{k: a[k] for k in keep} for a in real["arguments"] if a["action"] != "help"]
    assert shipped["arguments"] == wanted
    assert real["provenance"]["sd_scripts_commit"] == PINNED_COMMIT


FAMILIES_FILES = {f.script: f.args_file for f in FAMILIES.values()}


def test_every_new_model_preset_names_its_family_files():
    for model in NEW:
        preset = CATALOG.model(model)
        keys = {c.key for c in preset.family_info.companions}
        assert set(preset.files) == {"base", *keys}, model
        assert (presets_dir() / "models" / f"{model}.toml").is_file()
