"""Fake ``networks.lora_flux``: imported by name from ``network_module`` like the real one."""

from __future__ import annotations

from typing import Any


def describe(console: Any, unet_only: bool) -> None:
    """Log the modules the LoRA wraps, as the real module does when it creates the network."""
    if not unet_only:
        console.info("create LoRA for Text Encoder 1: 72 modules.", "lora_flux.py:946")
    console.info("create LoRA for FLUX all blocks: 304 modules.", "lora_flux.py:967")
