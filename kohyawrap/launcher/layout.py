"""Where things live on the host, and how a run is named. Pure: strings in, strings out.

Remote layout (design.md)::

    <work>/sd-scripts/<commit>/          a git clone at a pinned commit
    <work>/venvs/<fingerprint>/          the venv for that commit + requirements + torch
    <work>/models/                       base models (hf/ cache, uploads/, urls/) and tokenizers/
    <work>/datasets/<slug>/              the latest upload of a dataset (synced incrementally)
    <work>/tools/hub-<key>/              huggingface_hub for downloads during set-up
    <work>/runs/<run-id>/                one run: dataset/ (hard-link snapshot), config/, output/,
                                         logs/, run.sh, run.log, run.pid, exit_code
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from datetime import datetime

from kohyawrap.names import slug

RUN_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[\w.-]{1,40}-[0-9a-f]{6}$")


def make_run_id(name: str, now: datetime, salt: str) -> str:
    """``20261128-101500-my_lora-1a2b3c``: sortable, readable, unique per (time, inputs)."""
    digest = hashlib.sha256(f"{now.isoformat()}|{salt}".encode()).hexdigest()[:6]
    return f"{now:%Y%m%d-%H%M%S}-{slug(name)}-{digest}"


@dataclass(frozen=True)
class RemoteLayout:
    """Absolute host paths of one run (``work`` is already expanded, no ``~``)."""

    work: str
    run_id: str

    @property
    def runs(self) -> str:
        return posixpath.join(self.work, "runs")

    @property
    def run_dir(self) -> str:
        return posixpath.join(self.runs, self.run_id)

    def in_run(self, *parts: str) -> str:
        """A path inside the run folder."""
        return posixpath.join(self.run_dir, *parts)

    @property
    def models(self) -> str:
        return posixpath.join(self.work, "models")

    @property
    def tokenizers(self) -> str:
        return posixpath.join(self.models, "tokenizers")

    def sd_scripts(self, commit: str) -> str:
        return posixpath.join(self.work, "sd-scripts", commit)

    def venv(self, fingerprint: str) -> str:
        return posixpath.join(self.work, "venvs", fingerprint)

    def hub_env(self, python: str) -> str:
        """The small huggingface_hub environment that downloads base models during set-up."""
        key = hashlib.sha256(python.encode()).hexdigest()[:12]
        return posixpath.join(self.work, "tools", f"hub-{key}")

    def dataset_cache(self, dataset_slug: str) -> str:
        return posixpath.join(self.work, "datasets", dataset_slug)


def venv_fingerprint(commit: str, requirements_sha256: str, torch_spec: str, python: str) -> str:
    """Identity of an installed environment: same inputs -> same venv, reused without install."""
    text = "\n".join([commit, requirements_sha256, torch_spec, python])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
