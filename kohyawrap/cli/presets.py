"""``kohyawrap presets``: list GPU and model presets, and show how a combination resolves."""

from __future__ import annotations

from typing import Any

import click

from kohyawrap.cli.complete import gpu_names, model_names
from kohyawrap.cli.types import VRAM_GB


@click.group()
def presets() -> None:
    """List GPU and model presets and show where each value comes from.

    \b
    Examples:
      kohyawrap presets list
      kohyawrap presets show rtx4090 --model sdxl
    """


@presets.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the presets as JSON.")
def list_(as_json: bool) -> None:
    """List the GPU and model presets (shipped and your own).

    \b
    Example:
      kohyawrap presets list --json
    """
    from kohyawrap.presets import load_catalog, user_presets_dir

    catalog = load_catalog()
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(catalog_json(catalog))
        return
    from kohyawrap.console.presets import show_catalog

    show_catalog(catalog, user_presets_dir())


def catalog_json(catalog: Any) -> dict[str, Any]:
    """GPUs and models as data."""
    gpus = {
        g.name: {
            "title": g.title,
            "vram_gb": g.vram_gb,
            "arch": g.arch,
            "bf16": g.bf16,
            "price_per_hour": g.price_per_hour,
            "price_range": list(g.price_range),
            "relative_speed": g.relative_speed,
            "file": g.path,
            "speed": {m: dict(vars(s)) for m, s in g.speed.items()},
        }
        for g in catalog.gpus.values()
    }
    models = {
        m.name: {
            "title": m.title,
            "family": m.family,
            "script": m.script,
            "network_module": m.family_info.network_module,
            "companions": [c.key for c in m.family_info.companions],
            "resolution": m.resolution,
            "base_model": m.base_model,
            "file": m.path,
        }
        for m in catalog.models.values()
    }
    return {"gpus": gpus, "models": models}


@presets.command()
@click.argument("gpu", shell_complete=gpu_names)
@click.option(
    "--model",
    required=True,
    shell_complete=model_names,
    help="Model preset, e.g. sdxl or flux-dev (or a user preset).",
)
@click.option("--vram", type=VRAM_GB, help="Override the card's VRAM in GB (picks another tier).")
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override an option, repeatable."
)
@click.option("--smoke", is_flag=True, help="Show the CPU smoke-test options instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved values as JSON.")
def show(
    gpu: str, model: str, vram: float | None, sets: tuple[str, ...], smoke: bool, as_json: bool
) -> None:
    """Show the options GPU x model resolves to, and where each value came from.

    \b
    Examples:
      kohyawrap presets show rtx4090 --model sdxl
      kohyawrap presets show rtx3090 --model flux-dev
      kohyawrap presets show vram-10 --model sdxl --set network_dim=8
    """
    from kohyawrap.presets import load_catalog, parse_overrides, refuse_bad_overrides, resolve

    catalog = load_catalog()
    script = catalog.model(model).script
    overrides = parse_overrides(sets, script)
    resolved = resolve(catalog, gpu, model, vram_gb=vram, overrides=overrides, smoke=smoke)
    refuse_bad_overrides(resolved, overrides)
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(resolved_json(resolved))
        return
    from kohyawrap.console.presets import show_resolved

    show_resolved(resolved)


def resolved_json(resolved: Any) -> dict[str, Any]:
    """A resolved combination as data: GPU facts, tier, and every option with its origin."""
    gpu = resolved.gpu
    return {
        "gpu": {
            "name": gpu.name,
            "title": gpu.title,
            "vram_gb": gpu.vram_gb,
            "bf16": gpu.bf16,
            "price_per_hour": gpu.price_per_hour,
            "file": gpu.path,
            "known": gpu.known,
        },
        "model": {
            "name": resolved.model.name,
            "family": resolved.model.family,
            "script": resolved.script,
        },
        "tier": resolved.tier.label if resolved.tier else None,
        "settings": [dict(vars(s)) for s in resolved.settings],
        "notes": [n.to_json() for n in resolved.notes],
    }
