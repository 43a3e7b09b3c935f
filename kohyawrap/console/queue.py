"""The queue's views: its plan (every job, where it goes, the queue's time and dollars against
separate sessions), ``queue status`` (every job's state, steps, loss and dollars) and its end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from kohyawrap.console import stderr, wide
from kohyawrap.launcher.budget import dollars

if TYPE_CHECKING:
    from kohyawrap.launcher.queueplanning import QueuePlan
    from kohyawrap.launcher.queuerecord import QueueStore
    from kohyawrap.launcher.queuestatus import QueueStatus


def duration(seconds: float) -> str:
    """``1 h 05 min`` / ``12 min``."""
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def show_queue_plan(plan: QueuePlan) -> None:
    """Every job with its numbers and expected place; the totals and the saving."""
    from kohyawrap.launcher.queueplan import slot_label

    con = stderr()
    est = plan.estimate
    con.print(f"[bold]queue[/] {escape(plan.queue_id)}  ({escape(str(plan.source))})")
    for host in plan.hosts:
        slots = ", ".join(slot_label(s) for s in host.slots)
        con.print(f"  host {escape(host.target)}: {len(host.slots)} slot(s) ({escape(slots)}), "
                  f"{dollars(host.price_per_hour)}/h")  # fmt: skip
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("#", "job", "model", "gpu", "steps", "training", "grid", "expected on"):
        table.add_column(column, justify="right" if column in ("#", "steps") else "left")
    for i, p in enumerate(plan.plans):
        e = p.estimate
        table.add_row(
            str(i + 1), escape(p.output_name), escape(p.spec.model), escape(p.spec.gpu),
            str(e.steps), duration(e.train_seconds),
            duration(e.grid_seconds) if p.grid.enabled else "off", escape(plan.where(i)),
        )  # fmt: skip
    con.print(table)
    money = f"~{dollars(abs(est.saving_dollars))}"
    con.print(
        f"[bold]queue[/]: ~{duration(est.seconds)}, ~{dollars(est.dollars)}   "
        f"[bold]separate sessions[/]: ~{duration(est.separate_seconds)}, "
        f"~{dollars(est.separate_dollars)}   [bold]saving[/]: ~{duration(est.saving_seconds)}, "
        f"{money if est.saving_dollars >= 0 else 'no dollars'} "
        "(set-up and model downloads paid once per host)"
    )
    if est.saving_dollars < 0:
        # A host is paid for all its GPUs until its last job ends: faster is not always cheaper.
        con.print(f"  [yellow]the queue costs {money} more than separate sessions[/]: GPUs idle "
                  "while the last jobs run (--gpus N uses fewer)")  # fmt: skip
    if len(plan.plans) > 1 and (len(plan.hosts) > 1 or any(len(h.slots) > 1 for h in plan.hosts)):
        con.print("  the runner starts each job on the slot that frees up first; "
                  "'expected on' follows the estimates")  # fmt: skip
    finish = plan.options.on_finish
    if finish not in ("", "none"):
        con.print(
            f"  on finish: {escape(finish)} each host once its jobs have ended and their "
            f"checkpoints are safe (the host does it by itself after "
            f"{plan.options.idle_minutes:g} idle minutes, laptop or not)"
        )
    for note in plan.plans[0].notes if plan.plans else ():
        con.print(f"[yellow]note:[/] {escape(note)}")


def status_rows(status: QueueStatus) -> list[dict[str, Any]]:
    """``queue status --json``: one row per job."""
    return [
        {
            "name": j.name,
            "run_id": j.run_id,
            "state": j.state,
            "where": j.where,
            "step": j.step,
            "total": j.total,
            "loss": j.loss,
            "dollars": j.dollars,
            "note": j.note,
        }
        for j in status.jobs
    ]


_COLOURS = {"finished": "green", "running": "cyan", "queued": "blue", "uploaded": "blue",
            "planned": "blue", "stopped": "yellow"}  # fmt: skip


def show_queue_status(status: QueueStatus) -> None:
    record = status.record
    con = wide(140)
    con.print(f"[bold]queue[/] {escape(record.queue_id)}  ({escape(record.source)})")
    for i, host in enumerate(record.hosts):
        live = "live" if status.live[i] else "from the records"
        finish = f", finish: {escape(host.finish.message)}" if host.finish else ""
        con.print(f"  host {escape(host.target)}: {host.state} ({live}), "
                  f"~{dollars(status.host_dollars[i])} so far{finish}")  # fmt: skip
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("job", "state", "where", "steps", "loss", "dollars", "note"):
        table.add_column(
            column, justify="right" if column in ("steps", "loss", "dollars") else "left"
        )
    for j in status.jobs:
        steps = f"{j.step or 0}/{j.total}" if j.total else (str(j.step) if j.step else "-")
        colour = _COLOURS.get(j.state, "red")
        table.add_row(
            escape(j.name), f"[{colour}]{escape(j.state)}[/]", escape(j.where), steps,
            f"{j.loss:.4g}" if j.loss is not None else "-",
            dollars(j.dollars) if j.dollars is not None else "-", escape(j.note),
        )  # fmt: skip
    con.print(table)


def show_queue_outcome(store: QueueStore, queue_id: str) -> None:
    """The end of ``queue run`` / ``attach``: each job's status and folder, each host's finish."""
    con = stderr()
    record = store.load(queue_id)
    con.print(f"[bold]queue[/] {escape(record.queue_id)}")
    for job in record.jobs:
        run = store.run(job)
        state = run.load().status.value
        colour = _COLOURS.get(state, "red")
        con.print(f"  {escape(job.name)}: [{colour}]{escape(state)}[/]  {escape(str(run.path))}")
    for host in record.hosts:
        if host.finish is not None:
            con.print(f"  on finish ({escape(host.target)}): {escape(host.finish.message)} "
                      f"[{escape(host.finish.result or '-')}]")  # fmt: skip
