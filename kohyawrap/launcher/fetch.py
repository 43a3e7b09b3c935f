"""FETCH: bring a run's files to the laptop, each verified by sha256, never over another file.

Names come from an untrusted host: only plain file names are accepted (never a path or ``..``),
and each becomes a local name the laptop's file system accepts (on Windows ``<>:"|?*`` become
``_``); the host's name is kept in the record when the two differ. A file that cannot be taken is
recorded as rejected with the reason; it is never mistaken for a lost connection.
"""

from __future__ import annotations

import posixpath
import sys
from pathlib import Path

from kohyawrap.errors import KohyawrapError
from kohyawrap.hosts.base import Host, sh
from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.manifest import PulledFile
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.launcher.watchdog import write_receipt
from kohyawrap.names import local_file_name, remote_name_problem

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt")
ON_WINDOWS = sys.platform == "win32"


SAMPLES = "samples"  # local folder of the in-training sample images


def is_sample(rel: str) -> bool:
    """An image sd-scripts sampled during training: ``output/sample/<name>.png``."""
    parts = rel.split("/")
    return len(parts) == 3 and parts[:2] == ["output", "sample"] and rel.endswith(".png")


def is_checkpoint(rel: str) -> bool:
    """A LoRA file sd-scripts saved: directly in ``output/``, with a model extension."""
    parts = rel.split("/")
    return len(parts) == 2 and parts[0] == "output" and rel.endswith(MODEL_EXTENSIONS)


class Puller:
    """Pulls files of one run into its local folder, recording each in ``pulled``/``rejected``."""

    def __init__(
        self,
        host: Host,
        run: RunDir,
        run_dir: str,
        reporter: Reporter,
        pulled: dict[str, PulledFile],
        rejected: dict[str, str],
        *,
        windows: bool = ON_WINDOWS,
    ) -> None:
        self.host = host
        self.run = run
        self.run_dir = run_dir
        self.reporter = reporter
        self.pulled = pulled
        self.rejected = rejected
        self.windows = windows

    def pull(self, rel: str, local_dir: Path, digest: str | None = None) -> bool:
        """Pull ``run_dir/rel`` into ``local_dir`` unless done before; True when it arrived now.

        ``digest``: its sha256 on the host when already known (many files hashed in one call).
        """
        if rel in self.pulled or rel in self.rejected:
            return False
        remote = posixpath.join(self.run_dir, rel)
        name = posixpath.basename(rel)
        problem = remote_name_problem(name)
        if problem is not None:
            return self._reject(rel, f"unsafe file name from the host ({problem})")
        if digest is None:
            digest = self.host.sha256([remote]).get(remote)
        if digest is None:
            return False
        target = self._target(local_dir, local_file_name(name, windows=self.windows), digest)
        if not target.exists():
            self.host.download(
                remote,
                target,
                expected_sha256=digest,
                progress=lambda d, t: self.reporter.transfer(name, d, t),
            )
            broken = _incomplete(target)
            if broken is not None:
                # sd-scripts writes checkpoints in place: a crash (full disk) leaves half a file.
                target.unlink()
                self.reporter.info(f"not kept: {name} is incomplete ({broken})")
                return self._reject(rel, broken)
            self.reporter.pulled(target.name, target.stat().st_size)
        if is_checkpoint(rel):
            # The host's watchdog may destroy the host only once every checkpoint has a receipt.
            write_receipt(self.host, self.run_dir, rel, digest)
        self.pulled[rel] = PulledFile(
            sha256=digest,
            bytes=target.stat().st_size,
            path=target.relative_to(self.run.path).as_posix(),
            remote_name=name if target.name != name else "",
        )
        return True

    def _reject(self, rel: str, why: str) -> bool:
        self.rejected[rel] = why
        return False

    @staticmethod
    def _target(local_dir: Path, name: str, digest: str) -> Path:
        """Where the file goes: its name, or ``stem.<digest>.ext`` beside a different file."""
        local_dir.mkdir(parents=True, exist_ok=True)
        target = local_dir / name
        if target.exists() and file_sha256(target) != digest:
            target = target.with_name(f"{target.stem}.{digest[:8]}{target.suffix}")
        return target

    # -- everything at the end ---------------------------------------------------------------
    def listing(self) -> list[str]:
        """Every file under the run's ``output/`` and ``logs/`` on the host (run-relative)."""
        out = self.host.run(
            f"cd {sh(self.run_dir)} && find output logs -type f -print0 2>/dev/null || true"
        ).stdout
        return sorted(p for p in out.split("\0") if p)

    def pull_outputs(self, *, pull_state: bool) -> None:
        """Every checkpoint, sample image and TensorBoard file (and training states on request),
        then the log."""
        self.reporter.stage("pull", str(self.run.path))
        for rel in self.listing():
            parts = rel.split("/")
            if is_checkpoint(rel):
                self.pull(rel, self.run.checkpoints)
            elif parts[0] == "output" and len(parts) == 3 and parts[1].endswith("-state"):
                if pull_state:
                    self.pull(rel, self.run.checkpoints / _safe_folder(parts[1], self.windows))
            elif is_sample(rel):
                self.pull(rel, self.run.path / SAMPLES)
            elif parts[0] == "logs" and parts[-1].startswith("events.out.tfevents"):
                folders = [_safe_folder(p, self.windows) for p in parts[1:-1]]
                self.pull(rel, self.run.path.joinpath("tensorboard", *folders))
        self.verify_log()

    def verify_log(self) -> None:
        """The streamed local log must equal the host's; if not (a drop mid-chunk), fetch it."""
        remote = posixpath.join(self.run_dir, "run.log")
        digest = self.host.sha256([remote]).get(remote)
        log = self.run.log
        if digest is None or (log.exists() and file_sha256(log) == digest):
            return
        fresh = self.run.path / "run.log.fetched"
        fresh.unlink(missing_ok=True)
        self.host.download(remote, fresh, expected_sha256=digest)
        fresh.replace(log)


def _safe_folder(name: str, windows: bool) -> str:
    if remote_name_problem(name) is not None:
        return "_"
    return local_file_name(name, windows=windows)


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk of every PNG file


def _incomplete(path: Path) -> str | None:
    """Why a pulled .safetensors or .png file is unusable (truncated, bad header), or None."""
    if path.suffix == ".png":
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - len(_PNG_END)))
            return None if fh.read() == _PNG_END else "a PNG without its end (truncated)"
    if path.suffix != ".safetensors":
        return None
    from kohyawrap.safetensors_header import read_header

    try:
        read_header(path)
    except KohyawrapError as err:
        return err.message
    return None
