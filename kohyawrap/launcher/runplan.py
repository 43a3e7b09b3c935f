"""A run as data: everything ``train`` will do, computed before anything is spent.

A :class:`RunPlan` is built by :func:`kohyawrap.launcher.request.build_run_plan` (deterministic for
the same inputs, clock and host facts), printed by ``train --dry-run``, executed by the stages, and
kept whole in the run's manifest: ``RunPlan.from_json(plan.to_json()) == plan``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kohyawrap import __version__
from kohyawrap.launcher.gpus import GpuAssignment
from kohyawrap.launcher.layout import RemoteLayout
from kohyawrap.models import Estimate, RenderedRun, RunSpec
from kohyawrap.names import slug
from kohyawrap.sdscripts import DEFAULT_REPO, PINNED_COMMIT

# sd-scripts' README names torch 2.6.0 as tested, with CUDA 12.4 wheels (docs/sources.md [13]).
DEFAULT_TORCH = (
    "torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu124"
)

ModelKind = Literal["hf", "url", "upload"]
Installer = Literal["auto", "uv", "pip"]


@dataclass(frozen=True)
class ModelSource:
    """Where the base model comes from and where it will be on the host."""

    kind: ModelKind
    source: str  # repo id, URL, or local file path
    filename: str  # file inside the repo ("" = whole diffusers repo), or the file's name
    remote_path: str  # absolute host path written into the config
    local_sha256: str = ""  # for uploads: content hash (the remote name is derived from it)
    in_place: bool = False  # a local file used where it is (``--host local``): nothing copied


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
    on_finish: str = "none"  # none | shutdown | a shell command, after every file is verified


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
    model: ModelSource
    setup: SetupOptions
    dataset_root: str
    dataset_files: dict[str, str]  # relative POSIX path -> local path
    dataset_sha256: str
    money: MoneyOptions = field(default_factory=MoneyOptions)
    smoke: bool = False
    pull_state: bool = False
    notes: tuple[str, ...] = ()
    kohyawrap_version: str = __version__
    gpus: GpuAssignment = field(default_factory=GpuAssignment)  # the GPUs the job is pinned to

    @property
    def dataset_cache(self) -> str:
        return self.layout.dataset_cache(
            f"{slug(Path(self.dataset_root).name)}-{self.dataset_sha256[:8]}"
        )

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
            "model": asdict(self.model),
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
            layout=RemoteLayout(str(data["work_dir"]), str(data["run_id"])),
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
            model=ModelSource(**data["model"]),
            setup=SetupOptions(**data["setup"]),
            dataset_root=str(data["dataset"]["root"]),
            dataset_files={str(k): str(v) for k, v in data["dataset"]["files"].items()},
            dataset_sha256=str(data["dataset"]["sha256"]),
            money=MoneyOptions(**data["money"]),
            smoke=bool(data["smoke"]),
            pull_state=bool(data["pull_state"]),
            notes=tuple(str(n) for n in data.get("notes") or ()),
            kohyawrap_version=str(data["kohyawrap_version"]),
            gpus=GpuAssignment.from_json(data.get("gpus") or {}),
        )


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
