"""The likely cause of a NaN loss from the run's settings, and CUDA mismatches in a training log
(kohyawrap/logparse.py)."""

from __future__ import annotations

from kohyawrap.logparse import diagnose, parse
from kohyawrap.models import Failure, RunSpec
from kohyawrap.render import render_run

NAN_FRAME = b"\rsteps:  50%|#####     | 3/6 [00:03<00:03,  1.00s/it, avr_loss=nan]"
INF_FRAME = b"\rsteps:  50%|#####     | 3/6 [00:03<00:03,  1.00s/it, avr_loss=inf]"


def _settings(gpu: str, model: str, *overrides: tuple[str, object]) -> dict[str, object]:
    spec = RunSpec(gpu=gpu, model=model, base_model="/m.safetensors", output_name="n",
                   overrides=tuple(overrides))  # fmt: skip
    return dict(render_run(spec).settings)


def _nan_hint(settings: dict[str, object], frame: bytes = NAN_FRAME) -> str:
    failures = [e for e in parse(frame, settings) if isinstance(e, Failure)]
    assert [f.kind for f in failures] == ["nan"]
    return failures[0].hint


def test_sdxl_in_fp16_without_no_half_vae() -> None:
    # kohyawrap refuses to render this (validate.py), so it comes from a hand-written config:
    # an SDXL run's settings (sdxl_train_network.py's own options) in fp16.
    settings = {"mixed_precision": "fp16", "cache_text_encoder_outputs": True,
                "optimizer_type": "AdamW8bit", "unet_lr": 1e-4}  # fmt: skip
    hint = _nan_hint(settings)
    assert "likely cause: SDXL in fp16 without no_half_vae" in hint
    assert "--set no_half_vae=true" in hint


def test_flux_or_sd3_in_fp16_is_not_told_about_sdxl_vae() -> None:
    # The FLUX.1 and SD3 scripts have cache_text_encoder_outputs too; their VAE is not SDXL's.
    for module, extra in (("networks.lora_flux", {"t5xxl": "/m/t5.safetensors"}),
                          ("networks.lora_sd3", {})):  # fmt: skip
        settings = {"mixed_precision": "fp16", "cache_text_encoder_outputs": True,
                    "network_module": module, "unet_lr": 1e-4, **extra}  # fmt: skip
        assert "no_half_vae" not in _nan_hint(settings)


def test_prodigy_with_fp16() -> None:
    settings = _settings("vram-16", "sd15", ("optimizer_type", "Prodigy"), ("learning_rate", 1.0),
                         ("unet_lr", 1.0), ("text_encoder_lr", 1.0))  # fmt: skip
    hint = _nan_hint(settings)
    assert "likely cause: Prodigy with fp16" in hint
    assert "learning rate too high" not in hint  # Prodigy's lr of 1.0 is how it is used


def test_learning_rate_too_high_even_as_inf() -> None:
    settings = _settings("rtx4090", "sd15", ("unet_lr", 0.02))
    hint = _nan_hint(settings, INF_FRAME)
    assert "likely cause: a learning rate too high for AdamW8bit (unet_lr=0.02;" in hint
    assert "--set unet_lr=0.002" in hint


def test_nothing_stands_out_gives_the_general_advice() -> None:
    hint = _nan_hint(_settings("rtx4090", "sdxl"))
    assert "likely cause" not in hint
    assert hint.startswith("the loss became NaN, so the LoRA is ruined: lower the learning rate")


def test_bitsandbytes_without_cuda_and_an_old_driver() -> None:
    bnb = diagnose(
        "Traceback (most recent call last):\n"
        "OSError: libbitsandbytes_cuda124.so: cannot open shared object file\n"
    )
    assert bnb is not None and bnb.kind == "cuda" and "pip install -U bitsandbytes" in bnb.hint
    old = diagnose(
        "Traceback (most recent call last):\n"
        "RuntimeError: The NVIDIA driver on your system is too old (found version 11040)."
        " Please update your GPU driver\n"
    )
    assert old is not None and old.kind == "cuda" and "--torch-spec" in old.hint
