"""Local run records: ``runs/<run-id>/`` with the manifest, configs, log, checkpoints.

Every file is written atomically (temp file + ``os.replace``) and nothing existing is ever
overwritten by a pulled file: a run folder is new per run, and inside it a name is written once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kohyawrap.errors import UsageError
from kohyawrap.fileio import atomic_write, dump_json

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RunDir:
    """One local run folder."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def config(self) -> Path:
        return self.path / "config"

    @property
    def log(self) -> Path:
        return self.path / "run.log"

    def load_manifest(self) -> dict[str, Any]:
        """The run's manifest (raises UsageError when it is missing or unreadable)."""
        try:
            data: dict[str, Any] = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UsageError(
                f"cannot read the manifest of run {self.run_id}: {err}", where=str(self.path)
            ) from err
        return data

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the manifest atomically."""
        atomic_write(self.path / MANIFEST, dump_json(manifest))

    def write_text(self, rel: str, text: str) -> Path:
        """Write a text file inside the run folder atomically."""
        target = self.path / rel
        atomic_write(target, text.encode())
        return target

    def append_log(self, data: bytes) -> None:
        """Append raw training output to the local copy of the log."""
        with self.log.open("ab") as out:
            out.write(data)


class RunStore:
    """The folder that holds all runs (``./runs`` by default)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self, run_id: str) -> RunDir:
        """A new, empty run folder; refuses to reuse an existing one."""
        path = self.root / run_id
        try:
            path.mkdir(parents=True, exist_ok=False)
        except FileExistsError as err:
            raise UsageError(f"run folder {path} already exists") from err
        return RunDir(path)

    def all(self) -> list[RunDir]:
        """Every run with a manifest, oldest first."""
        if not self.root.is_dir():
            return []
        return [RunDir(p) for p in sorted(self.root.iterdir()) if (p / MANIFEST).is_file()]

    def find(self, ref: str) -> RunDir:
        """A run by folder path, full id or unique id prefix/substring."""
        as_path = Path(ref)
        if (as_path / MANIFEST).is_file():
            return RunDir(as_path)
        runs = self.all()
        exact = [r for r in runs if r.run_id == ref]
        matches = (
            exact
            or [r for r in runs if r.run_id.startswith(ref)]
            or [r for r in runs if ref in r.run_id]
        )
        if len(matches) == 1:
            return matches[0]
        if not matches:
            known = ", ".join(r.run_id for r in runs[-5:]) or "none yet"
            raise UsageError(
                f"no run matches '{ref}' in {self.root}",
                hint=f"recent runs: {known}; `kohyawrap runs list` shows all",
            )
        raise UsageError(
            f"'{ref}' matches {len(matches)} runs",
            evidence=[r.run_id for r in matches[:10]],
            hint="give more of the run id",
        )
