"""GRID: draw the evaluation grid on the host, after the checkpoints are safe on the laptop.

The grid runs as a second detached job (``templates/remote/grid.sh.j2``) in ``<run>/grid/<id>/``:
one call of gen_img.py / sdxl_gen_img.py per chosen checkpoint. The laptop uploads the prompt
files, launches it, follows it (a dropped connection is reconnected, as for training), pulls each
call's images as soon as the call ends (sha256-verified, never twice), and records everything in
``manifest.grid``.

Nothing here can put the LoRA at risk or fail the run: the grid starts only for a finished run
(every checkpoint verified here), and inside ``train`` its failure is recorded and reported, then
the finish action runs as it would have. Its time counts against ``--max-dollars`` /
``--max-hours``: a grid that would not fit is skipped, and one that runs out of time is stopped
(by the host's own timer too, laptop or not).
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from kohyawrap.clock import Clock
from kohyawrap.errors import ConnectionLost, HostError, KohyawrapError, TrainingFailed, UsageError
from kohyawrap.evaluate.gridplan import (
    GEN_SCRIPTS,
    GridCall,
    build_grid,
    check_size,
    choose,
    estimate_seconds,
    generation_args,
)
from kohyawrap.evaluate.loss import judge
from kohyawrap.evaluate.options import GridOptions
from kohyawrap.evaluate.record import GridRecord
from kohyawrap.hosts.base import Host, sh
from kohyawrap.launcher import job
from kohyawrap.launcher.budget import Budget, dollars
from kohyawrap.launcher.fetch import Puller
from kohyawrap.launcher.layout import RemoteLayout
from kohyawrap.launcher.manifest import RunManifest, RunStatus
from kohyawrap.launcher.reconnect import Reconnector
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.results import (
    checkpoints_of,
    grid_prompts_of,
    loss_curve_of,
    prompt_defaults_of,
)
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.launcher.scripts import render_script
from kohyawrap.models_fetch import FetchFile, parse_choice

GRID = "grid"
LOG = "grid.log"
READ_LIMIT = 1 << 20


class GridSession(Protocol):
    """What the grid needs of a session (``stages.RunSession`` is one)."""

    run: RunDir
    manifest: RunManifest
    host: Host
    reporter: Reporter
    clock: Clock
    reconnector: Reconnector

    @property
    def options(self) -> Any: ...

    def update(self, **changes: object) -> RunManifest: ...


@dataclass(frozen=True)
class GridTarget:
    """Where on a host the grid is drawn, and with what."""

    run_dir: str  # the run folder there (its output/ holds the checkpoints)
    sd_scripts: str
    python: str
    model: str  # the base model's path there
    tokenizers: str | None
    hf_home: str


def training_target(m: RunManifest) -> GridTarget:
    """The host that trained the run, as its record describes it."""
    if m.sd_scripts is None or m.environment is None:
        raise HostError("the run's environment is not recorded (set-up never finished)")
    return GridTarget(
        run_dir=m.remote_run_dir,
        sd_scripts=m.sd_scripts.path,
        python=m.environment.python,
        model=m.plan.base_file.remote_path,
        tokenizers=m.plan.spec.tokenizer_cache_dir,
        hf_home=posixpath.join(m.plan.layout.models, "hf"),
    )


class _Quiet:
    """A reporter that keeps stage and info lines but not one line per pulled image."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def stage(self, name: str, detail: str = "") -> None:
        self.inner.stage(name, detail)

    def info(self, message: str) -> None:
        self.inner.info(message)

    def transfer(self, label: str, done: int, total: int) -> None:
        pass

    def event(self, event: Any, dollars_so_far: float, dollars_projected: float | None) -> None:
        pass

    def pulled(self, name: str, size: int) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Planning


def plan_record(
    run: RunDir,
    m: RunManifest,
    options: GridOptions,
    target: GridTarget,
    host_label: str,
    *,
    in_run: bool,
    rates: tuple[float, float],
    price: float,
) -> GridRecord:
    """The grid to draw for this run: checkpoints chosen (with the loss verdict's epoch swapped
    in), prompts, image names, and its time and dollar estimate at ``price`` $/h."""
    checkpoints = checkpoints_of(run, m)
    verdict = judge(loss_curve_of(run))
    prefer = [verdict.best_epoch] if verdict.best_epoch is not None else []
    chosen, missing = choose(checkpoints, options, prefer)
    grid_id = _next_id(run)
    prompts = grid_prompts_of(m.plan, options.prompts)
    defaults = prompt_defaults_of(m.plan)
    plan = build_grid(chosen, options, prompts, defaults)
    check_size(len(plan.cells))
    per_image, load = rates
    seconds = estimate_seconds(len(plan.cells), len(plan.calls), per_image, load)
    return GridRecord(
        grid_id=grid_id,
        status="planned",
        options=options,
        host=host_label,
        remote_dir=posixpath.join(target.run_dir, GRID, grid_id),
        run_dir=target.run_dir,
        checkpoints=chosen,
        prompts=prompts,
        defaults=defaults,
        missing_epochs=missing,
        images=len(plan.cells),
        estimate_seconds=round(seconds, 1),
        estimate_dollars=round(price * seconds / 3600, 4),
        in_run=in_run,
    )


def _next_id(run: RunDir) -> str:
    folder = run.path / GRID
    taken = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    number = 1
    while f"{number:02d}" in taken:
        number += 1
    (folder / f"{number:02d}").mkdir(parents=True, exist_ok=True)
    return f"{number:02d}"


def over_budget(record: GridRecord, budget: Budget, now: float) -> str | None:
    """Why the grid must not start (it would pass --max-dollars / --max-hours), or None."""
    spent = budget.spent(now)
    if budget.max_dollars is not None and spent + record.estimate_dollars > budget.max_dollars:
        left = max(0.0, budget.max_dollars - spent)
        return (
            f"the grid needs ~{dollars(record.estimate_dollars)}; {dollars(left)} of "
            f"--max-dollars {dollars(budget.max_dollars)} is left"
        )
    left_s = _seconds_left(budget, now)
    if left_s is not None and record.estimate_seconds > left_s:
        return (
            f"the grid needs ~{record.estimate_seconds / 60:.0f} min; "
            f"{max(0.0, left_s) / 60:.0f} min of --max-hours is left"
        )
    return None


def _seconds_left(budget: Budget, now: float) -> float | None:
    """Seconds until a limit is reached (the host's timer for the grid), or None."""
    found = []
    if budget.max_hours is not None:
        found.append(budget.launched_at + budget.max_hours * 3600 - now)
    if budget.max_dollars is not None and budget.price_per_hour > 0:
        found.append((budget.max_dollars - budget.spent(now)) * 3600 / budget.price_per_hour)
    return min(found) if found else None


# ---------------------------------------------------------------------------------------------
# On the host


def _call_args(call: GridCall, record: GridRecord, target: GridTarget, m: RunManifest) -> list[str]:
    lora = call.checkpoint
    return generation_args(
        training_script=m.plan.rendered.script,
        sd_scripts=target.sd_scripts,
        model=target.model,
        lora=posixpath.join(target.run_dir, lora.rel) if lora is not None else None,
        prompt_file=posixpath.join(record.remote_dir, "prompts", f"{call.key}.txt"),
        outdir=posixpath.join(record.remote_dir, "raw", call.key),
        settings=m.plan.rendered.settings,
        batch_size=record.options.batch_size,
        tokenizer_cache_dir=target.tokenizers,
    )


def upload(
    host: Host,
    run: RunDir,
    record: GridRecord,
    target: GridTarget,
    m: RunManifest,
    max_seconds: int,
) -> None:
    """The chosen checkpoints (only those the host lacks), prompt files, names and the wrapper."""
    plan = record.plan()
    assert plan is not None  # a planned record always has checkpoints and defaults
    host.upload_tree({c.rel: run.path / c.local for c in record.checkpoints}, target.run_dir)
    calls = []
    for call in plan.calls:
        key = call.key
        host.put_bytes(("\n".join(call.lines) + "\n").encode(),
                       posixpath.join(record.remote_dir, "prompts", f"{key}.txt"))  # fmt: skip
        host.put_bytes(("\n".join(call.names) + "\n").encode(),
                       posixpath.join(record.remote_dir, "names", f"{key}.txt"))  # fmt: skip
        calls.append({"key": key, "args": [target.python, *_call_args(call, record, target, m)]})
    wrapper = render_script(
        "grid",
        grid_dir=record.remote_dir,
        run_dir=target.run_dir,
        sds=target.sd_scripts,
        hf_home=target.hf_home,
        max_seconds=max_seconds,
        calls=calls,
    )
    host.put_bytes(wrapper.encode(), posixpath.join(record.remote_dir, "run.sh"), mode=0o755)


_STATUS = (
    "cd {dir} 2>/dev/null && for f in status/*; do "
    '[ -f "$f" ] && printf "%s=%s\\n" "${{f#status/}}" "$(cat "$f")"; done; true'
)


def call_status(host: Host, grid_dir: str) -> dict[str, int]:
    """checkpoint key -> exit code of every call that has ended."""
    out = host.run(_STATUS.format(dir=sh(grid_dir)), check=False, timeout=60).stdout
    found = {}
    for line in out.splitlines():
        key, _, code = line.partition("=")
        if code.strip().lstrip("-").isdigit():
            found[key] = int(code)
    return found


# ---------------------------------------------------------------------------------------------
# Following


class GridFollower:
    """Follows one launched grid: its log, its calls' ends, the budget; pulls images."""

    def __init__(self, s: GridSession, record: GridRecord, budget: Budget, puller: Puller) -> None:
        self.s = s
        self.record = record
        self.budget = budget
        self.puller = puller
        self.local = s.run.path / GRID / record.grid_id
        self.stop_reason = ""

    def save(self) -> None:
        self.s.update(grid=self.record, pulled=dict(self.puller.pulled))

    def _read_log(self) -> None:
        remote = posixpath.join(self.record.remote_dir, LOG)
        while True:
            chunk = self.s.host.read_from(remote, self.record.log_offset, READ_LIMIT)
            if not chunk:
                return
            self.local.mkdir(parents=True, exist_ok=True)
            with (self.local / LOG).open("ab") as out:
                out.write(chunk)
            self.record = self.record.with_changes(log_offset=self.record.log_offset + len(chunk))
            if len(chunk) < READ_LIMIT:
                return

    def _pull_calls(self, ended: dict[str, int]) -> None:
        plan = self.record.plan()
        assert plan is not None
        for call in plan.calls:
            key = call.key
            if key not in ended or key in self.record.done or key in self.record.failed:
                continue
            arrived = self._pull_images(call.names)
            if ended[key] == 0:
                self.record = self.record.with_changes(done=(*self.record.done, key))
            else:
                self.record = self.record.with_changes(
                    failed={**self.record.failed, key: ended[key]}
                )
            verb = "drawn" if ended[key] == 0 else f"failed (exit {ended[key]})"
            self.s.reporter.info(
                f"grid: {call.label} {verb}, {arrived} image(s) pulled and verified"
            )

    def _pull_images(self, names: Sequence[str]) -> int:
        rels = [posixpath.join(GRID, self.record.grid_id, "images", n) for n in names]
        wanted = [r for r in rels if r not in self.puller.pulled and r not in self.puller.rejected]
        remote = {posixpath.join(self.record.run_dir, r): r for r in wanted}
        digests = self.s.host.sha256(list(remote)) if remote else {}
        arrived = 0
        for path, digest in sorted(digests.items()):
            arrived += self.puller.pull(remote[path], self.local / "images", digest)
        pulled = sum(1 for r in rels if r in self.puller.pulled)
        self.record = self.record.with_changes(pulled=self.record.pulled + arrived)
        return pulled

    def _limits(self) -> None:
        if self.stop_reason:
            return
        over = self.budget.over(self.s.clock.now())
        if over is not None:
            self.stop_reason = f"stopped: {over[1]}"
            self.s.reporter.info(f"stopping the grid: {over[1]}")
            job.request_stop(self.s.host, self.record.remote_dir)

    def poll_once(self) -> job.JobExit | None:
        grid_dir = self.record.remote_dir
        ended = job.exit_status(self.s.host, grid_dir)
        self._read_log()
        self._pull_calls(call_status(self.s.host, grid_dir))
        if ended is not None:
            return ended
        self._limits()
        if not job.alive(self.s.host, grid_dir) and job.exit_status(self.s.host, grid_dir) is None:
            raise HostError("the grid's process is gone but left no exit code")
        return None

    def run(self) -> GridRecord:
        """Follow until the grid's job ends; the record says how it went."""
        while True:
            try:
                ended = self.poll_once()
            except ConnectionLost as lost:
                self.save()
                self.s.reconnector.recover(lost, "following the grid")
                continue
            self.save()
            if ended is not None:
                self.record = self._ended(ended)
                self.save()
                return self.record
            self.s.clock.sleep(self.s.options.poll_seconds)

    def _ended(self, ended: job.JobExit) -> GridRecord:
        r = self.record
        price = self.budget.price_per_hour
        spent = round(price * ended.seconds / 3600, 4) if ended.seconds is not None else None
        failed = ", ".join(f"{k} exit {c}" for k, c in sorted(r.failed.items()))
        if ended.deadline:
            status, reason = (
                "stopped",
                "stopped by the host's timer: the run's time or money ran out",
            )
        elif self.stop_reason or ended.stop_requested:
            status, reason = "stopped", self.stop_reason or "stopped on request"
        elif r.pulled >= r.images and ended.code == 0:
            status, reason = "done", ""
        elif r.pulled:
            status, reason = "partial", (f"calls failed: {failed}" if failed else "images missing")
        else:
            status, reason = "failed", f"calls failed: {failed}" if failed else f"exit {ended.code}"
        if status in ("partial", "failed"):
            reason += _log_hint(self.local / LOG)
        return r.with_changes(
            status=status, reason=reason, exit_code=ended.code, seconds=ended.seconds, dollars=spent
        )


def _log_hint(log: Any) -> str:
    """The last error line of the grid's log (an out-of-memory, a missing file)."""
    try:
        lines = log.read_bytes()[-20_000:].decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    errors = [ln.strip() for ln in lines if "Error" in ln or "error:" in ln]
    return f"; last error: {errors[-1][:300]}" if errors else ""


# ---------------------------------------------------------------------------------------------
# The whole of it


def draw(
    s: GridSession,
    budget: Budget,
    target: GridTarget,
    options: GridOptions,
    *,
    in_run: bool,
    rates: tuple[float, float],
) -> GridRecord:
    """Plan, upload, launch and follow a grid (or carry on following one that was launched)."""
    m = s.manifest
    puller = Puller(s.host, s.run, target.run_dir, _Quiet(s.reporter), dict(m.pulled),
                    dict(m.follow.rejected))  # fmt: skip
    record = m.grid
    if record is None or record.ended or record.run_dir != target.run_dir:
        record = plan_record(s.run, m, options, target, s.host.label, in_run=in_run, rates=rates,
                             price=budget.price_per_hour)  # fmt: skip
        if not record.checkpoints:
            return _skip(s, record, "the run has no checkpoint on the laptop to draw")
        reason = over_budget(record, budget, s.clock.now())
        if reason is not None:
            return _skip(s, record, reason)
        s.update(grid=record)
    if record.status == "planned":
        s.reporter.stage(
            "grid",
            f"{record.images} images: {len(record.checkpoints)} checkpoint(s) x "
            f"{len(options.strengths)} strengths x {options.seeds} seeds x "
            f"{len(record.prompts)} prompt(s), ~{record.estimate_seconds / 60:.0f} min, "
            f"~{dollars(record.estimate_dollars)}",
        )
        if record.missing_epochs:
            shown = ", ".join(str(e) for e in record.missing_epochs)
            s.reporter.info(f"grid: no checkpoint of epoch(s) {shown}; drawing the others")
        planned = record
        left = _seconds_left(budget, s.clock.now())
        max_seconds = max(1, math.floor(left)) if left is not None else 0
        s.reconnector.call(
            lambda: upload(s.host, s.run, planned, target, m, max_seconds), "uploading the grid"
        )
        s.reconnector.call(
            lambda: job.launch(s.host, planned.remote_dir, s.clock), "checking the grid's launch"
        )
        record = planned.with_changes(status="running", launched_at=s.clock.now())
        s.update(grid=record)
    else:
        s.reporter.stage("grid", f"following grid {record.grid_id} on {s.host.label}")
    final = GridFollower(s, record, budget, puller).run()
    cost = f", {dollars(final.dollars)}" if final.dollars is not None else ""
    took = f" in {final.seconds / 60:.1f} min" if final.seconds is not None else ""
    s.reporter.info(
        f"grid {final.status}: {final.pulled} of {final.images} images{took}{cost}"
        + (f" ({final.reason})" if final.reason else "")
    )
    return final


def _skip(s: GridSession, record: GridRecord, reason: str) -> GridRecord:
    skipped = record.with_changes(status="skipped", reason=reason)
    s.update(grid=skipped)
    s.reporter.info(f"no grid: {reason}")
    return skipped


def grid_stage(s: GridSession, budget: Budget) -> None:
    """GRID within ``train`` / ``attach``: draw the plan's grid; a failure is recorded and shown,
    never raised (the run's outcome and its finish action do not depend on it)."""
    m = s.manifest
    if not m.plan.grid.enabled:
        return
    if m.grid is not None and m.grid.ended and m.grid.in_run:
        return
    if m.status is not RunStatus.FINISHED:
        s.reporter.info(f"no grid: the run is {m.status.value}")
        return
    from kohyawrap.forecast import grid_rates

    try:
        rates = grid_rates(m.plan.spec, m.plan.rendered.settings)
        draw(s, budget, training_target(m), m.plan.grid, in_run=True, rates=rates)
    except KohyawrapError as err:
        current = s.manifest.grid
        if current is not None and current.in_run and not current.ended:
            s.update(grid=current.with_changes(status="failed", reason=err.message))
        s.reporter.info(
            f"the grid failed: {err.message} (the LoRA is safe; `kohyawrap grid "
            f"{s.run.run_id}` draws it again)"
        )


# ---------------------------------------------------------------------------------------------
# `kohyawrap grid RUN [--host H]`: a grid for a recorded run


@dataclass(frozen=True)
class GridRequest:
    """A grid asked for after the fact."""

    options: GridOptions | None = None  # None: the run's own grid options (or the defaults)
    target: str | None = None  # None: the host that trained the run
    work_dir: str = "~/kohyawrap"  # on another host
    price_per_hour: float | None = None  # None: the run's price
    max_dollars: float | None = None  # a limit for this grid alone
    hf_token: str | None = field(default=None, repr=False)  # a base model from a gated repo


def draw_for(s: GridSession, request: GridRequest, *, hf_token: str | None) -> GridRecord:
    """Prepare the host (idempotent set-up, base model, run folder), then draw; a grid that
    fails or is skipped is an error here (the person asked for it)."""
    from kohyawrap.forecast import grid_rates

    m = s.manifest
    if m.plan.rendered.script not in GEN_SCRIPTS:
        raise UsageError(f"the grid draws SD1.x/2.x and SDXL LoRAs, not {m.plan.rendered.script}'s")
    if not checkpoints_of(s.run, m):
        raise UsageError(
            f"run {s.run.run_id} has no verified checkpoint on this laptop",
            hint=f"`kohyawrap pull {s.run.run_id}` fetches them",
        )
    options = request.options or (m.plan.grid if m.plan.grid.enabled else GridOptions())
    target = prepare_host(s, request, hf_token)
    price = (
        request.price_per_hour
        if request.price_per_hour is not None
        else m.plan.estimate.price_per_hour
    )
    now = s.clock.now()
    budget = Budget(price, started_at=now, launched_at=now, max_dollars=request.max_dollars)
    rates = grid_rates(m.plan.spec, m.plan.rendered.settings)
    record = draw(s, budget, target, options, in_run=False, rates=rates)
    if record.status in ("failed", "skipped"):
        raise TrainingFailed(
            f"the grid {record.status}: {record.reason}",
            hint=f"its log is in {s.run.path / GRID / record.grid_id / LOG}"
            if record.status == "failed"
            else None,
        )
    return record


def prepare_host(s: GridSession, request: GridRequest, hf_token: str | None) -> GridTarget:
    """sd-scripts and its environment, the model files and the run folder on the grid's host."""
    from kohyawrap.launcher import setup
    from kohyawrap.launcher.request import expand_work_dir

    m = s.manifest
    plan = m.plan
    commit = m.sd_scripts.commit if m.sd_scripts and m.sd_scripts.commit else plan.setup.ref
    if request.target not in (None, m.host.target):
        layout = RemoteLayout(expand_work_dir(request.work_dir, s.host.home()), m.run_id)
        files = tuple(
            moved_file(f, plan.layout.models, layout.models, local=request.target == "local")
            for f in plan.model_files
        )
        plan = replace(
            plan,
            target=request.target or plan.target,
            layout=layout,
            model_files=files,
            setup=replace(plan.setup, sd_scripts_path="", ref=commit),
            spec=replace(plan.spec, tokenizer_cache_dir=layout.tokenizers),
        )
    else:
        plan = replace(plan, setup=replace(plan.setup, ref=commit))
    env = s.reconnector.call(
        lambda: setup.prepare_environment(s.host, plan, s.reporter), "setting up again"
    )
    if any(not f.in_place and s.host.stat(f.remote_path) is None for f in plan.model_files):
        s.reconnector.call(
            lambda: setup.ensure_files(s.host, plan, s.reporter, hf_token),
            "fetching the model files again",
        )
    s.host.run(f"mkdir -p {sh(posixpath.join(plan.layout.run_dir, 'output'))}")
    return GridTarget(
        run_dir=plan.layout.run_dir,
        sd_scripts=env.sd_scripts,
        python=env.python,
        model=plan.base_file.remote_path,
        tokenizers=plan.spec.tokenizer_cache_dir,
        hf_home=posixpath.join(plan.layout.models, "hf"),
    )


def moved_file(found: FetchFile, old_models: str, new_models: str, *, local: bool) -> FetchFile:
    """A model file of the run, placed in another host's model cache.

    A download keeps its place inside the cache; a local file must still be on this laptop
    (it is uploaded again, or used where it is when the grid's host is this machine).
    """
    if found.kind == "upload" or found.in_place:
        if not Path(found.source).is_file():
            raise UsageError(
                f"the model file {found.source} is not on this laptop any more",
                hint="the grid's host needs it: put it back, or draw on the training host",
            )
        if local:
            return replace(found, remote_path=found.source, local_sha256="", in_place=True)
        if found.in_place:
            return parse_choice(found.key, found.source, new_models)
    rel = posixpath.relpath(found.remote_path, old_models)
    if rel.startswith(".."):
        return found  # outside the cache (an absolute path the user gave): the same path
    return replace(found, remote_path=posixpath.join(new_models, rel), in_place=False)
