"""The launcher as a library: what ``train``, ``attach``, ``stop``, ``pull`` and ``reproduce --run``
do, each a short story over the stages, with the clock, the reporter and the questions to the
user passed in. The CLI builds the inputs, calls one of these, and presents the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kohyawrap.clock import Clock, SystemClock, Timings
from kohyawrap.errors import (
    BudgetExceeded,
    ConnectionLost,
    HostError,
    IncompleteRun,
    KohyawrapError,
    TrainingFailed,
    UsageError,
)
from kohyawrap.hosts.base import Host
from kohyawrap.hosts.connect import ConnectOptions, open_host
from kohyawrap.launcher import job
from kohyawrap.launcher.manifest import (
    HostRecord,
    Provenance,
    RunManifest,
    RunStatus,
    SdScriptsRecord,
    StopReason,
)
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.request import TrainRequest, build_run_plan, check_request, looks_local
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.launcher.runstore import RunDir, RunStore
from kohyawrap.launcher.stages import (
    AFTER_STOP,
    ATTACH,
    FULL,
    PULL_ONLY,
    FollowOptions,
    RunSession,
    Stage,
    run_stages,
)

_TAIL_BYTES = 64_000


@dataclass(frozen=True)
class Questions:
    """What the launcher may ask the person (the CLI answers from --yes or a terminal)."""

    start: Callable[[RunPlan], bool] = lambda plan: True
    shutdown_this_machine: Callable[[str], bool] = lambda target: False


@dataclass(frozen=True)
class TrainResult:
    """A planned (dry run), declined or executed run."""

    plan: RunPlan
    manifest: RunManifest | None = None
    run: RunDir | None = None
    declined: bool = False


@dataclass
class Launcher:
    """Where runs are recorded and how time passes; shared by every verb."""

    store: RunStore
    reporter: Reporter
    clock: Clock = field(default_factory=SystemClock)
    options: FollowOptions = field(default_factory=FollowOptions)
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)

    # -- train -----------------------------------------------------------------------------------
    def train(
        self,
        request: TrainRequest,
        target: str,
        connect: ConnectOptions,
        *,
        questions: Questions = Questions(),
        hf_token: str | None = None,
        dry_run: bool = False,
        on_plan: Callable[[RunPlan], None] = lambda plan: None,
    ) -> TrainResult:
        """connect -> facts -> plan -> preflight -> confirm -> execute every stage."""
        request = check_request(request)
        _check_finish_action(request, target, questions)
        if dry_run and request.spec.gpu != "auto" and not request.gpus.needs_host:
            # Nothing to ask the host: its home is shown as ~.
            plan = build_run_plan(request, target=target, home="~", now=self.now())
            on_plan(plan)
            return TrainResult(plan)
        timings = Timings(self.clock)
        started_at = self.clock.now()
        self.reporter.stage("connect", target)
        with _opened(target, connect) as host:
            from kohyawrap.hosts.facts import read_facts
            from kohyawrap.launcher.setup import preflight

            facts = read_facts(host, request.work_dir)
            timings.lap("connect")
            plan = build_run_plan(
                request, target=target, home=host.home(), now=self.now(), facts=facts
            )
            timings.lap("plan")
            on_plan(plan)
            preflight(host, plan, facts, self.reporter, force=request.force)
            if dry_run:
                return TrainResult(plan)
            if not questions.start(plan):
                return TrainResult(plan, declined=True)
            timings.restart()
            run = self.store.create(plan.run_id)
            manifest = RunManifest(
                run_id=plan.run_id,
                plan=plan,
                host=HostRecord(target, host.label, connect.recorded().to_json(), facts.to_json()),
                started_at=started_at,
                timings=dict(timings.phases),
                sd_scripts=_local_sd_scripts(plan),
                provenance=_provenance(request, plan),
            )
            run.save(manifest)
            for name, text in sorted(plan.rendered.files.items()):
                run.write_text(f"config/{name}", text)
            with run.follow_lock():
                session = RunSession(
                    run, manifest, host, self.reporter, self.clock, self.options,
                    timings=timings, hf_token=hf_token,
                )  # fmt: skip
                final = self._run(session, FULL)
        raise_for_outcome(final, run)
        return TrainResult(plan, final, run)

    # -- verbs on a recorded run -----------------------------------------------------------------
    def attach(self, run: RunDir, connect: ConnectOptions) -> RunManifest:
        """Follow a launched run to its end, from the log already seen; pull; finish."""
        manifest = run.load()
        if not manifest.status.active:
            return manifest
        with run.follow_lock(), self._session(run, manifest, connect) as session:
            final = self._run(session, ATTACH)
        raise_for_outcome(final, run)
        return final

    def stop(self, run: RunDir, connect: ConnectOptions) -> RunManifest:
        """Stop a launched run cleanly (SIGTERM to the trainer), then pull what it saved.

        A run that has already ended is left exactly as it was recorded.
        """
        manifest = run.load()
        if not manifest.status.active:
            return manifest
        with run.follow_lock(), self._session(run, manifest, connect) as session:
            if manifest.exit_code is None:
                ended = session.reconnector.call(
                    lambda: job.stop(session.host, manifest.remote_run_dir, self.clock),
                    "stopping the training",
                )
                if ended is None:
                    raise HostError(
                        "asked the training to stop, but it has not ended after 2 minutes",
                        hint=f"it may still be saving; `kohyawrap stop {run.run_id}` again, or "
                        f"`kohyawrap attach {run.run_id}` to watch it",
                    )
                self.reporter.info(f"the training stopped (exit code {ended.code})")
                session.update(stop_reason=StopReason.MANUAL)
            try:
                return run_stages(session, AFTER_STOP)
            except HostError as err:
                raise HostError(
                    f"the training was stopped, but its files could not be pulled: {err.message}",
                    evidence=err.evidence,
                    hint=f"`kohyawrap pull {run.run_id}` fetches them once the host answers",
                ) from err

    def pull(self, run: RunDir, connect: ConnectOptions) -> RunManifest:
        """Fetch every file of a run that is not on the laptop yet (verified, never overwriting).

        An incomplete run that becomes complete is finished: its --on-finish action runs then.
        """
        manifest = run.load()
        stages: Sequence[Stage] = PULL_ONLY
        if manifest.status is RunStatus.INCOMPLETE:
            stages = (Stage.PULL, Stage.FINISH)
        with run.follow_lock(), self._session(run, manifest, connect) as session:
            return run_stages(session, stages)

    # -- plumbing --------------------------------------------------------------------------------
    @contextmanager
    def _session(
        self, run: RunDir, manifest: RunManifest, given: ConnectOptions
    ) -> Iterator[RunSession]:
        recorded = ConnectOptions.from_json(manifest.host.connect)
        with _opened(manifest.host.target, recorded.overlaid(given)) as host:
            yield RunSession(run, manifest, host, self.reporter, self.clock, self.options)

    def _run(self, session: RunSession, stages: Sequence[Stage]) -> RunManifest:
        """Run the stages; leave the record consistent and say what happened on any way out."""
        done: list[Stage] = []
        try:
            for stage in stages:
                run_stages(session, (stage,))
                done.append(stage)
        except KeyboardInterrupt:
            self._interrupted(session)
            raise
        except KohyawrapError as err:
            current = stages[len(done)]
            raise self._failed(session, current, err) from err
        return session.manifest

    def _interrupted(self, session: RunSession) -> None:
        run_id = session.run.run_id
        if session.manifest.status.active:
            self.reporter.info(
                f"stopped following; the training goes on: `kohyawrap attach {run_id}` to follow "
                f"it again, `kohyawrap stop {run_id}` to stop it"
            )

    def _failed(self, session: RunSession, stage: Stage, err: KohyawrapError) -> KohyawrapError:
        """Record a failed stage and make its error say what happened and what to do."""
        run_id = session.run.run_id
        m = session.manifest
        if stage in (Stage.SETUP, Stage.MODEL, Stage.UPLOAD, Stage.TRAIN) and not m.status.active:
            session.update(status=RunStatus.FAILED, error=f"{stage.value}: {err.message}")
            if isinstance(err, ConnectionLost):
                return HostError(
                    f"the connection dropped during {stage.value} and did not come back: {err.message}",
                    hint="nothing was started on the host; run the same command again: what was "
                    "already set up or uploaded is reused",
                )
            return err
        if isinstance(err, HostError) and m.status.active:
            where = "following" if stage is Stage.FOLLOW else stage.value
            return HostError(
                f"lost the host while {where} run {run_id}: {err.message}",
                evidence=err.evidence,
                hint=f"the training goes on there; `kohyawrap attach {run_id}` continues from here",
            )
        return err


@contextmanager
def _opened(target: str, connect: ConnectOptions) -> Iterator[Host]:
    host = open_host(target, connect)
    try:
        yield host
    finally:
        host.close()


def _check_finish_action(request: TrainRequest, target: str, questions: Questions) -> None:
    if request.money.on_finish != "shutdown" or not looks_local(target):
        return
    if not questions.shutdown_this_machine(target):
        raise UsageError(
            f"--on-finish shutdown would power off {target!r}, which looks like this machine",
            hint="answer yes when asked (on a terminal), or leave --on-finish out and shut it "
            "down yourself",
        )


def _local_sd_scripts(plan: RunPlan) -> SdScriptsRecord | None:
    """The git state of a local --sd-scripts-path checkout (on ``--host local``)."""
    path = plan.setup.sd_scripts_path
    if not path or plan.target != "local":
        return None
    from kohyawrap.gitinfo import git_state

    state = git_state(Path(path))
    if state is None:
        return None
    return SdScriptsRecord(plan.setup.repo, plan.setup.ref, state.commit, path, state.dirty)


def _provenance(request: TrainRequest, plan: RunPlan) -> tuple[Provenance, ...]:
    """The git state of the dataset (and a local sd-scripts checkout) when they are in git."""
    from kohyawrap.gitinfo import git_state

    found = []
    for path in (
        request.dataset,
        Path(plan.setup.sd_scripts_path)
        if plan.target == "local" and plan.setup.sd_scripts_path
        else None,
    ):
        if path is None:
            continue
        state = git_state(path)
        if state is not None:
            found.append(Provenance(str(path), state.commit, state.dirty))
    return tuple(found)


def log_tail(run: RunDir, count: int = 30) -> list[str]:
    """The last lines of the local log as a terminal would show them."""
    from kohyawrap.logparse import readable_lines

    if not run.log.exists():
        return []
    with run.log.open("rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - _TAIL_BYTES))
        return readable_lines(fh.read())[-count:]


def raise_for_outcome(m: RunManifest, run: RunDir) -> None:
    """Turn an ended run that did not finish into the error that says why (exit codes 4/5)."""
    pulled = sum(1 for f in m.pulled.values() if f.path.startswith("checkpoints/"))
    where = f"{pulled} file(s) were pulled into {run.path}"
    if m.status is RunStatus.STOPPED and m.stop_reason in (StopReason.BUDGET, StopReason.DEADLINE):
        message = m.error or (
            f"the host stopped the run at its --max-hours deadline ({m.plan.money.max_hours} h)"
            if m.stop_reason is StopReason.DEADLINE
            else "the run went over its budget"
        )
        raise BudgetExceeded(message, hint=f"what it saved was pulled: {where}")
    if m.status is RunStatus.FAILED:
        failure = m.failure
        detail = f" ({failure.kind}: {failure.message})" if failure else ""
        raise TrainingFailed(
            f"training exited with code {m.exit_code}{detail}"
            if m.exit_code is not None
            else (m.error or "the run failed"),
            evidence=log_tail(run),
            hint=(failure.hint if failure else "read the log above") + f"; {where}",
        )
    if m.status is RunStatus.INCOMPLETE:
        missing = m.missing()
        raise IncompleteRun(
            f"the training ended, but {len(missing)} checkpoint(s) it saved are not on the laptop",
            evidence=[f"{rel}: {m.follow.rejected.get(rel, 'not pulled yet')}" for rel in missing],
            hint=f"`kohyawrap pull {run.run_id}` fetches them; --on-finish was not carried out",
        )
