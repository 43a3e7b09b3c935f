"""A run as data: everything ``train`` will do, computed before anything is spent.

``build_run_plan`` is deterministic for given inputs (clock, run id, host home and facts are
parameters), so ``train --dry-run`` prints exactly what ``train`` then executes.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from kohyawrap import __version__
from kohyawrap.errors import UsageError
from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.layout import RemoteLayout, slug
from kohyawrap.models import Estimate, RenderedRun, RunSpec
from kohyawrap.sdscripts import DEFAULT_REPO, PINNED_COMMIT

# sd-scripts README: torch 2.6.0 is tested; CUDA 12.4 wheels (install_notes.md step 3).
DEFAULT_TORCH = (
    "torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu124"
)

# The single-file checkpoints people mean when they name these repos (field_notes §8 sizes).
KNOWN_FILES = {
    "runwayml/stable-diffusion-v1-5": "v1-5-pruned-emaonly.safetensors",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "v1-5-pruned-emaonly.safetensors",
    "stabilityai/stable-diffusion-2-1": "v2-1_768-ema-pruned.safetensors",
    "stabilityai/stable-diffusion-xl-base-1.0": "sd_xl_base_1.0.safetensors",
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

ModelKind = Literal["hf", "url", "upload"]


@dataclass(frozen=True)
class ModelSource:
    """Where the base model comes from and where it will be on the host."""

    kind: ModelKind
    source: str  # repo id, URL, or local file path
    filename: str  # file inside the repo ("" = whole diffusers repo), or the file's name
    remote_path: str  # absolute host path written into the config
    local_sha256: str = ""  # for uploads: content hash (the remote name is derived from it)


@dataclass(frozen=True)
class SetupOptions:
    """How the host environment is prepared."""

    repo: str = DEFAULT_REPO
    ref: str = PINNED_COMMIT
    sd_scripts_path: str = ""  # a pre-installed checkout: no clone, no install
    python: str = "python3"
    torch_spec: str = DEFAULT_TORCH  # "skip" = never install torch
    xformers: bool = False


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
    smoke: bool = False
    on_finish: str = "none"
    pull_state: bool = False
    max_dollars: float | None = None
    max_hours: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def dataset_cache(self) -> str:
        return self.layout.dataset_cache(
            f"{slug(Path(self.dataset_root).name)}-{self.dataset_sha256[:8]}"
        )

    def to_json(self) -> dict[str, Any]:
        """The plan as data (``train --dry-run --json``, and the manifest's ``plan``)."""
        return {
            "kohyawrap_version": __version__,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "target": self.target,
            "remote_run_dir": self.layout.run_dir,
            "work_dir": self.layout.work,
            "spec": spec_to_json(self.spec),
            "script": self.rendered.script,
            "accelerate_args": list(self.rendered.accelerate_args),
            "settings": self.rendered.settings,
            "files": {
                name: sha256_text(text) for name, text in sorted(self.rendered.files.items())
            },
            "inputs_hash": self.rendered.inputs_hash,
            "estimate": asdict(self.estimate),
            "model": asdict(self.model),
            "setup": asdict(self.setup),
            "dataset": {
                "root": self.dataset_root,
                "files": len(self.dataset_files),
                "sha256": self.dataset_sha256,
            },
            "on_finish": self.on_finish,
            "pull_state": self.pull_state,
            "max_dollars": self.max_dollars,
            "max_hours": self.max_hours,
            "notes": list(self.notes),
        }


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def spec_to_json(spec: RunSpec) -> dict[str, Any]:
    """A RunSpec as JSON data (overrides as a list of [key, value] pairs, order kept)."""
    data = asdict(spec)
    data["overrides"] = [list(pair) for pair in spec.overrides]
    return data


def spec_from_json(data: dict[str, Any]) -> RunSpec:
    """The inverse of :func:`spec_to_json`."""
    fields = dict(data)
    fields["overrides"] = tuple((str(k), v) for k, v in fields.get("overrides", []))
    return RunSpec(**fields)


def dataset_files(root: Path) -> dict[str, str]:
    """Every file sd-scripts may read under the dataset folder, by relative POSIX path."""
    if not root.is_dir():
        raise UsageError(
            f"dataset folder {root} does not exist", hint="build one with `kohyawrap dataset build`"
        )
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(
            part.startswith(".") for part in path.relative_to(root).parts
        ):
            rel = path.relative_to(root).as_posix()
            if "\n" in rel or "\r" in rel:
                raise UsageError(f"file name with a line break in the dataset: {rel!r}")
            files[rel] = str(path)
    if not files:
        raise UsageError(f"dataset folder {root} is empty")
    return files


def dataset_hash(files: dict[str, str]) -> str:
    """A content hash of the whole dataset: names and bytes."""
    digest = hashlib.sha256()
    for rel, local in sorted(files.items()):
        digest.update(rel.encode() + b"\0" + file_sha256(Path(local)).encode() + b"\n")
    return digest.hexdigest()


def model_source(base_model: str, filename: str | None, models_dir: str) -> ModelSource:
    """Classify ``--base-model`` (local file, URL, or Hugging Face repo id) and place it on the host."""
    local = Path(base_model).expanduser()
    if local.is_file():
        digest = file_sha256(local)
        name = f"{digest[:16]}-{slug(local.name, 80)}"
        return ModelSource(
            "upload",
            str(local.resolve()),
            local.name,
            posixpath.join(models_dir, "uploads", name),
            digest,
        )
    if base_model.startswith(("http://", "https://")):
        tail = slug(base_model.rsplit("/", 1)[-1].split("?")[0], 80) or "model.safetensors"
        key = hashlib.sha256(base_model.encode()).hexdigest()[:12]
        return ModelSource(
            "url", base_model, tail, posixpath.join(models_dir, "urls", f"{key}-{tail}")
        )
    if _REPO_ID.match(base_model):
        file = filename if filename is not None else KNOWN_FILES.get(base_model, "")
        name = slug(base_model.replace("/", "--"), 120) + (f"--{slug(file, 120)}" if file else "")
        return ModelSource("hf", base_model, file, posixpath.join(models_dir, "hf-files", name))
    raise UsageError(
        f"--base-model {base_model!r} is not a file, a URL or a Hugging Face repo id",
        hint="e.g. stabilityai/stable-diffusion-xl-base-1.0, ./models/v1-5.safetensors or https://...",
    )


def with_host_paths(spec: RunSpec, model: ModelSource, layout: RemoteLayout) -> RunSpec:
    """The spec as the host will see it: model and tokenizer cache at absolute host paths,
    dataset/output/logs relative to the run folder (sd-scripts' working directory)."""
    return replace(
        spec,
        base_model=model.remote_path,
        train_data_dir="dataset",
        output_dir="output",
        logging_dir="logs",
        tokenizer_cache_dir=layout.tokenizers,
    )
