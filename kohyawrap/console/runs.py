"""``runs list`` and ``runs show``: recorded runs as a table and as a one-screen summary."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from kohyawrap.console import wide

if TYPE_CHECKING:
    from kohyawrap.launcher.manifest import RunManifest
    from kohyawrap.launcher.runstore import RunEntry


def why(m: RunManifest) -> str:
    """The reason behind a status, in a few words (empty when there is nothing to say)."""
    if m.stop_reason is not None:
        return m.stop_reason.value
    if m.failure is not None:
        return m.failure.kind
    if m.missing():
        return f"{len(m.missing())} checkpoint(s) missing"
    if m.status.value == "failed" and m.error:
        return m.error.split(":", 1)[0]
    return ""


def _date(m: RunManifest) -> str:
    try:
        return datetime.fromisoformat(m.plan.created_at).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return m.plan.created_at


def run_row(entry: RunEntry) -> dict[str, Any]:
    """One run as the data of a table row (``runs list --json``)."""
    from kohyawrap.launcher.legs import pulled_everywhere

    m = entry.manifest
    if m is None:
        return {"run_id": entry.run.run_id, "status": "broken", "why": entry.problem}
    return {
        "run_id": m.run_id,
        "date": _date(m),
        "status": m.status.value,
        "why": why(m),
        "target": m.host.target,
        "gpu": m.plan.spec.gpu,
        "steps": m.plan.estimate.steps,
        "checkpoints": sum(
            1
            for f in pulled_everywhere(m).values()
            if f.path.startswith("checkpoints/") and "-state/" not in f.path
        ),
        "cost": m.cost.actual if m.cost else None,
        "legs": m.leg_number,
    }


def show_run_rows(rows: list[dict[str, Any]]) -> None:
    from kohyawrap.launcher.budget import dollars

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("date", "run", "status", "host", "steps", "files", "cost"):
        table.add_column(
            column, justify="right" if column in ("steps", "files", "cost") else "left"
        )
    for r in rows:
        status = r["status"] + (f" ({r['why']})" if r.get("why") else "")
        colour = {"finished": "green", "stopped": "yellow", "running": "cyan"}.get(
            r["status"], "red"
        )
        cost = dollars(r["cost"]) if isinstance(r.get("cost"), (int, float)) else "-"
        table.add_row(
            r.get("date", "-"),
            escape(r["run_id"]),
            f"[{colour}]{escape(status)}[/]",
            escape(str(r.get("target", "-"))),
            str(r.get("steps", "-")),
            str(r.get("checkpoints", "-")),
            cost,
        )
    wide(200).print(table)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def show_run(m: RunManifest, path: Path) -> None:
    """A run at a glance (``runs show``)."""
    from kohyawrap.console.train import model_file_rows
    from kohyawrap.launcher.budget import dollars

    f = m.follow
    gpus = m.host.facts.get("gpus") or []
    gpu = (gpus[0].get("name") if gpus and isinstance(gpus[0], dict) else None) or "no GPU seen"
    steps = f"{f.last_step}/{f.total_steps}" if f.last_step is not None else "-"
    rows = [
        ("run", m.run_id),
        ("status", m.status.value + (f" ({why(m)})" if why(m) else "")),
        ("host", f"{m.host.target} ({m.host.label})" if m.host.label else m.host.target),
        ("gpu", f"{gpu}; preset {m.plan.spec.gpu}"),
        ("model", f"{m.plan.spec.model} via {m.plan.rendered.script}"),
        *model_file_rows(m.plan.model_files, m.files_how),
        ("steps", f"{steps} (planned {m.plan.estimate.steps})"),
        ("last loss", f"{f.last_loss:.4g}" if f.last_loss is not None else "-"),
        ("launched", _when(m.launched_at)),
        (
            "ended",
            _when(m.finished_at) + (f", exit {m.exit_code}" if m.exit_code is not None else ""),
        ),
    ]
    if m.cost is not None:
        rows.append(("cost", f"{dollars(m.cost.actual)} (estimated {dollars(m.cost.estimated)}, "
                             f"{dollars(m.cost.price_per_hour)}/h)"))  # fmt: skip
    if m.sd_scripts is not None:
        dirty = " (uncommitted changes)" if m.sd_scripts.git_dirty else ""
        rows.append(("sd-scripts", f"{m.sd_scripts.commit[:12]}{dirty} at {m.sd_scripts.path}"))
    for prov in m.provenance:
        rows.append(
            ("git", f"{prov.path} @ {prov.commit[:12]}" + (" (dirty)" if prov.dirty else ""))
        )
    if m.timings:
        rows.append(("timings", ", ".join(f"{k} {v:.0f}s" for k, v in m.timings.items())))
    if m.grid is not None:
        spent = f", {dollars(m.grid.dollars)}" if m.grid.dollars is not None else ""
        why_not = f" ({m.grid.reason})" if m.grid.reason else ""
        rows.append(("grid", f"{m.grid.status}: {m.grid.pulled} of {m.grid.images} images in "
                             f"{path / 'grid' / m.grid.grid_id}{spent}{why_not}"))  # fmt: skip
    if (path / "report" / "index.html").is_file():
        rows.append(("report", str(path / "report" / "index.html")))
    if m.failure is not None:
        rows.append(("failure", f"{m.failure.kind}: {m.failure.message}"))
        rows.append(("hint", m.failure.hint))
    elif m.error:
        rows.append(("note", m.error))
    rows += _speed_rows(m)
    for finding in m.follow.findings:
        rows.append(("finding", finding.message + (f"; {finding.hint}" if finding.hint else "")))
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, escape(value))
    con = wide(200)
    con.print(table)
    _show_legs(m)
    from kohyawrap.launcher.legs import pulled_everywhere

    # Grid images are summed up in the "grid" row: a grid is hundreds of files.
    files = sorted(
        (p for p in pulled_everywhere(m).values() if not p.path.startswith("grid/")),
        key=lambda p: p.path,
    )
    if files:
        con.print("[bold]files[/]")
        for info in files:
            con.print(
                f"  {escape(str(path / info.path))}  ({info.bytes:,} bytes, sha256 {info.sha256[:12]})"
            )
    for rel in m.missing():
        con.print(
            f"  [red]missing[/] {escape(rel)}: {escape(m.follow.rejected.get(rel, 'not pulled yet'))}"
        )


def _speed_rows(m: RunManifest) -> list[tuple[str, str]]:
    """Measured speed and GPU use beside the preset's estimate (to recalibrate presets)."""
    f = m.follow
    parts = []
    if f.sec_per_step:
        parts.append(f"{f.sec_per_step:.3g} s/step")
    if m.plan.estimate.seconds_per_step:
        parts.append(f"preset estimate {m.plan.estimate.seconds_per_step:.3g} s/step")
    if "gpu_utilization_pct" in f.measured:
        parts.append(f"GPU busy {f.measured['gpu_utilization_pct']:.0f} %")
    if "gpu_memory_peak_mib" in f.measured:
        parts.append(f"peak {f.measured['gpu_memory_peak_mib']:.0f} MiB")
    return [("speed", ", ".join(parts))] if parts else []


def _show_legs(m: RunManifest) -> None:
    """One line per leg when a run was resumed, extended or retried."""
    from kohyawrap.launcher.budget import dollars
    from kohyawrap.launcher.legs import leg_records

    if len(m.legs) < 2:
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("leg", "kind", "host", "steps", "status", "cost", "note"):
        table.add_column(column)
    for leg in leg_records(m, m.finished_at or m.started_at or 0.0):
        steps = f"{leg.step_offset + 1}-{leg.last_step}" if leg.last_step else "-"
        table.add_row(
            str(leg.number),
            leg.kind,
            escape(leg.target),
            steps,
            leg.status or "-",
            dollars(leg.dollars) if leg.dollars is not None else "-",
            escape(leg.note or leg.resumed_from),
        )
    wide(200).print(table)
