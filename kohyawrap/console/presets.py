"""Presentation of ``kohyawrap presets``: catalog tables and resolved options with sources."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kohyawrap.console import wide

if TYPE_CHECKING:
    from kohyawrap.presets import Catalog, Resolved


def show_catalog(catalog: Catalog, user_dir: Path) -> None:
    """A table of GPU presets and one of model presets."""
    from rich.markup import escape
    from rich.table import Table

    con = wide()
    gpus = Table(title="GPU presets", title_justify="left")
    for column in ("name", "card", "VRAM", "arch", "bf16", "$/h typical (range)", "speed vs 4090"):
        gpus.add_column(column)
    for g in sorted(catalog.gpus.values(), key=lambda g: (g.vram_gb, g.name)):
        low, high = g.price_range
        price = f"{g.price_per_hour:.2f} ({low:.2f}-{high:.2f})"
        bf16 = "yes" if g.bf16 else "no"
        speed = f"{g.relative_speed:.2f}x"
        gpus.add_row(g.name, escape(g.title), f"{g.vram_gb:g} GB", g.arch, bf16, price, speed)
    con.print(gpus)
    models = Table(title="Model presets", title_justify="left")
    for column in ("name", "model", "script", "resolution", "also loads"):
        models.add_column(column, no_wrap=column == "script")
    for m in sorted(catalog.models.values(), key=lambda m: m.name):
        extra = ", ".join(c.key for c in m.family_info.companions) or "-"
        models.add_row(m.name, escape(m.title), m.script, str(m.resolution), extra)
    con.print(models)
    con.print(
        f'User presets (may `extends = "rtx4090"`): {user_dir}/gpus/*.toml, '
        f"{user_dir}/models/*.toml"
    )
    con.print("Cards without a preset: --vram N (e.g. --vram 20).")


def show_resolved(resolved: Resolved) -> None:
    """Every option of a GPU x model combination with its origin and source."""
    from rich.markup import escape
    from rich.table import Table

    con = wide()
    gpu = resolved.gpu
    bf16 = "yes" if gpu.bf16 else "no"
    con.print(
        f"[bold]{escape(gpu.title)}[/] ({gpu.name}, {gpu.vram_gb:g} GB, bf16 {bf16}, "
        f"~${gpu.price_per_hour:.2f}/h) x [bold]{escape(resolved.model.title)}[/] "
        f"-> {resolved.script}"
    )
    tier = resolved.tier.label if resolved.tier else "none"
    con.print(f"GPU file: {escape(gpu.path)}   tier: {escape(tier)}")
    facts = Table(title="GPU facts", title_justify="left")
    for column in ("fact", "value", "source"):
        facts.add_column(column, overflow="fold", no_wrap=column != "source")
    family = resolved.model.family
    for key in (
        "gpu.vram_gb",
        "gpu.bf16",
        "gpu.price_per_hour",
        f"speed.{family}.step_overhead_s",
        f"speed.{family}.s_per_image",
    ):
        facts.add_row(
            key, escape(repr(_fact(resolved, key))), escape(gpu.sources.get(key, "-") or "-")
        )
    con.print(facts)
    table = Table(
        title="training options (later rows of the same kind override earlier ones)",
        title_justify="left",
    )
    for column in ("option", "value", "from", "source"):
        table.add_column(column, overflow="fold", no_wrap=column in ("option", "from"))
    for s in resolved.settings:
        table.add_row(s.key, escape(repr(s.value)), escape(s.origin), escape(s.source or "-"))
    con.print(table)
    con.print("[dim]\\[n] in a source: an entry of docs/sources.md in kohyawrap's repository.[/]")
    for note in resolved.notes:
        con.print(f"[cyan]note[/] {escape(note.subject or '')}: {escape(note.message)}")


def _fact(resolved: Resolved, key: str) -> object:
    gpu = resolved.gpu
    if key.startswith("speed."):
        speed = gpu.speed.get(resolved.model.family)
        return getattr(speed, key.rsplit(".", 1)[1], None) if speed else None
    return getattr(gpu, key.split(".", 1)[1])
