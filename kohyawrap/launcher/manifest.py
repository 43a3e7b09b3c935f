"""The run record: one typed value, written to ``runs/<run-id>/manifest.json`` as it changes.

Everything that reads a run (attach, stop, pull, runs list/show, reproduce, the console) reads
attributes of a :class:`RunManifest`; nothing edits a dict. A change is a new value made with
:func:`dataclasses.replace` and saved whole. ``schema`` says which layout the JSON has;
:func:`upgrade` turns the layout the first release wrote (schema 1) into the current one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from kohyawrap import __version__
from kohyawrap.errors import UsageError
from kohyawrap.evaluate.record import GridRecord
from kohyawrap.launcher.runplan import (
    DEFAULT_TORCH,
    MoneyOptions,
    RunPlan,
    SetupOptions,
)
from kohyawrap.models import Failure, Finding
from kohyawrap.models_fetch import BASE_KEY

SCHEMA = 2


class RunStatus(str, Enum):
    """Where a run stands. ``FINISHED`` means every announced checkpoint is on the laptop."""

    PLANNED = "planned"  # recorded, nothing done on the host yet
    SETUP = "setup"  # sd-scripts and its environment are ready
    UPLOADED = "uploaded"  # model, dataset and configs are on the host
    RUNNING = "running"  # the detached job was launched
    FINISHED = "finished"  # exit 0 and every announced checkpoint verified locally
    INCOMPLETE = "incomplete"  # the job ended, but announced checkpoints are missing locally
    STOPPED = "stopped"  # ended early on purpose: see ``stop_reason``
    FAILED = "failed"  # set-up or training failed: see ``failure`` / ``error``

    @property
    def active(self) -> bool:
        """The job may still be running on the host (something to attach to)."""
        return self in (RunStatus.UPLOADED, RunStatus.RUNNING)

    @property
    def ended(self) -> bool:
        """The record of an ended run: it never changes again (except pulls completing it)."""
        return self in (RunStatus.FINISHED, RunStatus.STOPPED, RunStatus.FAILED)


class StopReason(str, Enum):
    """Why a run was stopped before it ended by itself."""

    BUDGET = "budget"  # --max-dollars
    DEADLINE = "deadline"  # --max-hours (the host's own timer, or the laptop's)
    MANUAL = "manual"  # `kohyawrap stop`
    NAN = "nan"  # the loss became NaN: every further step is wasted money


@dataclass(frozen=True)
class PulledFile:
    """A file from the host, verified on the laptop (``path`` is relative to the run folder)."""

    sha256: str
    bytes: int
    path: str
    remote_name: str = ""  # the host's file name, when the local one had to be made safe


@dataclass(frozen=True)
class HostRecord:
    """Which host ran it, how to reach it again, and what it offered."""

    target: str
    label: str = ""
    connect: dict[str, Any] = field(default_factory=dict)  # ConnectOptions.to_json()
    facts: dict[str, Any] = field(default_factory=dict)  # HostFacts.to_json()


@dataclass(frozen=True)
class SdScriptsRecord:
    """The sd-scripts checkout that ran (the exact commit, even when a branch was asked for)."""

    repo: str
    ref: str
    commit: str
    path: str
    git_dirty: bool | None = None  # a local --sd-scripts-path checkout with uncommitted changes


@dataclass(frozen=True)
class EnvironmentRecord:
    """The Python environment that ran the training."""

    python: str
    fingerprint: str
    torch: str
    reused: bool
    installer: str = ""  # uv | pip | preinstalled
    packages: tuple[str, ...] = ()  # `pip freeze` (or `uv pip freeze`) lines


@dataclass(frozen=True)
class UploadRecord:
    files_sent: int
    bytes_sent: int
    files_total: int
    bytes_total: int


@dataclass(frozen=True)
class Cost:
    """Dollars: the plan's estimate and price x wall time of the job, from launch to its end."""

    estimated: float
    actual: float
    price_per_hour: float


@dataclass(frozen=True)
class FollowState:
    """What the follower had seen when it last saved: survives a dropped connection."""

    log_offset: int = 0
    announced: tuple[str, ...] = ()  # checkpoints the log said it saved (run-relative paths)
    pending: dict[str, int] = field(default_factory=dict)  # rel path -> last size seen
    rejected: dict[str, str] = field(default_factory=dict)  # rel path -> why it was not kept
    last_step: int | None = None  # the last progress the log showed
    total_steps: int | None = None
    last_loss: float | None = None  # sd-scripts' running average loss at that step
    sec_per_step: float | None = None  # measured: tqdm's mean seconds per step of this leg
    measured: dict[str, float] = field(default_factory=dict)  # GPU use sampled on the host
    findings: tuple[Finding, ...] = ()  # what the follower noticed (a slow run and why)


@dataclass(frozen=True)
class Leg:
    """One stretch of a run on one host: the first training, a resume, an extension or an
    out-of-memory retry. Steps are the run's own count (sd-scripts restarts its count at 0 in
    every resumed process; ``step_offset`` puts it back in place).

    The fields from ``ended_at`` on are written when the next leg starts; until then the run's
    own fields (exit code, follow, pulled, cost) describe the current leg.
    """

    number: int
    kind: str  # train | resume | extend | retry
    target: str
    connect: dict[str, Any] = field(default_factory=dict)  # ConnectOptions.to_json()
    remote_run_dir: str = ""
    started_at: float | None = None  # laptop clock, when work on this leg's host began
    step_offset: int = 0  # steps done before this leg: its first step is step_offset + 1
    resumed_from: str = ""  # the state it continued from ("leg 1: demo-000001-state")
    changed: dict[str, Any] = field(default_factory=dict)  # settings unlike the first leg's
    note: str = ""  # why this leg exists, in a few words
    price_per_hour: float | None = None
    ended_at: float | None = None
    last_step: int | None = None
    status: str = ""  # the leg's verdict: finished, failed, stopped, incomplete, lost
    exit_code: int | None = None
    dollars: float | None = None
    failure: str = ""
    pulled: dict[str, PulledFile] = field(default_factory=dict)
    missing: tuple[str, ...] = ()  # checkpoints it announced that never reached the laptop
    measured: dict[str, float] = field(default_factory=dict)


# -- what the host's watchdog decided (kohyawrap/hostside/watchdog.py; read by launcher.watchdog) --


@dataclass(frozen=True)
class HostStop:
    """The host's watchdog stopped the job: why, whether right after a save, and at what cost."""

    reason: StopReason  # BUDGET or DEADLINE
    graceful: bool  # right after a complete checkpoint save: nothing trained was lost
    spent: float  # dollars when it decided (set-up included)
    message: str
    after: str = ""  # the checkpoint it stopped after
    at: float = 0.0  # the host's clock


@dataclass(frozen=True)
class HubPush:
    """The host pushed the checkpoints to the Hugging Face Hub (``--push-to-hub``)."""

    repo: str
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 the Hub reported, = ours
    error: str = ""


@dataclass(frozen=True)
class FinishRecord:
    """What happened to the host after the run (``--on-finish``), who decided it, and why."""

    asked: str  # the --on-finish value
    action: str  # carried out: none | stop | destroy | shutdown | command; "" = refused
    message: str
    by: str  # laptop | watchdog
    provider: str = "none"  # runpod | vast | none
    safe: bool = False  # every checkpoint verified on a laptop or on the Hub
    safe_by: str = ""
    missing: tuple[str, ...] = ()  # checkpoints that were not safe, with why
    result: str = ""  # ok | failed: ... | pending | started
    at: float = 0.0  # the host's clock


@dataclass(frozen=True)
class Provenance:
    """Git state of the local inputs, when they live in a git repository (reproducibility)."""

    path: str
    commit: str
    dirty: bool


@dataclass(frozen=True)
class RunManifest:
    """Everything recorded about one run; no secrets."""

    run_id: str
    plan: RunPlan
    host: HostRecord
    status: RunStatus = RunStatus.PLANNED
    schema: int = SCHEMA
    kohyawrap_version: str = __version__
    sd_scripts: SdScriptsRecord | None = None
    environment: EnvironmentRecord | None = None
    model_how: str | None = None  # the base model: cached | downloaded | uploaded | in place
    files_how: dict[str, str] = field(default_factory=dict)  # each model file's key -> how
    upload: UploadRecord | None = None
    pid: int | None = None
    started_at: float | None = None  # laptop clock, when work on the host began (money counts)
    launched_at: float | None = None  # laptop clock, when the detached job was started
    finished_at: float | None = None
    exit_code: int | None = None
    follow: FollowState = field(default_factory=FollowState)
    pulled: dict[str, PulledFile] = field(default_factory=dict)  # rel path on host -> file
    timings: dict[str, float] = field(default_factory=dict)
    cost: Cost | None = None
    failure: Failure | None = None
    error: str | None = None
    stop_reason: StopReason | None = None
    provenance: tuple[Provenance, ...] = ()
    host_stop: HostStop | None = None  # the host's watchdog stopped the job
    hub: HubPush | None = None  # the host pushed the checkpoints to the Hub
    finish: FinishRecord | None = None  # what happened to the host after the run
    legs: tuple[Leg, ...] = ()  # every leg so far; the last one is the current (see Leg)
    origin: RunPlan | None = None  # the first leg's plan, once a later leg runs another one
    grid: GridRecord | None = None  # the evaluation grid drawn after training (the latest one)

    @property
    def remote_run_dir(self) -> str:
        return self.plan.layout.run_dir

    @property
    def original_plan(self) -> RunPlan:
        """The plan the run started with (what ``reproduce`` renders again)."""
        return self.origin if self.origin is not None else self.plan

    @property
    def leg_number(self) -> int:
        """The current leg, counted from 1 (a record without legs has one)."""
        return max(1, len(self.legs))

    @property
    def step_offset(self) -> int:
        """Steps done before the current leg (0 for the first)."""
        return self.legs[-1].step_offset if self.legs else 0

    @property
    def earlier_dollars(self) -> float:
        """What the legs before the current one cost."""
        return sum(leg.dollars or 0.0 for leg in self.legs[:-1])

    def with_changes(self, **changes: Any) -> RunManifest:
        """A copy with ``changes`` applied (the record is immutable)."""
        return replace(self, **changes)

    def missing(self) -> tuple[str, ...]:
        """Checkpoints the log announced that are not verified on the laptop."""
        return tuple(rel for rel in self.follow.announced if rel not in self.pulled)

    # -- JSON ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The record as JSON data (``manifest.json``, ``runs show --json``)."""
        return {
            "schema": self.schema,
            "kohyawrap_version": self.kohyawrap_version,
            "run_id": self.run_id,
            "status": self.status.value,
            "plan": self.plan.to_json(),
            "host": asdict(self.host),
            "sd_scripts": _opt(self.sd_scripts),
            "environment": _opt(self.environment),
            "model_how": self.model_how,
            "files_how": dict(self.files_how),
            "upload": _opt(self.upload),
            "pid": self.pid,
            "started_at": self.started_at,
            "launched_at": self.launched_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
            "follow": asdict(self.follow),
            "pulled": {rel: asdict(f) for rel, f in sorted(self.pulled.items())},
            "timings": dict(self.timings),
            "cost": _opt(self.cost),
            "failure": _opt(self.failure),
            "error": self.error,
            "stop_reason": self.stop_reason.value if self.stop_reason else None,
            "provenance": [asdict(p) for p in self.provenance],
            "host_stop": _opt(self.host_stop),
            "hub": _opt(self.hub),
            "finish": _opt(self.finish),
            "legs": [asdict(leg) for leg in self.legs],
            "origin": self.origin.to_json() if self.origin is not None else None,
            "grid": self.grid.to_json() if self.grid is not None else None,
        }

    @classmethod
    def from_json(cls, data: Any, config_files: dict[str, str] | None = None) -> RunManifest:
        """A record from its JSON data; raises UsageError (never a traceback) on bad data.

        ``config_files`` (name -> text) fill in the rendered files of a schema-1 record.
        """
        if not isinstance(data, dict):
            raise UsageError(f"the manifest is a JSON {type(data).__name__}, not an object")
        try:
            return _from_current(upgrade(data, config_files))
        except UsageError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UsageError(
                f"the manifest is not a kohyawrap run record ({_describe(err)})"
            ) from err


def _opt(value: Any) -> dict[str, Any] | None:
    return None if value is None else asdict(value)


def _describe(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing {err}"
    return f"{type(err).__name__}: {err}"


def _from_current(data: dict[str, Any]) -> RunManifest:
    follow = dict(data.get("follow") or {})
    return RunManifest(
        run_id=str(data["run_id"]),
        plan=RunPlan.from_json(data["plan"]),
        host=HostRecord(**data["host"]),
        status=RunStatus(data["status"]),
        schema=int(data["schema"]),
        kohyawrap_version=str(data.get("kohyawrap_version", "")),
        sd_scripts=_maybe(SdScriptsRecord, data.get("sd_scripts")),
        environment=_environment(data.get("environment")),
        model_how=data.get("model_how"),
        files_how={str(k): str(v) for k, v in (data.get("files_how") or {}).items()},
        upload=_maybe(UploadRecord, data.get("upload")),
        pid=_int_or_none(data.get("pid")),
        started_at=_float_or_none(data.get("started_at")),
        launched_at=_float_or_none(data.get("launched_at")),
        finished_at=_float_or_none(data.get("finished_at")),
        exit_code=_int_or_none(data.get("exit_code")),
        follow=FollowState(
            log_offset=int(follow.get("log_offset", 0)),
            announced=tuple(str(a) for a in follow.get("announced") or ()),
            pending={str(k): int(v) for k, v in (follow.get("pending") or {}).items()},
            rejected={str(k): str(v) for k, v in (follow.get("rejected") or {}).items()},
            last_step=_int_or_none(follow.get("last_step")),
            total_steps=_int_or_none(follow.get("total_steps")),
            last_loss=_float_or_none(follow.get("last_loss")),
            sec_per_step=_float_or_none(follow.get("sec_per_step")),
            measured=_numbers(follow.get("measured")),
            findings=tuple(Finding(**f) for f in follow.get("findings") or ()),
        ),
        pulled={str(k): PulledFile(**v) for k, v in (data.get("pulled") or {}).items()},
        timings={str(k): float(v) for k, v in (data.get("timings") or {}).items()},
        cost=_maybe(Cost, data.get("cost")),
        failure=_maybe(Failure, data.get("failure")),
        error=data.get("error"),
        stop_reason=StopReason(data["stop_reason"]) if data.get("stop_reason") else None,
        provenance=tuple(Provenance(**p) for p in data.get("provenance") or ()),
        host_stop=_host_stop(data.get("host_stop")),
        hub=_maybe(HubPush, data.get("hub")),
        finish=_finish(data.get("finish")),
        legs=tuple(_leg(leg) for leg in data.get("legs") or ()),
        origin=RunPlan.from_json(data["origin"]) if data.get("origin") else None,
        grid=GridRecord.from_json(data.get("grid")),
    )


def _host_stop(value: Any) -> HostStop | None:
    if value is None:
        return None
    return HostStop(**{**value, "reason": StopReason(value["reason"])})


def _finish(value: Any) -> FinishRecord | None:
    if value is None:
        return None
    return FinishRecord(**{**value, "missing": tuple(value.get("missing") or ())})


def _leg(data: dict[str, Any]) -> Leg:
    return Leg(
        **{
            **data,
            "pulled": {str(k): PulledFile(**v) for k, v in (data.get("pulled") or {}).items()},
            "missing": tuple(str(m) for m in data.get("missing") or ()),
            "measured": _numbers(data.get("measured")),
            "changed": dict(data.get("changed") or {}),
            "connect": dict(data.get("connect") or {}),
        }
    )


def _numbers(value: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in (value or {}).items()}


def _maybe(kind: Any, value: Any) -> Any:
    return None if value is None else kind(**value)


def _environment(value: Any) -> EnvironmentRecord | None:
    if value is None:
        return None
    return EnvironmentRecord(**{**value, "packages": tuple(value.get("packages") or ())})


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# ---------------------------------------------------------------------------------------------
# Older layouts


def upgrade(data: dict[str, Any], config_files: dict[str, str] | None = None) -> dict[str, Any]:
    """The current layout of a manifest's JSON data, from any layout a release has written.

    Schema 1 (kohyawrap 0.1.0) had no ``schema`` key, kept only hashes of the rendered files (their
    text is in the run's ``config/`` folder: pass it as ``config_files``), a count of the dataset's
    files, one base model (``plan["model"]``) and flat status fields.
    """
    schema = data.get("schema", 1)
    if schema == SCHEMA:
        return data
    if schema != 1:
        raise UsageError(
            f"the manifest has schema {schema}; this kohyawrap ({__version__}) reads up to {SCHEMA}",
            hint="install a newer kohyawrap to read it",
        )
    return _from_schema1(data, config_files or {})


def _from_schema1(old: dict[str, Any], config_files: dict[str, str]) -> dict[str, Any]:
    plan = dict(old["plan"])
    hashes = plan.get("files") or {}
    setup = {**asdict(SetupOptions()), **(plan.get("setup") or {})}
    setup.setdefault("torch_spec", DEFAULT_TORCH)
    plan.update(
        files={name: config_files.get(name, "") for name in hashes},
        files_sha256=dict(hashes),
        dataset={
            "root": plan["dataset"]["root"],
            "sha256": plan["dataset"]["sha256"],
            "files": {},  # schema 1 kept only the count
        },
        setup=setup,
        money=asdict(
            MoneyOptions(
                price_per_hour=plan["estimate"]["price_per_hour"],
                max_dollars=plan.get("max_dollars"),
                max_hours=plan.get("max_hours"),
                on_finish=plan.get("on_finish", "none"),
            )
        ),
        smoke=bool(plan.get("smoke", plan["spec"].get("smoke", False))),
        # One base model, no companion files: it becomes the first (only) model file.
        model_files=[{**plan["model"], "key": BASE_KEY, "in_place": False}],
    )
    plan.pop("model")
    host = dict(old.get("host") or {})
    connect_keys = ("port", "identity", "known_hosts", "ssh_config")
    environment = old.get("environment")
    if environment is not None:
        environment = {
            "python": environment.get("python", ""),
            "fingerprint": environment.get("fingerprint", ""),
            "torch": environment.get("torch", ""),
            "reused": bool(environment.get("reused")),
            "installer": "",
            "packages": list(environment.get("pip_freeze") or ()),
        }
    checkpoints = old.get("checkpoints") or {}
    status = old.get("status", "planned")
    how = (old.get("model") or {}).get("how")
    return {
        "schema": SCHEMA,
        "kohyawrap_version": old.get("kohyawrap_version", ""),
        "run_id": old["run_id"],
        "status": status,
        "plan": plan,
        "host": {
            "target": host.get("target", plan.get("target", "")),
            "label": host.get("label", ""),
            "connect": {k: host.get(k) for k in connect_keys},
            "facts": host.get("facts") or {},
        },
        "sd_scripts": old.get("sd_scripts"),
        "environment": environment,
        "model_how": how,
        "files_how": {BASE_KEY: how} if how else {},
        "upload": old.get("upload"),
        "pid": old.get("pid"),
        "started_at": old.get("started_at"),
        "launched_at": old.get("launched_at"),
        "finished_at": old.get("finished_at"),
        "exit_code": old.get("exit_code"),
        "follow": {
            "log_offset": old.get("log_offset", 0),
            "announced": [],  # schema 1 did not record announcements
            "pending": old.get("pending") or {},
            "rejected": old.get("rejected") or {},
        },
        "pulled": {rel: {**info, "remote_name": ""} for rel, info in checkpoints.items()},
        "timings": old.get("timings") or {},
        "cost": old.get("cost"),
        "failure": old.get("failure"),
        "error": old.get("error"),
        "stop_reason": None,
        "provenance": [],
    }
