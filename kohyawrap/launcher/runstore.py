"""Local run records: ``runs/<run-id>/`` with the manifest, configs, log and pulled files.

Every file is written atomically and nothing existing is ever overwritten by a pulled file: a run
folder is new per run, and inside it a name is written once. One process at a time follows a run
(``follow_lock``); a second one is told who holds it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kohyawrap.errors import UsageError
from kohyawrap.fileio import LockHeld, atomic_write, dump_json, exclusive_lock
from kohyawrap.launcher.manifest import RunManifest

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is kilobytes; its dataset list at most a few MB


@dataclass(frozen=True)
class RunDir:
    """One local run folder, seen from one leg of the run (a resume or retry is leg 2, 3 ...).

    Legs share the record; each later leg keeps its log and checkpoints apart (``run.leg2.log``,
    ``checkpoints/leg2/``), since sd-scripts gives the files of every leg the same names.
    """

    path: Path
    leg: int = 1

    @property
    def run_id(self) -> str:
        return self.path.name

    def for_leg(self, leg: int) -> RunDir:
        """The same run folder, seen from ``leg``."""
        return RunDir(self.path, leg)

    @property
    def checkpoints(self) -> Path:
        base = self.path / "checkpoints"
        return base if self.leg <= 1 else base / f"leg{self.leg}"

    @property
    def config(self) -> Path:
        return self.path / "config"

    @property
    def leg_config(self) -> Path:
        """Where this leg's rendered files are kept (the first leg's are in ``config/``)."""
        return self.config if self.leg <= 1 else self.config / f"leg{self.leg}"

    @property
    def log(self) -> Path:
        return self.path / ("run.log" if self.leg <= 1 else f"run.leg{self.leg}.log")

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def load(self) -> RunManifest:
        """The run's record; UsageError (never a traceback) when it is missing or corrupt."""
        where = str(self.manifest_path)
        try:
            if self.manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
                raise UsageError("the manifest is too large to be a run record", where=where)
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except OSError as err:
            raise UsageError(f"cannot read the manifest: {err.strerror}", where=where) from err
        except ValueError as err:
            raise UsageError(f"the manifest is not valid JSON: {err}", where=where) from err
        legacy = isinstance(data, dict) and "schema" not in data
        try:
            return RunManifest.from_json(data, self._config_texts() if legacy else None)
        except UsageError as err:
            raise UsageError(
                err.message,
                where=where,
                hint="the run folder was edited or damaged; its checkpoints are still there",
            ) from err

    def _config_texts(self) -> dict[str, str]:
        if not self.config.is_dir():
            return {}
        return {p.name: p.read_text(encoding="utf-8") for p in self.config.iterdir() if p.is_file()}

    def save(self, manifest: RunManifest) -> None:
        """Replace the manifest atomically."""
        atomic_write(self.manifest_path, dump_json(manifest.to_json()))

    def write_text(self, rel: str, text: str) -> Path:
        """Write a text file inside the run folder atomically."""
        target = self.path / rel
        atomic_write(target, text)
        return target

    def append_log(self, data: bytes) -> None:
        """Append raw training output to the local copy of the log."""
        with self.log.open("ab") as out:
            out.write(data)

    @contextmanager
    def follow_lock(self) -> Iterator[None]:
        """Be the one process that follows (and records) this run while the block runs."""
        note = (
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
        )
        try:
            with exclusive_lock(self.path / ".follow.lock", note):
                yield
        except LockHeld as held:
            raise UsageError(
                f"run {self.run_id} is being followed by another kohyawrap ({held.holder or 'unknown'})",
                hint="one client follows a run at a time: let that one finish, or end it (Ctrl-C) "
                "and run this again",
            ) from None


@dataclass(frozen=True)
class RunEntry:
    """A run folder and its record, or why the record cannot be read."""

    run: RunDir
    manifest: RunManifest | None
    problem: str | None = None


@dataclass(frozen=True)
class Found:
    """The run a reference chose, and the other runs it also matched (newest first)."""

    run: RunDir
    others: tuple[RunDir, ...] = ()


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

    def folders(self) -> list[RunDir]:
        """Every folder with a manifest file, oldest first (run ids start with the time)."""
        if not self.root.is_dir():
            return []
        return [RunDir(p) for p in sorted(self.root.iterdir()) if (p / MANIFEST).is_file()]

    def entries(self) -> list[RunEntry]:
        """Every run with its record; a corrupt record is reported, not fatal to the others."""
        out = []
        for run in self.folders():
            try:
                out.append(RunEntry(run, run.load()))
            except UsageError as err:
                out.append(RunEntry(run, None, err.message))
        return out

    def find(self, ref: str) -> Found:
        """A run by folder path, full id, or id prefix/substring (the newest of several)."""
        as_path = Path(ref)
        if (as_path / MANIFEST).is_file():
            return Found(RunDir(as_path))
        runs = self.folders()
        exact = [r for r in runs if r.run_id == ref]
        matches = (
            exact
            or [r for r in runs if r.run_id.startswith(ref)]
            or [r for r in runs if ref in r.run_id]
            or [r for r in runs if _name_of(r.run_id) == ref]
        )
        if not matches:
            known = ", ".join(r.run_id for r in runs[-5:]) or "none yet"
            raise UsageError(
                f"no run matches '{ref}' in {self.root}",
                hint=f"recent runs: {known}; `kohyawrap runs list` shows all",
            )
        newest_first = sorted(matches, key=lambda r: r.run_id, reverse=True)
        return Found(newest_first[0], tuple(newest_first[1:]))


def _name_of(run_id: str) -> str:
    """The name part of ``20261128-101500-<name>-1a2b3c``."""
    parts = run_id.split("-")
    return "-".join(parts[2:-1]) if len(parts) >= 4 else run_id
