"""Showing host facts: one table, then the notes that matter."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kohyawrap.console import stdout

if TYPE_CHECKING:
    from kohyawrap.hosts.facts import Gpu, HostFacts


def _or_missing(value: object) -> str:
    return "[dim]missing[/]" if value in (None, "") else str(value)


def _gpu_line(g: Gpu) -> str:
    """``0: NVIDIA GeForce RTX 4090 (24 GiB, 23.7 GiB free, 1 other process)``."""
    from rich.markup import escape

    parts = [f"{g.memory_mib / 1024:.0f} GiB"] if g.memory_mib else []
    if g.memory_free_mib is not None:
        parts.append(f"{g.memory_free_mib / 1024:.1f} GiB free")
    if g.processes:
        parts.append(f"{len(g.processes)} other process(es)")
    index = f"{g.index}: " if g.index is not None else ""
    return f"{index}{escape(g.name)}" + (f" ({', '.join(parts)})" if parts else "")


def facts_rows(facts: HostFacts) -> list[tuple[str, str]]:
    """The (label, value) rows shown for a host (rich markup in values)."""
    from rich.markup import escape

    gpus = [_gpu_line(g) for g in facts.gpus]
    free = (
        "unknown"
        if facts.disk_free_gb is None
        else f"{facts.disk_free_gb:.1f} GB free at {escape(facts.disk_path)}"
    )
    torch = None
    if facts.torch_version:
        torch = (
            f"{facts.torch_version} (CUDA {'available' if facts.torch_cuda else 'NOT available'})"
        )
    return [
        ("GPU", "\n".join(gpus) or "[yellow]none found[/]"),
        (
            "driver / CUDA",
            f"{_or_missing(facts.driver_version)} / {_or_missing(facts.cuda_version)}",
        ),
        ("OS", f"{escape(facts.os)} ({facts.arch}), {facts.cpu_count or '?'} CPUs"),
        ("memory", "unknown" if facts.memory_mib is None else f"{facts.memory_mib / 1024:.0f} GiB"),
        ("disk", free),
        ("python3", _or_missing(facts.python_version)),
        ("git", _or_missing(facts.git_version)),
        ("uv", _or_missing(facts.uv_version)),
        ("torch", _or_missing(torch)),
        ("sd-scripts", ", ".join(facts.sdscripts_checkouts) or "[dim]not set up yet[/]"),
        ("provider", _provider(facts)),
    ]


def _provider(facts: HostFacts) -> str:
    """Who rents the host, and what --on-finish can do there."""
    from rich.markup import escape

    if facts.provider == "runpod":
        tool = "runpodctl found" if facts.provider_tool else "[yellow]runpodctl not found[/]"
        return f"RunPod pod {escape(facts.provider_id)} ({tool}): --on-finish stop | destroy"
    if facts.provider == "vast":
        return f"Vast.ai instance {escape(facts.provider_id)}: --on-finish stop | destroy"
    return "[dim]none detected[/] (--on-finish shutdown or a command; --provider to force)"


def print_facts(facts: HostFacts) -> None:
    """Print a host's facts as a table, followed by warnings."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(facts.label), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in facts_rows(facts):
        table.add_row(label, value)
    con = stdout()
    con.print(table)
    for note in facts.notes():
        con.print(f"[yellow]note:[/] {escape(note)}")
