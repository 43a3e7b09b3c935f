"""``kohyawrap report RUN``: one page per run that answers "which file do I use?".

``runs/<id>/report/index.html`` opens from disk with no server and no network: the verdict and the
checkpoint to try first at the top, the loss plot, the in-training samples per epoch, the grid as
contact sheets (rows: epochs, columns: strengths; also PNG files), the effect check, cost and time
per stage (estimated and actual), the run's facts and how to reproduce it. Every image it shows
is linked (hard-linked when possible) into the report folder, so the folder can be copied alone.
The folder is rebuilt whole on each call and swapped into place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kohyawrap import __version__
from kohyawrap.errors import KohyawrapError
from kohyawrap.evaluate.effect import (
    BARELY,
    EffectCheck,
    EffectRow,
    Pair,
    compared_strength,
    distance,
    judge_effect,
)
from kohyawrap.evaluate.gridplan import Checkpoint, GridPlan, cell_name
from kohyawrap.evaluate.loss import LossCurve, LossVerdict, judge, suggest
from kohyawrap.evaluate.sheets import contact_sheets, layout
from kohyawrap.launcher.budget import dollars
from kohyawrap.launcher.manifest import RunManifest, StopReason
from kohyawrap.launcher.results import (
    captions_with_trigger,
    checkpoints_of,
    concepts_of,
    loss_curve_of,
    samples_of,
)
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.models_fetch import FetchFile

REPORT = "report"
CELL_WIDTH = 160  # pixels of one grid image on the page


@dataclass(frozen=True)
class ReportResult:
    """What the report says at the top, and where it is."""

    path: Path
    headline: str
    suggestion: Checkpoint | None
    reason: str
    loss: LossVerdict
    effect: EffectCheck | None
    images: int  # images the page shows

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "headline": self.headline,
            "try_first": self.suggestion.local if self.suggestion else None,
            "try_first_label": self.suggestion.label if self.suggestion else None,
            "reason": self.reason,
            "loss": {"kind": self.loss.kind, "title": self.loss.title, "detail": self.loss.detail},
            "effect": self.effect.to_json() if self.effect else None,
            "images": self.images,
        }


def verdict_of(run: RunDir, m: RunManifest) -> tuple[LossCurve, LossVerdict]:
    """The loss verdict from the pulled TensorBoard files (a NaN stop counts even unlogged)."""
    curve = loss_curve_of(run)
    verdict = judge(curve)
    nan_stop = m.stop_reason is StopReason.NAN or (m.failure and m.failure.kind == "nan")
    if nan_stop and verdict.kind != "nan":
        verdict = LossVerdict(
            "nan", "the loss became NaN", "the run was stopped for it", ("lower the learning rate",)
        )
    return curve, verdict


# ---------------------------------------------------------------------------------------------
# The effect check


def effect_of(
    plan: GridPlan, images: Path, *, trigger: str, captions: tuple[int, int] | None
) -> EffectCheck:
    """Strength 0 against strength 1 (or the highest) per checkpoint, prompt and seed."""
    from kohyawrap.evaluate.drawing import Unreadable, thumbnail

    strength = compared_strength(plan.strengths)
    rows: list[EffectRow] = []
    cache: dict[str, bytes | None] = {}

    def thumb(name: str) -> bytes | None:
        if name not in cache:
            try:
                cache[name] = thumbnail(images / name)
            except (Unreadable, FileNotFoundError):
                cache[name] = None
        return cache[name]

    for checkpoint in plan.checkpoints if strength is not None else ():
        pairs = []
        for p in range(len(plan.prompts)):
            for seed in plan.seeds:
                base = thumb(cell_name("", 0.0, seed, p))
                lora = thumb(cell_name(checkpoint.key, strength or 0.0, seed, p))
                if base is not None and lora is not None:
                    pairs.append(Pair(p, seed, distance(base, lora)))
        rows.append(EffectRow(checkpoint.key, checkpoint.label, tuple(pairs)))
    return judge_effect(rows, strength, trigger=trigger, captions_with_trigger=captions)


# ---------------------------------------------------------------------------------------------
# Assets


def _link(source: Path, target: Path) -> None:
    """``target`` holds ``source``'s bytes: a hard link where the file system allows it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _grid_section(
    run: RunDir, m: RunManifest, folder: Path
) -> tuple[dict[str, Any] | None, GridPlan | None, Path | None, int]:
    """The grid's part of the page (contact sheets as tables and PNG files)."""
    from kohyawrap.evaluate.drawing import draw_sheet, image_size

    record = m.grid
    plan = record.plan() if record is not None else None
    if record is None or plan is None or record.pulled == 0:
        return None, None, None, 0
    images = run.path / "grid" / record.grid_id / "images"
    available = {p.name for p in images.glob("*.png")} if images.is_dir() else set()
    shown = 0
    for name in sorted(available):
        _link(images / name, folder / "grid" / name)
        shown += 1
    size = next((image_size(images / n) for n in sorted(available)), None) or (1, 1)
    prompts = []
    for p, prompt in enumerate(plan.prompts):
        sheets = []
        for sheet in contact_sheets(plan, available):
            if sheet.prompt != p:
                continue
            draw_sheet(sheet, layout(sheet, size), images, folder / "sheets" / sheet.name)
            rows = [
                {"label": label, "cells": [f"grid/{n}" if n else None for n in sheet.images[r]]}
                for r, label in enumerate(sheet.rows)
            ]
            sheets.append({"title": sheet.title, "png": f"sheets/{sheet.name}",
                           "columns": sheet.columns, "rows": rows})  # fmt: skip
        prompts.append({"number": p + 1, "text": prompt, "sheets": sheets})
    summary = (
        f"{record.pulled} of {record.images} images, grid {record.status}, drawn on "
        f"{record.host or 'the host'}"
    )
    section = {"summary": summary, "reason": record.reason, "prompts": prompts}
    return section, plan, images, shown


def _samples_section(run: RunDir, folder: Path) -> tuple[list[dict[str, Any]], int]:
    groups: dict[str, list[dict[str, str]]] = {}
    count = 0
    for sample in samples_of(run):
        label = f"epoch {sample.epoch}" if sample.epoch is not None else f"step {sample.step}"
        _link(sample.path, folder / "samples" / sample.path.name)
        seed = f", seed {sample.seed}" if sample.seed is not None else ""
        groups.setdefault(label, []).append(
            {"src": f"samples/{sample.path.name}", "caption": f"prompt {sample.index + 1}{seed}"}
        )
        count += 1
    return [{"label": k, "images": v} for k, v in groups.items()], count


# ---------------------------------------------------------------------------------------------
# Tables


def _costs(m: RunManifest) -> list[dict[str, str]]:
    est, t = m.plan.estimate, m.timings
    setup = sum(t.get(k, 0.0) for k in ("connect", "plan", "setup", "model", "upload", "pull"))
    from kohyawrap.evaluate.page import duration

    rows = [
        {"stage": "set-up and transfers", "estimated": duration(est.setup_seconds),
         "actual": duration(setup) if setup else "-"},
        {"stage": "training", "estimated": duration(est.train_seconds),
         "actual": duration(t["train"]) if "train" in t else "-"},
    ]  # fmt: skip
    grid = m.grid
    if est.grid_seconds or grid is not None:
        estimated = grid.estimate_seconds if grid is not None else est.grid_seconds
        actual = duration(grid.seconds) if grid is not None and grid.seconds is not None else "-"
        rows.append({"stage": "grid", "estimated": duration(estimated), "actual": actual})
    grid_spent = grid.dollars if grid is not None and grid.dollars is not None else 0.0
    spent = (m.cost.actual if m.cost else 0.0) + grid_spent
    rows.append(
        {
            "stage": f"dollars at {dollars(est.price_per_hour)}/h",
            "estimated": dollars(est.dollars),
            "actual": dollars(spent) if m.cost or grid_spent else "-",
        }
    )
    return rows


def _source(found: FetchFile) -> str:
    """Where the base model came from, as the user would name it."""
    if found.kind == "hf" and found.filename:
        return f"{found.source}/{found.filename}"
    return found.source


def _facts(m: RunManifest) -> list[tuple[str, str]]:
    plan, host = m.plan, m.host
    gpus = host.facts.get("gpus") or []
    facts = [
        ("LoRA name", plan.output_name),
        ("status", m.status.value + (f" ({m.stop_reason.value})" if m.stop_reason else "")),
        ("model", f"{plan.spec.model} via {plan.rendered.script}"),
        ("base model", _source(plan.base_file)),
        ("host", f"{host.label or host.target}"),
        ("GPU", ", ".join(str(g.get("name")) for g in gpus) or plan.spec.gpu),
        ("driver / CUDA", f"{host.facts.get('driver_version') or '-'} / {host.facts.get('cuda_version') or '-'}"),
        ("sd-scripts", f"{m.sd_scripts.repo} @ {m.sd_scripts.commit}" if m.sd_scripts
         else f"{plan.setup.repo} @ {plan.setup.ref}"),
        ("torch", m.environment.torch if m.environment else "-"),
        ("dataset", f"{plan.dataset_root} ({len(plan.dataset_files)} files, sha256 {plan.dataset_sha256})"),
        ("steps", str(m.follow.total_steps or plan.estimate.steps)),
        ("inputs hash", plan.rendered.inputs_hash),
    ]  # fmt: skip
    return facts


def _reproduce(m: RunManifest) -> list[str]:
    run_id = m.run_id
    return [
        f"kohyawrap reproduce {run_id} -o ./configs        # the same configs, byte for byte",
        f"kohyawrap reproduce {run_id} --run {m.host.target} --yes   # train it again",
        f"kohyawrap grid {run_id} --host HOST              # draw the grid again (elsewhere)",
        f"kohyawrap loss {run_id}                          # the loss in the terminal",
        f"kohyawrap export {run_id} --to DIR               # copy a LoRA into a WebUI folder",
    ]


# ---------------------------------------------------------------------------------------------
# The page


def _headline(verdict: LossVerdict, effect: EffectCheck | None) -> tuple[str, str, Sequence[str]]:
    if effect is not None and effect.finding:
        return "bad", effect.finding, effect.remedies
    kind = "good" if verdict.good else "bad" if verdict.kind in ("nan", "no_data") else "warn"
    return kind, f"Loss: {verdict.title}", verdict.remedies


def write_report(run: RunDir, now: datetime | None = None) -> ReportResult:
    """Build ``runs/<id>/report/`` from what the run left on the laptop; returns its summary."""
    from kohyawrap.evaluate.drawing import draw_loss_plot
    from kohyawrap.evaluate.page import render_page
    from kohyawrap.fileio import atomic_write

    m = run.load()
    building = run.path / f".{REPORT}.new"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    curve, verdict = verdict_of(run, m)
    checkpoints = checkpoints_of(run, m)
    suggested = suggest(verdict, checkpoints)
    per_epoch = curve.steps_per_epoch or 0
    marks = [(int(c.epoch * per_epoch), f"e{c.epoch}") for c in checkpoints
             if c.epoch is not None and per_epoch]  # fmt: skip
    plotted = draw_loss_plot(curve, building / "loss.png", marks=marks)
    grid, plan, images, grid_count = _grid_section(run, m, building)
    concepts = concepts_of(m.plan)
    trigger = concepts[0].trigger if concepts else ""
    effect = None
    if plan is not None and images is not None:
        effect = effect_of(plan, images, trigger=trigger,
                           captions=captions_with_trigger(m.plan, trigger))  # fmt: skip
    samples, sample_count = _samples_section(run, building)
    kind, headline, remedies = _headline(verdict, effect)
    findings = [f"Effect check: {effect.note}"] if effect is not None and effect.note else []
    if m.grid is not None and m.grid.status not in ("done",):
        findings.append(f"Grid {m.grid.status}: {m.grid.reason or 'see below'}")
    context = {
        "kohyawrap_version": __version__,
        "name": m.plan.output_name,
        "run_id": m.run_id,
        "status": m.status.value,
        "generated": (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        "headline": {"kind": kind, "text": headline},
        "headline_remedies": list(remedies),
        "findings": findings,
        "suggestion": _suggestion(suggested),
        "loss": {
            "title": verdict.title,
            "detail": verdict.detail,
            "remedies": list(verdict.remedies),
            "plot": "loss.png" if plotted else None,
        },
        "samples": samples,
        "grid": grid,
        "no_grid": _no_grid(m),
        "effect": _effect_context(effect, plan),
        "cell_width": CELL_WIDTH,
        "costs": _costs(m),
        "facts": _facts(m),
        "settings": sorted((k, str(v)) for k, v in m.plan.rendered.settings.items()),
        "reproduce": _reproduce(m),
    }
    atomic_write(building / "index.html", render_page(context))
    final = run.path / REPORT
    old = run.path / f".{REPORT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    building.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return ReportResult(
        final / "index.html",
        headline,
        suggested[0] if suggested else None,
        suggested[1] if suggested else "",
        verdict,
        effect,
        grid_count + sample_count + int(plotted),
    )


def _no_grid(m: RunManifest) -> str:
    again = f"`kohyawrap grid {m.run_id}` draws one."
    if m.grid is None:
        return f"No grid was drawn for this run: {again}"
    return (
        f"The grid {m.grid.status}" + (f": {m.grid.reason}" if m.grid.reason else "") + f". {again}"
    )


def _suggestion(suggested: tuple[Checkpoint, str] | None) -> dict[str, Any] | None:
    if suggested is None:
        return None
    checkpoint, reason = suggested
    return {
        "file": Path(checkpoint.local).name,
        "label": checkpoint.label,
        "reason": reason[:1].upper() + reason[1:] + ".",
        "epoch": checkpoint.epoch if checkpoint.kind != "step" else None,
    }


def _effect_context(effect: EffectCheck | None, plan: GridPlan | None) -> dict[str, Any] | None:
    if effect is None or plan is None:
        return None
    columns = [f"p{p + 1} s{seed}" for p in range(len(plan.prompts)) for seed in plan.seeds]
    rows = []
    for row in effect.rows:
        by_key = {(pair.prompt, pair.seed): pair.distance for pair in row.pairs}
        values = [
            f"{by_key[(p, seed)]:.1%}" if (p, seed) in by_key else "-"
            for p in range(len(plan.prompts))
            for seed in plan.seeds
        ]
        rows.append({"label": row.label, "mean": row.mean, "distances": values})
    return {
        "strength": f"{effect.strength:g}" if effect.strength is not None else "-",
        "threshold": BARELY,
        "finding": effect.finding,
        "remedies": list(effect.remedies),
        "note": effect.note,
        "columns": columns,
        "rows": rows,
    }


def try_write_report(run: RunDir) -> tuple[ReportResult | None, str]:
    """The report, or why it could not be written (a report never decides a run's outcome)."""
    try:
        return write_report(run), ""
    except KohyawrapError as err:
        return None, err.message
    except OSError as err:
        return None, f"{err.filename or ''}: {err.strerror}"
