"""The launcher as a library: what ``train``, ``attach``, ``stop``, ``pull`` and ``reproduce --run``
do, each a short story over the stages, with the clock, the reporter and the questions to the
user passed in. The CLI builds the inputs, calls one of these, and presents the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
from kohyawrap.launcher.continuing import ContinueRequest
from kohyawrap.launcher.grid import GridRequest
from kohyawrap.launcher.legs import begin_leg, first_leg
from kohyawrap.launcher.manifest import (
    HostRecord,
    Leg,
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
    GRID_THEN_FINISH,
    PULL_ONLY,
    FollowOptions,
    RunSession,
    Stage,
    run_stages,
)
from kohyawrap.launcher.states import StateRef

_TAIL_BYTES = 64_000
_BEFORE_LAUNCH = (Stage.PREPARE, Stage.SETUP, Stage.MODEL, Stage.UPLOAD, Stage.TRAIN)


@dataclass(frozen=True)
class Questions:
    """What the launcher may ask the person (the CLI answers from --yes or a terminal)."""

    start: Callable[[RunPlan], bool] = lambda plan: True
    # --on-finish shutdown|stop|destroy on a target that looks like this machine: really?
    finish_this_machine: Callable[[str, str], bool] = lambda target, action: False


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
        stages: Sequence[Stage] = FULL,
    ) -> TrainResult:
        """connect -> facts -> plan -> preflight -> confirm -> execute every stage.

        ``stages`` runs another selection (scripts/bench_setup.py times set-up alone with it).
        """
        request = check_request(request)
        _check_finish_action(request, target, questions, hf_token)
        if dry_run and request.spec.gpu != "auto" and not request.gpus.needs_host:
            # Nothing to ask the host: its home is shown as ~.
            plan = build_run_plan(request, target=target, home="~", now=self.now())
            on_plan(plan)
            self._warn_token(plan, hf_token)
            return TrainResult(plan)
        timings = Timings(self.clock)
        started_at = self.clock.now()
        self.reporter.stage("connect", target)
        with _opened(target, connect) as host:
            from kohyawrap.hosts.facts import read_facts
            from kohyawrap.launcher.money import check_provider
            from kohyawrap.launcher.setup import preflight

            facts = read_facts(host, request.work_dir)
            check_provider(request.money, facts)
            timings.lap("connect")
            plan = build_run_plan(
                request, target=target, home=host.home(), now=self.now(), facts=facts
            )
            timings.lap("plan")
            on_plan(plan)
            self._warn_token(plan, hf_token)
            preflight(host, plan, facts, self.reporter, force=request.force)
            if dry_run:
                return TrainResult(plan)
            if not questions.start(plan):
                return TrainResult(plan, declined=True)
            timings.restart()
            run = self.store.create(plan.run_id)
            record = HostRecord(target, host.label, connect.recorded().to_json(), facts.to_json())
            manifest = RunManifest(
                run_id=plan.run_id,
                plan=plan,
                host=record,
                started_at=started_at,
                timings=dict(timings.phases),
                sd_scripts=_local_sd_scripts(plan),
                provenance=_provenance(request, plan),
                legs=(first_leg(plan, record, started_at),),
            )
            run.save(manifest)
            for name, text in sorted(plan.rendered.files.items()):
                run.write_text(f"config/{name}", text)
            with run.follow_lock():
                session = RunSession(
                    run, manifest, host, self.reporter, self.clock, self.options,
                    timings=timings, hf_token=hf_token,
                )  # fmt: skip
                self._run(session, tuple(s for s in stages if s is not Stage.FINISH))
                session = self._retry_oom(session, request.retry_oom)
                final = (
                    self._run(session, (Stage.FINISH,))
                    if Stage.FINISH in stages
                    else session.manifest
                )
        self._report(session.run)
        raise_for_outcome(final, session.run)
        return TrainResult(plan, final, session.run)

    # -- verbs on a recorded run -----------------------------------------------------------------
    def attach(self, run: RunDir, connect: ConnectOptions) -> RunManifest:
        """Follow a launched run to its end, from the log already seen; pull; finish."""
        manifest = run.load()
        if not manifest.status.active and not _grid_unfinished(manifest):
            return manifest
        stages = ATTACH if manifest.status.active else GRID_THEN_FINISH
        with run.follow_lock(), self._session(run, manifest, connect) as session:
            final = self._run(session, stages)
        self._report(session.run)
        raise_for_outcome(final, session.run)
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

    # -- resume, extend, out-of-memory retries (a new leg of the run) -----------------------------
    def resume(
        self,
        run: RunDir,
        request: ContinueRequest,
        connect: ConnectOptions,
        *,
        questions: Questions = Questions(),
        hf_token: str | None = None,
        on_plan: Callable[[RunPlan, StateRef], None] = lambda plan, ref: None,
    ) -> RunManifest:
        """Continue a run from its newest training state (``extend``: from its end, for more
        epochs), on its own host or a new one: SETUP -> MODEL -> UPLOAD (dataset and state) ->
        TRAIN -> FOLLOW -> PULL -> FINISH as a new leg of the same run."""
        from kohyawrap.launcher import continuing as c

        m = run.load()
        c.check_can_continue(m, request.kind)
        c.check_inputs(m)
        target = request.target or m.host.target
        same = c.same_host(m, target, connect)
        given = _recorded(m).overlaid(connect) if same else connect
        key = c.host_key(target, given.to_json())
        with run.follow_lock(), ExitStack() as hosts:
            m, ref, old = self._newest_state(run, m, request, key, connect if same else None, hosts)
            if old is not None and not same:
                old.close()  # its work is pulled; the new leg runs elsewhere
            host = old if old is not None and same else hosts.enter_context(_opened(target, given))
            session = self._begin_leg(
                run, m, ref, request, target, host, given, same, questions, on_plan
            )
            if session is None:
                return run.load()
            session.hf_token = hf_token
            self._run(session, (Stage.SETUP, Stage.MODEL, Stage.UPLOAD))
            how = session.reconnector.call(
                lambda: c.place_state(host, session.manifest.plan, ref, run, self.reporter, key),
                "placing the state again",
            )
            self.reporter.info(f"training continues from {ref.label} ({how})")
            final = self._run(session, (Stage.TRAIN, Stage.FOLLOW, Stage.PULL, Stage.FINISH))
        raise_for_outcome(final, session.run)
        return final

    def _newest_state(
        self,
        run: RunDir,
        m: RunManifest,
        request: ContinueRequest,
        key: str,
        given: ConnectOptions | None,
        hosts: ExitStack,
    ) -> tuple[RunManifest, StateRef, Host | None]:
        """Settle the current leg on its host (when it answers) and choose the state to go on
        from; the current host stays open (closed with ``hosts``). ``key``: the next leg's host;
        ``given``: connection options typed for the current host (None: a new host is named)."""
        from kohyawrap.launcher import continuing as c
        from kohyawrap.launcher.states import newest

        old = self._reach(m, given or ConnectOptions())
        if old is not None:
            hosts.enter_context(_closing(old))
        refs = c.laptop_states(m, run)
        if old is not None:
            m = self._settle(run, m, old)
            refs += c.host_states(old, m, c.host_key(m.host.target, m.host.connect))
        if request.kind == "extend":
            refs = [r for r in refs if r.kind == "end" and r.leg == m.leg_number]
        per_epoch = c.steps_per_epoch(m.plan)
        offsets = {leg.number: leg.step_offset for leg in m.legs}
        ref = newest(refs, offsets, per_epoch)
        if ref is None:
            what = "its final state" if request.kind == "extend" else "a training state"
            raise UsageError(
                f"run {m.run_id} has no {what} to continue from, on this computer"
                + ("" if old is not None else f" (and {m.host.target} does not answer)"),
                hint="training states are saved with --keep-states (on by default) and pulled "
                "with --pull-state; without one, start again: `kohyawrap reproduce RUN --run HOST`",
            )
        if not ref.local and key != ref.target and old is not None:
            m, ref = c.pull_state(old, run, m, ref, self.reporter)
            run.save(m)
        return m, ref, old

    def _reach(self, m: RunManifest, given: ConnectOptions) -> Host | None:
        """The run's current host, if it answers within a few seconds."""
        options = replace(_recorded(m).overlaid(given), connect_timeout=10.0)
        self.reporter.stage("connect", f"{m.host.target} (the run's host)")
        try:
            return open_host(m.host.target, options)
        except HostError as err:
            self.reporter.info(
                f"{m.host.target} does not answer ({err.message}): going on without it"
            )
            return None

    def _settle(self, run: RunDir, m: RunManifest, host: Host) -> RunManifest:
        """The current leg's end as its host tells it, and what it saved pulled to the laptop."""
        session = RunSession(
            run.for_leg(m.leg_number), m, host, self.reporter, self.clock, self.options
        )
        if m.status.active and m.exit_code is None:
            ended = job.exit_status(host, m.remote_run_dir)
            if ended is None and job.alive(host, m.remote_run_dir):
                raise UsageError(
                    f"run {m.run_id} is still training on {m.host.target}",
                    hint=f"`kohyawrap attach {m.run_id}` follows it; `kohyawrap stop {m.run_id}` "
                    "stops it, then resume",
                )
            if ended is not None:
                run_stages(session, (Stage.FOLLOW,))
        run_stages(session, (Stage.PULL,))
        return session.manifest

    def _begin_leg(
        self,
        run: RunDir,
        m: RunManifest,
        ref: StateRef,
        request: ContinueRequest,
        target: str,
        host: Host,
        connect: ConnectOptions,
        same: bool,
        questions: Questions,
        on_plan: Callable[[RunPlan, StateRef], None],
    ) -> RunSession | None:
        """Plan the next leg on ``host``, confirm, and record it; None when declined."""
        from kohyawrap.hosts.facts import read_facts
        from kohyawrap.launcher import continuing as c
        from kohyawrap.launcher.setup import preflight
        from kohyawrap.launcher.states import epochs_done, resume_settings

        work = request.work_dir or (m.plan.layout.work if same else "~/kohyawrap")
        per_epoch = c.steps_per_epoch(m.plan)
        offset = next((leg.step_offset for leg in m.legs if leg.number == ref.leg), 0)
        done = epochs_done(ref, per_epoch, offset)
        epochs = done + request.epochs if request.kind == "extend" and request.epochs else None
        if epochs is None and done >= c.total_epochs(m.plan, per_epoch):
            raise UsageError(
                f"the newest state ({ref.label}) is at the end of the training",
                hint=f"`kohyawrap extend {m.run_id} --epochs N` trains further",
            )
        started = self.clock.now()
        self.reporter.stage("connect", target)
        facts = read_facts(host, work)
        plan = c.next_plan(
            m,
            leg=m.leg_number + 1,
            target=target,
            home=host.home(),
            now=self.now(),
            facts=facts,
            work_dir=work,
            managed=resume_settings(done + 1, ref.folder, epochs=epochs),
            price=c.money_for(m, same, request.price),
            pull_state=request.pull_state or None,
        )
        c.check_state_fits(m, ref, plan)
        preflight(host, plan, facts, self.reporter, force=request.force or plan.smoke)
        on_plan(plan, ref)
        if not questions.start(plan):
            return None
        leg = Leg(
            number=m.leg_number + 1,
            kind=request.kind,
            target=target,
            connect=connect.recorded().to_json(),
            remote_run_dir=plan.layout.run_dir,
            started_at=started,
            step_offset=done * per_epoch,
            resumed_from=ref.label,
            changed=c.changed_settings(m.original_plan, plan),
            note=f"{request.kind} from {ref.label}",
            price_per_hour=plan.money.price_per_hour,
        )
        record = HostRecord(target, host.label, connect.recorded().to_json(), facts.to_json())
        m = begin_leg(m, leg, plan, record, self.clock.now())
        leg_run = run.for_leg(leg.number)
        run.save(m)
        c.write_leg_configs(leg_run, plan)
        return RunSession(leg_run, m, host, self.reporter, self.clock, self.options)

    def _retry_oom(self, session: RunSession, tries: int) -> RunSession:
        """After "CUDA out of memory", train again with the next rung of the OOM ladder, on the
        same host, up to ``tries`` times; each try is a new leg. Returns the last leg's session."""
        from kohyawrap.errors import ConfigError
        from kohyawrap.ladder import as_sets, load_ladder, next_step
        from kohyawrap.launcher import continuing as c
        from kohyawrap.presets import load_catalog

        tried: list[str] = []
        changes: tuple[tuple[str, Any], ...] = ()
        while len(tried) < tries:
            m = session.manifest
            if m.status is not RunStatus.FAILED or m.failure is None or m.failure.kind != "oom":
                break
            ladder = load_ladder(load_catalog().model(m.plan.spec.model).family)
            step = next_step(ladder, m.plan.rendered.settings, tried)
            if step is None:
                self.reporter.info("out of memory, and the OOM ladder has no rung left to try")
                break
            tried.append(step.rung.name)
            self.reporter.stage("retry", f"out of memory: {step.describe()}")
            self.reporter.info(f"why this helps: {step.rung.source}")
            try:
                plan = c.next_plan(
                    m, leg=m.leg_number + 1, target=m.host.target, home=m.plan.layout.work,
                    now=self.now(), facts=None, work_dir=m.plan.layout.work,
                    changes=changes + step.changes, price=m.plan.money.price_per_hour,
                )  # fmt: skip
            except ConfigError as err:
                self.reporter.info(f"skipped: {err.message}")
                continue
            changes += step.changes
            leg = Leg(
                number=m.leg_number + 1,
                kind="retry",
                target=m.host.target,
                connect=dict(m.host.connect),
                remote_run_dir=plan.layout.run_dir,
                started_at=self.clock.now(),
                changed=c.changed_settings(m.original_plan, plan),
                note=f"out of memory: {step.rung.name}",
                price_per_hour=plan.money.price_per_hour,
            )
            m = begin_leg(m, leg, plan, m.host, self.clock.now())
            leg_run = session.run.for_leg(leg.number)
            session.run.save(m)
            c.write_leg_configs(leg_run, plan)
            session = RunSession(
                leg_run, m, session.host, self.reporter, self.clock, self.options,
                hf_token=session.hf_token,
            )  # fmt: skip
            self._run(session, (Stage.UPLOAD, Stage.TRAIN, Stage.FOLLOW, Stage.PULL))
        if changes and session.manifest.status is RunStatus.FINISHED:
            self.reporter.info(
                f"these settings fit the GPU; put them in your command or preset: {as_sets(changes)}"
            )
        return session

    # -- plumbing --------------------------------------------------------------------------------
    def _warn_token(self, plan: RunPlan, hf_token: str | None) -> None:
        """A gated repo without a token fails on the host, unless the host has its own."""
        from kohyawrap.models_fetch import needs_token

        if hf_token or not needs_token(plan.model_files):
            return
        gated = sorted({f.source for f in plan.model_files if f.kind == "hf" and f.gated})
        self.reporter.info(
            "warning: " + ", ".join(gated) + " is gated: the host "
            "needs a Hugging Face token with access (accept the licence on huggingface.co, then "
            "set HF_TOKEN or pass --hf-token-file), unless its own HF_TOKEN is set"
        )

    @contextmanager
    def _session(
        self, run: RunDir, manifest: RunManifest, given: ConnectOptions
    ) -> Iterator[RunSession]:
        recorded = ConnectOptions.from_json(manifest.host.connect)
        with _opened(manifest.host.target, recorded.overlaid(given)) as host:
            leg = run.for_leg(manifest.leg_number)
            yield RunSession(leg, manifest, host, self.reporter, self.clock, self.options)

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

    def grid(self, run: RunDir, connect: ConnectOptions, request: GridRequest) -> RunManifest:
        """Draw a grid for a recorded run: on its own host, or on ``request.target`` (set up
        there, base model and chosen checkpoints uploaded); then write the report."""
        from kohyawrap.launcher.grid import draw_for

        manifest = run.load()
        if manifest.status.active:
            raise UsageError(
                f"run {run.run_id} is still {manifest.status.value}",
                hint=f"`kohyawrap attach {run.run_id}` follows it; its grid comes at the end",
            )
        if _grid_unfinished(manifest) and request.target in (None, manifest.host.target):
            return self.attach(run, connect)  # a grid cut short inside `train`: carry it on
        target = request.target or manifest.host.target
        recorded = ConnectOptions.from_json(manifest.host.connect)
        given = recorded.overlaid(connect) if target == manifest.host.target else connect
        with run.follow_lock(), _opened_or_elsewhere(target, given, run, request) as host:
            session = RunSession(run, manifest, host, self.reporter, self.clock, self.options)
            draw_for(session, request, hf_token=request.hf_token)
        self._report(run)
        return run.load()

    def _report(self, run: RunDir) -> None:
        """Write the run's report page and say where it is (a failure is said, not raised)."""
        from kohyawrap.launcher.runreport import try_write_report

        result, problem = try_write_report(run)
        if result is None:
            self.reporter.info(f"the report could not be written: {problem}")
            return
        self.reporter.stage("report", str(result.path))
        if result.suggestion is not None:
            self.reporter.info(f"try first: {result.suggestion.local} ({result.reason})")

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
        if stage in _BEFORE_LAUNCH and not m.status.active:
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


def _recorded(m: RunManifest) -> ConnectOptions:
    return ConnectOptions.from_json(m.host.connect)


@contextmanager
def _closing(host: Host) -> Iterator[Host]:
    try:
        yield host
    finally:
        host.close()


@contextmanager
def _opened(target: str, connect: ConnectOptions) -> Iterator[Host]:
    host = open_host(target, connect)
    try:
        yield host
    finally:
        host.close()


@contextmanager
def _opened_or_elsewhere(
    target: str, connect: ConnectOptions, run: RunDir, request: GridRequest
) -> Iterator[Host]:
    """The grid's host; a training host that is gone (stopped after the run) says what to do."""
    try:
        host = open_host(target, connect)
    except HostError as err:
        if request.target is not None:
            raise
        raise HostError(
            f"cannot reach the host that trained run {run.run_id}: {err.message}",
            evidence=err.evidence,
            hint=f"a rented host is often gone after the run: `kohyawrap grid {run.run_id} --host "
            "NEW` draws the grid on another machine (the checkpoints are uploaded there)",
        ) from err
    try:
        yield host
    finally:
        host.close()


def _grid_unfinished(m: RunManifest) -> bool:
    """A grid that ``train`` launched and nobody followed to its end (the laptop went away)."""
    return m.grid is not None and m.grid.in_run and not m.grid.ended


def _check_finish_action(
    request: TrainRequest, target: str, questions: Questions, hf_token: str | None
) -> None:
    """What ``--on-finish`` and ``--push-to-hub`` need, before connecting."""
    from kohyawrap.launcher.money import need_token

    need_token(request.money, hf_token)
    action = request.money.on_finish
    if action not in ("shutdown", "stop", "destroy") or not looks_local(target):
        return
    if not questions.finish_this_machine(target, action):
        raise UsageError(
            f"--on-finish {action} would {_VERB[action]} {target!r}, which looks like this machine",
            hint="answer yes when asked (on a terminal), or leave --on-finish out and do it "
            "yourself",
        )


_VERB = {"shutdown": "power off", "stop": "stop", "destroy": "destroy"}


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
