"""What a grid did, as the run's manifest records it (``manifest.grid``).

The record keeps the grid's inputs (checkpoints, options, prompts, prompt defaults), so the exact
:class:`~kohyawrap.evaluate.gridplan.GridPlan` is rebuilt from it at any time, and what happened:
status, which calls ended how, images pulled, time and money.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kohyawrap.evaluate.gridplan import Checkpoint, GridPlan, build_grid
from kohyawrap.evaluate.options import GridOptions
from kohyawrap.evaluate.prompts import PromptDefaults

# planned: uploaded, not launched; running: launched on the host; done: every image arrived;
# partial: it ended with images missing; failed: nothing usable (see reason); stopped: a limit
# stopped it; skipped: not started (see reason).
STATUSES = ("planned", "running", "done", "partial", "failed", "stopped", "skipped")


@dataclass(frozen=True)
class GridRecord:
    """One grid of a run."""

    grid_id: str
    status: str
    options: GridOptions
    reason: str = ""  # why skipped, failed or stopped
    host: str = ""  # the host's label
    remote_dir: str = ""  # <run dir>/grid/<grid id> on that host
    run_dir: str = ""  # the run folder on that host (the generation's working directory)
    checkpoints: tuple[Checkpoint, ...] = ()
    prompts: tuple[str, ...] = ()
    defaults: PromptDefaults | None = None
    missing_epochs: tuple[int, ...] = ()  # listed epochs the run has no checkpoint of
    images: int = 0  # images planned
    pulled: int = 0  # images verified here
    done: tuple[str, ...] = ()  # checkpoint keys whose call ended well
    failed: dict[str, int] = field(default_factory=dict)  # checkpoint key -> exit code
    estimate_seconds: float = 0.0
    estimate_dollars: float = 0.0
    seconds: float | None = None  # by the host's clock, launch to end
    dollars: float | None = None
    exit_code: int | None = None
    log_offset: int = 0
    in_run: bool = False  # drawn by `train` before its finish action
    launched_at: float | None = None  # laptop clock

    @property
    def ended(self) -> bool:
        return self.status not in ("planned", "running")

    def plan(self) -> GridPlan | None:
        """The grid's calls and images, rebuilt from the record (None before it was planned)."""
        if self.defaults is None or not self.checkpoints:
            return None
        return build_grid(self.checkpoints, self.options, self.prompts, self.defaults)

    def with_changes(self, **changes: Any) -> GridRecord:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = self.options.to_json()
        data["checkpoints"] = [asdict(c) for c in self.checkpoints]
        data["prompts"] = list(self.prompts)
        data["missing_epochs"] = list(self.missing_epochs)
        data["done"] = list(self.done)
        return data

    @classmethod
    def from_json(cls, data: Any) -> GridRecord | None:
        """The inverse of :meth:`to_json` (None for a run recorded without a grid)."""
        if not isinstance(data, dict):
            return None
        values = dict(data)
        values["options"] = GridOptions.from_json(values.get("options"))
        values["checkpoints"] = tuple(Checkpoint(**c) for c in values.get("checkpoints") or ())
        values["prompts"] = tuple(str(p) for p in values.get("prompts") or ())
        defaults = values.get("defaults")
        values["defaults"] = PromptDefaults(**defaults) if isinstance(defaults, dict) else None
        values["missing_epochs"] = tuple(int(e) for e in values.get("missing_epochs") or ())
        values["done"] = tuple(str(k) for k in values.get("done") or ())
        values["failed"] = {str(k): int(v) for k, v in (values.get("failed") or {}).items()}
        return cls(**values)
