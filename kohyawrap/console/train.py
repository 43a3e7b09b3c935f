"""The train/attach view: stages, transfers, a progress bar with loss, ETA and dollars.

On a terminal it is a rich live display; in a pipe or a CI log it prints plain lines (one per
stage, per epoch, per pulled file, and a progress line at most every few seconds).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kohyawrap.models import (
    CheckpointSaved,
    EpochStart,
    Event,
    Failure,
    LogWarning,
    ModelSaved,
    Progress,
    TrainingStarted,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from kohyawrap.launcher.manifest import RunManifest
    from kohyawrap.launcher.runplan import RunPlan
    from kohyawrap.launcher.states import StateRef
    from kohyawrap.models_fetch import FetchFile


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class ConsoleReporter:
    """A Reporter (kohyawrap.launcher.report) that draws on stderr."""

    def __init__(self, *, plain: bool | None = None, progress_every: float = 5.0) -> None:
        from rich.console import Console

        self.con = Console(stderr=True, highlight=False)
        self.plain = (not self.con.is_terminal) if plain is None else plain
        if self.plain:
            # A log file or CI: long paths stay on one line.
            self.con = Console(stderr=True, highlight=False, soft_wrap=True)
        self.progress_every = progress_every
        self._last_progress = 0.0
        self._last_transfer: dict[str, float] = {}
        self._transfer_start: dict[str, float] = {}
        self._bar: Any = None
        self._task: Any = None

    # -- stages and lines ------------------------------------------------------------
    def stage(self, name: str, detail: str = "") -> None:
        self._stop_bar()
        self.con.print(f"[bold cyan]==>[/] [bold]{name}[/] {detail}", markup=True, highlight=False)

    def info(self, message: str) -> None:
        from rich.markup import escape

        self.con.print(f"    {escape(message)}")

    def transfer(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        started = self._transfer_start.setdefault(label, now)
        if done < total and now - self._last_transfer.get(label, 0.0) < 1.0:
            return
        self._last_transfer[label] = now
        pct = 100.0 * done / total if total else 100.0
        rate = done / (now - started) if now > started else 0.0
        speed = f", {_size(rate)}/s" if rate else ""
        self.info(f"{label}: {_size(done)} / {_size(total)} ({pct:.0f}%{speed})")
        if done >= total:
            self._transfer_start.pop(label, None)

    def pulled(self, name: str, size: int) -> None:
        self.info(f"pulled {name} ({_size(size)}, sha256 verified)")

    # -- training events -------------------------------------------------------------
    def event(self, event: Event, dollars_so_far: float, dollars_projected: float | None) -> None:
        if isinstance(event, Progress):
            self._progress(event, dollars_so_far, dollars_projected)
        elif isinstance(event, TrainingStarted):
            self.info(
                f"training: {event.num_images} images x repeats, {event.batches_per_epoch} batches/epoch, "
                f"{event.epochs} epochs, {event.total_steps} steps"
            )
        elif isinstance(event, EpochStart):
            self.info(f"epoch {event.epoch}/{event.total}")
        elif isinstance(event, CheckpointSaved):
            self.info(f"saving {event.path}")
        elif isinstance(event, ModelSaved):
            self.info("model saved")
        elif isinstance(event, LogWarning):
            self.con.print(f"    [yellow]warning:[/] {event.message}", markup=True, highlight=False)
        elif isinstance(event, Failure):
            self.con.print(
                f"    [red]{event.kind}:[/] {event.message}", markup=True, highlight=False
            )

    def _progress(self, p: Progress, spent: float, projected: float | None) -> None:
        from kohyawrap.launcher.budget import dollars

        money = dollars(spent) + (f" of ~{dollars(projected)}" if projected is not None else "")
        loss = f"{p.avr_loss:.4g}" if p.avr_loss is not None else "-"
        if self.plain:
            now = time.monotonic()
            if now - self._last_progress < self.progress_every and p.step != p.total:
                return
            self._last_progress = now
            self.info(f"step {p.step}/{p.total}  loss {loss}  eta {_eta(p.eta_s)}  {money}")
            return
        bar, task = self._ensure_bar(p.total)
        bar.update(task, completed=p.step, total=p.total, loss=loss, eta=_eta(p.eta_s), money=money)

    def _ensure_bar(self, total: int) -> tuple[Any, Any]:
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("    steps"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]}  eta {task.fields[eta]}  {task.fields[money]}"
                ),
                console=self.con,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("steps", total=total, loss="-", eta="?", money="")
        return self._bar, self._task

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def close(self) -> None:
        self._stop_bar()


def model_file_rows(
    files: Sequence[FetchFile], how: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """One row per model file: where it comes from, its size, and how it reaches the host (the
    plan), or how it did (``how``, a run's record)."""
    from kohyawrap.models_fetch import BASE_KEY

    rows = []
    for f in files:
        where = f"{f.source}/{f.filename}" if f.kind == "hf" and f.filename else f.source
        facts = [_size(f.size_gb * 1e9) if f.size_gb is not None else "size unknown"]
        if how and f.key in how:
            facts.append(how[f.key])
        elif f.kind == "upload":
            facts.append("used in place" if f.in_place else "uploaded from here")
        else:
            facts.append("downloaded by the host unless it has it")
        if f.gated:
            facts.append("gated: needs a Hugging Face token")
        rows.append(("base model" if f.key == BASE_KEY else f.key, f"{where} ({', '.join(facts)})"))
    return rows


def show_run_plan(plan: RunPlan) -> None:
    """A short summary of what `train` is about to do."""
    from rich.markup import escape
    from rich.table import Table

    from kohyawrap.console import stderr
    from kohyawrap.launcher.budget import dollars

    est = plan.estimate
    setup = plan.setup
    where = f"the checkout {setup.sd_scripts_path}" if setup.sd_scripts_path else setup.repo
    fit = "fits" if est.fits else "DOES NOT FIT"
    rows = [
        ("run", plan.run_id),
        ("host", f"{plan.target}  ({plan.layout.run_dir})"),
        ("model", f"{plan.spec.model} via {plan.rendered.script}"),
        *model_file_rows(plan.model_files),
        ("gpu preset", f"{plan.spec.gpu}  (VRAM need ~{est.vram_needed_gb:.1f} of "
                       f"{est.vram_available_gb:.0f} GB: {fit})"),
        ("steps", str(est.steps)),
        ("time", f"~{est.train_seconds / 60:.0f} min training + ~{est.setup_seconds / 60:.0f} min "
                 "set-up and transfers" + (f" + ~{est.grid_seconds / 60:.0f} min grid"
                                           if est.grid_seconds else "")),
        ("cost", f"~{dollars(est.dollars)} at {dollars(est.price_per_hour)}/h: "
                 f"~{dollars(est.price_per_hour * est.setup_seconds / 3600)} set-up and transfers, "
                 f"~{dollars(est.price_per_hour * est.train_seconds / 3600)} training"
                 + (f", ~{dollars(est.price_per_hour * est.grid_seconds / 3600)} grid"
                    if est.grid_seconds else "")),
        ("sd-scripts", f"{where} @ {setup.ref[:12]}"),
    ]  # fmt: skip
    at = next(i for i, (key, _) in enumerate(rows) if key == "gpu preset") + 1
    rows[at:at] = gpu_rows(plan)
    if plan.grid.enabled:
        grid_dollars = est.price_per_hour * est.grid_seconds / 3600
        rows.append(
            ("grid", f"{est.grid_images} images ({plan.grid.describe()}), ~{est.grid_seconds / 60:.0f} "
                     f"min, ~{dollars(grid_dollars)} (included above)")
        )  # fmt: skip
    else:
        rows.append(("grid", "off (--no-grid / a smoke run): `kohyawrap grid RUN` draws one later"))
    if plan.money.max_dollars is not None or plan.money.max_hours is not None:
        limits = [
            f"{dollars(plan.money.max_dollars)}" if plan.money.max_dollars is not None else "",
            f"{plan.money.max_hours:g} h from the launch" if plan.money.max_hours else "",
        ]
        rows.append(("limits", ", ".join(x for x in limits if x)))
    money = plan.money
    if money.on_finish not in ("", "none"):
        rows.append(
            (
                "on finish",
                f"{money.on_finish} once the run has ended and its checkpoints are safe (the "
                f"host does it by itself after {money.idle_minutes:g} idle minutes)",
            )
        )
    if money.push_to_hub:
        rows.append(
            ("hub", f"{money.push_to_hub} ({'private' if money.hub_private else 'public'})")
        )
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, escape(value))
    con = stderr()
    con.print(table)
    for note in plan.notes:
        con.print(f"[yellow]note:[/] {escape(note)}")


def show_leg_plan(plan: RunPlan, ref: StateRef) -> None:
    """What ``resume`` / ``extend`` is about to do: the state, the epochs, the host, the price."""
    from rich.markup import escape

    from kohyawrap.console import stderr
    from kohyawrap.launcher.budget import dollars

    settings = plan.rendered.settings
    start, epochs = settings.get("initial_epoch"), settings.get("max_train_epochs")
    span = f"epochs {start}-{epochs}" if epochs else f"from epoch {start}"
    stderr().print(
        escape(
            f"    continuing {plan.run_id} from {ref.label}: {span} on {plan.target} "
            f"({plan.layout.run_dir}), {dollars(plan.estimate.price_per_hour)}/h"
        )
    )


def fitting_settings(m: RunManifest) -> str:
    """The ``--set`` options an out-of-memory retry found to fit (empty when none was needed)."""
    from kohyawrap.ladder import as_sets
    from kohyawrap.launcher.states import RESUME_KEYS

    retries = [leg for leg in m.legs if leg.kind == "retry"]
    if not retries or m.status.value != "finished":
        return ""
    changed = retries[-1].changed
    return as_sets([(k, v) for k, v in changed.items() if k not in RESUME_KEYS and v is not None])


def gpu_rows(plan: RunPlan) -> list[tuple[str, str]]:
    """The plan's GPUs, and for a job across several what changes: steps per process, the
    effective batch, the learning rate (docs/scale.md)."""
    rows = []
    if plan.gpus.devices:
        devices = ", ".join(str(d) for d in plan.gpus.devices)
        rows.append(("gpus", f"{devices}  ({plan.gpus.basis})"))
    n = plan.spec.processes
    if n > 1:
        settings = plan.rendered.settings
        batch = int(settings.get("train_batch_size", 1))
        accumulation = int(settings.get("gradient_accumulation_steps", 1))
        lr = settings.get("learning_rate")
        how = (
            f"x{n} (--scale-lr)"
            if plan.spec.scale_lr
            else "unchanged (sd-scripts does not scale it)"
        )
        rows.append(
            (
                "multi-gpu",
                f"{n} processes, each on its share of every epoch's batches; effective batch "
                f"{batch * n * accumulation} (batch {batch} x {n} GPUs x accumulation "
                f"{accumulation}); learning rate {lr} {how}",
            )
        )
    return rows


def show_outcome(manifest: RunManifest, path: Path) -> None:
    """How a run ended (or stands), what it cost, and where its files are."""
    from rich.markup import escape

    from kohyawrap.console import stderr
    from kohyawrap.launcher.budget import dollars

    con = stderr()
    m = manifest
    colour = {"finished": "green", "stopped": "yellow"}.get(m.status.value, "red")
    why = f", {m.stop_reason.value}" if m.stop_reason else ""
    code = f" (exit {m.exit_code})" if m.exit_code is not None else ""
    cost = ""
    if m.cost is not None:
        cost = f", {dollars(m.cost.actual)} (estimated {dollars(m.cost.estimated)})"
    con.print(f"[{colour}]{m.status.value}[/]{escape(why + code + cost)}: {escape(m.run_id)}")
    if m.host_stop is not None:
        con.print(f"    the host stopped it: {escape(m.host_stop.message)}")
    if m.hub is not None:
        state = f"error: {m.hub.error}" if m.hub.error else f"{len(m.hub.files)} file(s) verified"
        con.print(f"    hub {escape(m.hub.repo)}: {escape(state)}")
    if m.finish is not None:
        result = f" ({m.finish.result})" if m.finish.result else ""
        con.print(f"    on finish ({escape(m.finish.by)}): {escape(m.finish.message + result)}")
    if m.leg_number > 1:
        con.print(f"    leg {m.leg_number} ({escape(m.legs[-1].note)}) on {escape(m.host.target)}")
    for info in sorted(m.pulled.values(), key=lambda f: f.path):
        if info.path.startswith("checkpoints/") and "-state/" not in info.path:
            con.print(f"    {escape(str(path / info.path))}")
    for finding in m.follow.findings:
        con.print(f"    [yellow]{escape(finding.message)}[/]")
    fits = fitting_settings(m)
    if fits:
        con.print(f"    settings that fit this GPU: {escape(fits)}")
    if m.grid is not None:
        grid = m.grid
        spent = f", {dollars(grid.dollars)}" if grid.dollars is not None else ""
        why = f" ({grid.reason})" if grid.reason else ""
        con.print(escape(f"grid {grid.status}: {grid.pulled} of {grid.images} images{spent}{why}"))
