"""A run as data: everything ``train`` will do, computed before anything is spent.

A :class:`RunPlan` is built by :func:`kohyawrap.launcher.request.build_run_plan` (deterministic for
the same inputs, clock and host facts), printed by ``train --dry-run``, executed by the stages, and
kept whole in the run's manifest: ``RunPlan.from_json(plan.to_json()) == plan``.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kohyawrap import __version__
from kohyawrap.evaluate.options import GridOptions
from kohyawrap.launcher.gpus import GpuAssignment
from kohyawrap.launcher.layout import RemoteLayout
from kohyawrap.models import Estimate, RenderedRun, RunSpec
from kohyawrap.models_fetch import BASE_KEY, FetchFile
from kohyawrap.names import slug
from kohyawrap.sdscripts import DEFAULT_REPO, PINNED_COMMIT

# sd-scripts' README names torch 2.6.0 as tested, with CUDA 12.4 wheels (docs/sources.md [13]).
DEFAULT_TORCH = (
    "torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu124"
)

Installer = Literal["auto", "uv", "pip"]


@dataclass(frozen=True)
class SetupOptions:
    """How the host environment is prepared."""

    repo: str = DEFAULT_REPO
    ref: str = PINNED_COMMIT
    sd_scripts_path: str = ""  # a pre-installed checkout: no clone, no install
    python: str = "python3"
    torch_spec: str = DEFAULT_TORCH  # "skip" = never install torch
    xformers: bool = False
    installer: Installer = "auto"  # auto: uv when the host has it (pip if uv fails), else pip


@dataclass(frozen=True)
class MoneyOptions:
    """What the run may cost and what happens when it ends."""

    price_per_hour: float | None = None  # None = the GPU preset's typical price
    max_dollars: float | None = None
    max_hours: float | None = None  # counted from the launch, on the host and on the laptop
    on_finish: str = "none"  # none | stop | destroy | shutdown | a shell command (docs/money.md)
    idle_minutes: float = 30.0  # the host finishes by itself when no laptop did by then
    provider: str = "auto"  # auto | runpod | vast | none: who rents the host
    push_to_hub: str = ""  # "user/repo": the host pushes the checkpoints there
    hub_private: bool = True


@dataclass(frozen=True)
class RunPlan:
    """The executable plan of one run."""

    run_id: str
    created_at: str
    target: str
    layout: RemoteLayout
    spec: RunSpec
    rendered: RenderedRun
    estimate: Estimate
    # Every model file the run needs on the host, the base model first (then clip_l, clip_g,
    # t5xxl, ae as the family loads them): where each comes from and where it goes.
    model_files: tuple[FetchFile, ...]
    setup: SetupOptions
    dataset_root: str
    dataset_files: dict[str, str]  # relative POSIX path -> local path
    dataset_sha256: str
    money: MoneyOptions = field(default_factory=MoneyOptions)
    smoke: bool = False
    pull_state: bool = False
    notes: tuple[str, ...] = ()
    kohyawrap_version: str = __version__
    grid: GridOptions = field(default_factory=lambda: GridOptions(enabled=False))
    gpus: GpuAssignment = field(default_factory=GpuAssignment)  # the GPUs the job is pinned to

    @property
    def dataset_cache(self) -> str:
        return self.layout.dataset_cache(
            f"{slug(Path(self.dataset_root).name)}-{self.dataset_sha256[:8]}"
        )

    @property
    def base_file(self) -> FetchFile:
        """The base model (``pretrained_model_name_or_path``)."""
        return next(f for f in self.model_files if f.key == BASE_KEY)

    @property
    def output_name(self) -> str:
        """The LoRA's name: sd-scripts' ``output_name``, the stem of every checkpoint."""
        return self.spec.output_name

    def to_json(self) -> dict[str, Any]:
        """The whole plan as JSON data (``train --dry-run --json``, the manifest's ``plan``)."""
        data = self._to_json()
        if self.gpus != GpuAssignment():
            data["gpus"] = self.gpus.to_json()  # recorded when used: earlier plans read the same
        return data

    def _to_json(self) -> dict[str, Any]:
        return {
            "kohyawrap_version": self.kohyawrap_version,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "target": self.target,
            "work_dir": self.layout.work,
            "remote_run_dir": self.layout.run_dir,
            "spec": spec_to_json(self.spec),
            "script": self.rendered.script,
            "accelerate_args": list(self.rendered.accelerate_args),
            "settings": self.rendered.settings,
            "files": dict(sorted(self.rendered.files.items())),
            "files_sha256": {
                name: sha256_text(text) for name, text in sorted(self.rendered.files.items())
            },
            "inputs_hash": self.rendered.inputs_hash,
            "estimate": {**asdict(self.estimate), "notes": list(self.estimate.notes)},
            "model_files": [f.to_json() for f in self.model_files],
            "setup": asdict(self.setup),
            "dataset": {
                "root": self.dataset_root,
                "sha256": self.dataset_sha256,
                "files": dict(sorted(self.dataset_files.items())),
            },
            "money": asdict(self.money),
            "smoke": self.smoke,
            "pull_state": self.pull_state,
            "notes": list(self.notes),
            "grid": self.grid.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunPlan:
        """The inverse of :meth:`to_json` (raises KeyError/TypeError/ValueError on bad data)."""
        spec = spec_from_json(data["spec"])
        estimate = dict(data["estimate"])
        estimate["notes"] = tuple(estimate.get("notes") or ())
        return cls(
            run_id=str(data["run_id"]),
            created_at=str(data["created_at"]),
            target=str(data["target"]),
            # A later leg of the run works in a folder of its own (<run-id>-leg2).
            layout=RemoteLayout(str(data["work_dir"]), _folder(data)),
            spec=spec,
            rendered=RenderedRun(
                spec=spec,
                script=str(data["script"]),
                files={str(k): str(v) for k, v in data["files"].items()},
                accelerate_args=tuple(str(a) for a in data["accelerate_args"]),
                settings=dict(data["settings"]),
                inputs_hash=str(data["inputs_hash"]),
            ),
            estimate=Estimate(**estimate),
            model_files=tuple(FetchFile(**f) for f in data["model_files"]),
            setup=SetupOptions(**data["setup"]),
            dataset_root=str(data["dataset"]["root"]),
            dataset_files={str(k): str(v) for k, v in data["dataset"]["files"].items()},
            dataset_sha256=str(data["dataset"]["sha256"]),
            money=MoneyOptions(**data["money"]),
            smoke=bool(data["smoke"]),
            pull_state=bool(data["pull_state"]),
            notes=tuple(str(n) for n in data.get("notes") or ()),
            kohyawrap_version=str(data["kohyawrap_version"]),
            grid=GridOptions.from_json(data.get("grid")),
            gpus=GpuAssignment.from_json(data.get("gpus") or {}),
        )


def _folder(data: dict[str, Any]) -> str:
    """The run folder's name on the host: the last part of remote_run_dir (else the run id)."""
    remote = str(data.get("remote_run_dir") or "")
    return posixpath.basename(remote.rstrip("/")) or str(data["run_id"])


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def spec_to_json(spec: RunSpec) -> dict[str, Any]:
    """A RunSpec as JSON data (overrides as a list of [key, value] pairs, order kept)."""
    from kohyawrap.render import LATER_SPEC_DEFAULTS

    data = asdict(spec)
    data["overrides"] = [list(pair) for pair in spec.overrides]
    # Fields added later are recorded only when used, so earlier records read the same.
    for key, default in LATER_SPEC_DEFAULTS.items():
        if data.get(key) == default:
            data.pop(key)
    return data


def spec_from_json(data: dict[str, Any]) -> RunSpec:
    """The inverse of :func:`spec_to_json` (JSON lists back into the spec's tuples)."""
    fields = dict(data)
    fields["overrides"] = tuple((str(k), v) for k, v in fields.get("overrides", []))
    for name, value in fields.items():
        if name != "overrides" and isinstance(value, list):
            fields[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return RunSpec(**fields)
