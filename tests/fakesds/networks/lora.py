"""Fake ``networks.lora``: imported by name from ``network_module`` like the real one."""

from __future__ import annotations

from typing import Any


def describe(console: Any, unet_only: bool) -> None:
    """Log the modules the LoRA wraps, as the real module does when it creates the network."""
    if not unet_only:
        console.info("create LoRA for Text Encoder: 72 modules.", "lora.py:1035")
    console.info("create LoRA for U-Net: 192 modules.", "lora.py:1043")
