"""The queue's plan arithmetic (kohyawrap/launcher/queueplan.py): where each job goes, the queue's
time and dollars, and the saving against separate sessions; the slots of a host from its GPUs.
Numbers are worked by hand from literals; one job's times come from a real plan."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from kohyawrap.errors import HostError
from kohyawrap.hosts.facts import Gpu, GpuProcess
from kohyawrap.launcher.gpus import GpuAssignment, GpuRequest
from kohyawrap.launcher.queueplan import (
    HostSlots,
    JobTimes,
    job_times,
    schedule,
    slots_for,
    weakest,
)
from kohyawrap.launcher.request import TrainRequest, build_run_plan
from kohyawrap.models import RunSpec
from tests.test_forecast import make_dataset

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)


def job(name: str, model: str = "m", *, cold: float = 1000, warm: float = 600,
        download: float = 300, price: float = 0.36) -> JobTimes:  # fmt: skip
    return JobTimes(name, cold, warm, download, (model,), price)


def host(target: str = "box", slots: int = 1, price: float = 0.36) -> HostSlots:
    return HostSlots(target, tuple(f"GPU {i}" for i in range(slots)), price)


def test_one_slot_pays_the_set_up_once() -> None:
    # install = 1000 - 600 - 300 = 100 s, paid once; the model's 300 s once; then warm jobs.
    est = schedule([job("a"), job("b"), job("c")], [host()])
    assert [(p.start, p.end) for p in est.placements] == [(400, 1000), (1000, 1600), (1600, 2200)]
    assert est.seconds == 2200 == 1000 + 600 + 600  # the first cold, the others warm
    assert est.separate_seconds == 3000
    assert est.saving_seconds == 800  # two installs and two downloads
    assert est.dollars == pytest.approx(0.36 * 2200 / 3600, abs=1e-4)
    assert est.separate_dollars == pytest.approx(0.36 * 3000 / 3600)
    assert est.saving_dollars == pytest.approx(0.36 * 800 / 3600, abs=1e-4)


def test_each_model_is_downloaded_once_per_host() -> None:
    est = schedule([job("a"), job("b", "other"), job("c"), job("d", "other")], [host()])
    # b brings a model of its own: downloaded (300 s) while a trains, since jobs are prepared
    # one after another as soon as the host is set up; c and d reuse what is there.
    assert [(p.start, p.end) for p in est.placements] == [
        (400, 1000), (1000, 1600), (1600, 2200), (2200, 2800)
    ]  # fmt: skip
    slow = schedule([job("a", cold=500, warm=100), job("b", "other", cold=500, warm=100)], [host()])
    # a trains for less than b's download takes: b waits for its model.
    assert [(p.start, p.end) for p in slow.placements] == [(400, 500), (700, 800)]


def test_two_gpus_run_two_jobs_at_a_time() -> None:
    est = schedule([job("a"), job("b"), job("c")], [host(slots=2, price=0.72)])
    assert [(p.slot, p.start, p.end) for p in est.placements] == [
        (0, 400, 1000), (1, 400, 1000), (0, 1000, 1600)
    ]  # fmt: skip
    assert est.seconds == 1600
    # The box is paid for both GPUs until its last job ends (GPU 1 idles the last 600 s).
    assert est.dollars == pytest.approx(0.72 * 1600 / 3600, abs=1e-4)
    assert est.separate_dollars == pytest.approx(0.36 * 3000 / 3600)


def test_a_pool_sets_up_each_host_and_places_each_job_where_it_starts_first() -> None:
    est = schedule([job("a"), job("b"), job("c")], [host("a", price=0.3), host("b", price=0.5)])
    assert [(p.host, p.start, p.end) for p in est.placements] == [
        (0, 400, 1000), (1, 400, 1000), (0, 1000, 1600)
    ]  # fmt: skip
    assert est.host_seconds == (1600, 1000)
    assert est.seconds == 1600, "the hosts work at the same time"
    assert est.dollars == pytest.approx((0.3 * 1600 + 0.5 * 1000) / 3600, abs=1e-4)


def test_nothing_is_negative_when_the_set_up_is_already_there() -> None:
    # A pre-installed sd-scripts: cold == warm, nothing to download.
    same = job("a", cold=600, warm=600, download=0)
    assert same.install_seconds == 0.0
    est = schedule([same, job("b", cold=600, warm=600, download=0)], [host()])
    assert est.seconds == 1200 and est.saving_seconds == 0 and est.saving_dollars == 0


def test_job_times_come_from_the_jobs_own_plan(tmp_path: Path) -> None:
    request = TrainRequest(
        spec=RunSpec(gpu="rtx4090", model="sdxl", base_model="", output_name="柴犬",
                     overrides=(("max_train_epochs", 4),)),
        dataset=make_dataset(tmp_path / "数据"),
    )  # fmt: skip
    plan = build_run_plan(request, target="root@box", home="/root", now=NOW)
    times = job_times(plan)
    assert times.name == "柴犬"
    assert times.cold_seconds > times.warm_seconds > plan.estimate.train_seconds
    assert times.download_seconds > 0 and times.install_seconds > 0
    assert times.models == tuple(sorted(f.remote_path for f in plan.model_files))
    assert times.price_per_hour == plan.estimate.price_per_hour
    cold = times.cold_seconds
    assert cold == pytest.approx(
        plan.estimate.setup_seconds + plan.estimate.train_seconds, rel=1e-3
    )


# ---------------------------------------------------------------------------------------------
# Slots: one per GPU


def gpu(index: int, free: int = 24000, busy: bool = False, memory: int = 24564) -> Gpu:
    procs = (GpuProcess(pid=4242, used_mib=20000, name="other.py"),) if busy else ()
    return Gpu("NVIDIA GeForce RTX 4090", memory, "550", index=index, uuid=f"GPU-{index}",
               memory_free_mib=free, processes=procs)  # fmt: skip


def test_a_host_with_one_gpu_or_none_is_one_slot() -> None:
    assert slots_for((), GpuRequest(), force=False) == (GpuAssignment(),)
    assert slots_for((gpu(0),), GpuRequest(), force=False) == (GpuAssignment(),)


def test_every_idle_gpu_is_a_slot_and_busy_ones_are_left_alone() -> None:
    slots = slots_for((gpu(0), gpu(1), gpu(2, busy=True)), GpuRequest(), force=False)
    assert [(s.devices, s.visible) for s in slots] == [((0,), "GPU-0"), ((1,), "GPU-1")]
    assert "1 busy GPU(s) left alone" in slots[0].basis


def test_no_idle_gpu_is_refused_unless_forced() -> None:
    busy = (gpu(0, busy=True), gpu(1, busy=True))
    with pytest.raises(HostError, match="0 of the host's 2 GPU"):
        slots_for(busy, GpuRequest(), force=False)
    assert [s.devices for s in slots_for(busy, GpuRequest(), force=True)] == [(0,), (1,)]


def test_gpus_chooses_which_gpus_are_slots() -> None:
    gpus = (gpu(0, free=9000), gpu(1), gpu(2))
    assert [s.devices for s in slots_for(gpus, GpuRequest(count=1), force=False)] == [(1,)]
    assert [s.devices for s in slots_for(gpus, GpuRequest(devices=(0, 2)), force=False)] == [
        (0,), (2,)
    ]  # fmt: skip
    with pytest.raises(HostError, match="in use by other processes"):
        slots_for((gpu(0, busy=True), gpu(1)), GpuRequest(devices=(0,)), force=False)


def test_a_job_is_planned_for_the_smallest_slot_gpu() -> None:
    small = Gpu("NVIDIA GeForce RTX 3060", 12288, "550", index=1, uuid="GPU-1")
    gpus = (gpu(0), small, gpu(2))
    slots = slots_for(gpus, GpuRequest(devices=(0, 2)), force=False)
    assert weakest(gpus, slots)[0].index == 0, "the 3060 is not a slot"
    assert weakest(gpus, ())[0].name.endswith("3060")
