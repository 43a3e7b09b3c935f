"""What the follower watches beside the log (see ``FollowHook`` in follow.py):

- :class:`GpuWatch` reads the GPU samples the host takes next to the job (``gpu.log``, from
  templates/remote/gpu_sample.sh.j2), keeps their summary in the record, and once there is
  enough evidence says whether the run is slow and why (kohyawrap/slowrun.py);
- :class:`StatePuller` (``--pull-state``) pulls each training state as soon as training has moved
  past it, so a host that dies loses at most one save interval.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kohyawrap.clock import Clock
from kohyawrap.hosts.base import Host, sh
from kohyawrap.launcher.fetch import Puller
from kohyawrap.models import CheckpointSaved, Event, Progress
from kohyawrap.names import local_file_name, remote_name_problem
from kohyawrap.slowrun import (
    GpuLog,
    Speed,
    enough_evidence,
    measured,
    parse_gpu_log,
    slow_run_findings,
)

if TYPE_CHECKING:
    from kohyawrap.launcher.follow import Follower, FollowHook
    from kohyawrap.launcher.manifest import RunManifest
    from kohyawrap.launcher.runplan import RunPlan
    from kohyawrap.launcher.runstore import RunDir

GPU_LOG = "gpu.log"
GPU_TAIL_BYTES = 32_000  # the last few minutes of samples
LISTING_BYTES = 1 << 20  # of state file names from the host (a few hundred names at most)
_DEVICE = re.compile(rb"accelerator device: (\w+)")


class GpuWatch:
    """GPU use from the host's samples, and the slow-run verdict (given once)."""

    def __init__(
        self, host: Host, run_dir: str, clock: Clock, plan: RunPlan, *, sampled: bool
    ) -> None:
        self.host = host
        self.sampled = sampled  # the host has nvidia-smi: wait for its samples
        self.path = posixpath.join(run_dir, GPU_LOG)
        self.clock = clock
        self.estimated = plan.estimate.seconds_per_step
        self.settings = dict(plan.rendered.settings)
        self.planned_cpu = "--cpu" in plan.rendered.accelerate_args
        self.device: str | None = None
        self.judged = False
        self._last_read: float | None = None

    def after_poll(self, follower: Follower, events: Sequence[Event], ended: bool) -> None:
        if ended:
            return
        if self.device is None:
            found = _DEVICE.search(bytes(follower.tail))
            self.device = found[1].decode() if found else None
        now = self.clock.monotonic()
        every = min(15.0, 5 * follower.poll)
        if self._last_read is not None and now - self._last_read < every:
            return
        self._last_read = now
        gpu = self._read()
        follower.measured.update(measured(gpu))
        self._judge(follower, gpu)

    def _read(self) -> GpuLog:
        st = self.host.stat(self.path)
        if st is None:
            return GpuLog()
        data = self.host.read_from(self.path, max(0, st.size - GPU_TAIL_BYTES), GPU_TAIL_BYTES)
        return parse_gpu_log(data.decode("utf-8", "replace"))

    def _judge(self, follower: Follower, gpu: GpuLog) -> None:
        p = follower.last_progress
        if self.judged or p is None or not p.sec_per_it:
            return
        speed = Speed(p.sec_per_it, self.estimated, p.step - follower.step_offset)
        if not enough_evidence(speed, gpu, sampled=self.sampled):
            return
        self.judged = True
        follower.measured["s_per_step_estimated"] = self.estimated
        for finding in slow_run_findings(
            speed, gpu, self.settings, device=self.device, planned_cpu=self.planned_cpu
        ):
            follower.note_finding(finding)


class StatePuller:
    """Pulls each new ``--save_state`` folder once training has moved past it."""

    def __init__(self, host: Host, run: RunDir, run_dir: str, puller: Puller) -> None:
        self.host = host
        self.run = run
        self.run_dir = run_dir
        self.puller = puller
        self.saving = False  # a checkpoint was saved: its state follows, before the next step

    def after_poll(self, follower: Follower, events: Sequence[Event], ended: bool) -> None:
        if ended:
            return  # the PULL stage takes the rest, the end state included
        ready = False
        for event in events:
            if isinstance(event, CheckpointSaved):
                self.saving = True
            elif isinstance(event, Progress) and self.saving:
                ready, self.saving = True, False
        if ready:
            self.pull_states()

    def pull_states(self) -> None:
        out = self.host.run(
            f"cd {sh(self.run_dir)} && {{ find output -mindepth 2 -maxdepth 2 -type f "
            f"-path 'output/*-state/*' -print0 2>/dev/null | head -c {LISTING_BYTES}; }}; true",
            check=False,
            timeout=120,
        ).stdout
        for rel in sorted(p for p in out.split("\0") if p):
            if rel not in self.puller.pulled:
                self.puller.pull(rel, self.run.checkpoints / self._local(rel.split("/")[1]))

    def _local(self, folder: str) -> str:
        # The same local name the PULL stage gives a state folder (fetch.pull_outputs).
        if remote_name_problem(folder) is not None:
            return "_"
        return local_file_name(folder, windows=self.puller.windows)


def hooks_for(
    m: RunManifest, host: Host, run: RunDir, puller: Puller, clock: Clock
) -> tuple[FollowHook, ...]:
    """The watchers a leg's follower runs: GPU use always, states with ``--pull-state``."""
    plan = m.plan
    sampled = bool(m.host.facts.get("nvidia_smi"))
    hooks: list[FollowHook] = [GpuWatch(host, plan.layout.run_dir, clock, plan, sampled=sampled)]
    if plan.pull_state:
        hooks.append(StatePuller(host, run, plan.layout.run_dir, puller))
    return tuple(hooks)
