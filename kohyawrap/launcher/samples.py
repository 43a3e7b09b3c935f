"""The images sd-scripts samples during training, pulled while it trains.

sd-scripts writes them into ``output/sample/`` in place (PIL saves straight to the file), and says
nothing in the log per image. So the folder is listed every few seconds and an image is pulled
once its size has not changed between two listings; the Puller verifies it (sha256, a PNG that
ends with its IEND chunk) and never takes it twice. Each arrival is shown with its local path.
"""

from __future__ import annotations

from kohyawrap.clock import Clock
from kohyawrap.hosts.base import Host, sh
from kohyawrap.launcher.fetch import SAMPLES, Puller, is_sample
from kohyawrap.launcher.report import Reporter

LIST_EVERY_SECONDS = 10.0
MAX_LISTED = 2000  # a run samples a few images per epoch; more is not ours to pull


class SampleWatcher:
    """Pulls the sample images of one running job as they appear."""

    def __init__(
        self,
        host: Host,
        run_dir: str,
        puller: Puller,
        reporter: Reporter,
        clock: Clock,
        every_seconds: float = LIST_EVERY_SECONDS,
    ) -> None:
        self.host = host
        self.run_dir = run_dir
        self.puller = puller
        self.reporter = reporter
        self.clock = clock
        self.every = every_seconds
        self.sizes: dict[str, int] = {}
        self._last: float | None = None

    def listing(self) -> dict[str, int]:
        """``output/sample/<name>.png`` -> size, as the host sees it now."""
        folder = sh(f"{self.run_dir}/output/sample")
        out = self.host.run(
            f"find {folder} -maxdepth 1 -type f -name '*.png' -printf '%s %f\\0' 2>/dev/null "
            f"| head -z -n {MAX_LISTED} || true",
            check=False,
            timeout=60,
        ).stdout
        found = {}
        for entry in out.split("\0"):
            size, _, name = entry.partition(" ")
            rel = f"output/sample/{name}"
            if size.isdigit() and is_sample(rel):
                found[rel] = int(size)
        return found

    def poll(self) -> None:
        """Pull every sample whose size held still since the last listing (at most every few
        seconds: one round trip)."""
        now = self.clock.monotonic()
        if self._last is not None and now - self._last < self.every:
            return
        self._last = now
        for rel, size in sorted(self.listing().items()):
            if rel in self.puller.pulled or rel in self.puller.rejected:
                continue
            stable = size > 0 and self.sizes.get(rel) == size
            if stable and self.puller.pull(rel, self.puller.run.path / SAMPLES):
                local = self.puller.run.path / self.puller.pulled[rel].path
                self.reporter.info(f"sample image: {local}")
            self.sizes[rel] = size
