"""Every GPU of the box: steps with N processes (sd-scripts' and accelerate's own arithmetic),
the GPU facts read from nvidia-smi (a fake one on PATH reporting two GPUs: the only stand-in,
for hardware that cannot exist here), the chooser, and the plan of a job across GPUs."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kohyawrap.dataset.buckets import TrainingLength, batches_per_process, count_training_steps
from kohyawrap.dataset.scan import read_training_dir
from kohyawrap.errors import HostError, UsageError
from kohyawrap.forecast import build_forecast
from kohyawrap.hosts.facts import HostFacts, parse_facts, read_facts
from kohyawrap.hosts.local import LocalHost
from kohyawrap.launcher.gpus import GpuRequest, choose_gpus, parse_gpus
from kohyawrap.launcher.request import TrainRequest, build_run_plan
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.models import RunSpec
from kohyawrap.presets import load_catalog
from tests.test_forecast import make_dataset

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)
UUID0 = "GPU-0b7e4c9a-1111-2222-3333-444455556666"
UUID1 = "GPU-9f3d2e1c-aaaa-bbbb-cccc-ddddeeeeffff"

# ---------------------------------------------------------------------------------------------
# sd-scripts' arithmetic, transcribed from the pinned sources (docs/scale.md cites the lines):
# accelerate 1.6.0 data_loader.py BatchSamplerShard.__len__ (split_batches=False, the default
# even_batches=True, DataLoader drop_last=False), and train_network.py @48d368fa lines 799-802
# (max_train_steps from epochs, with len(train_dataloader) taken BEFORE accelerator.prepare) and
# 978-979 (epochs from steps, with the prepared, per-process dataloader).


def shard_len(batches: int, processes: int) -> int:
    if batches % processes == 0:
        return batches // processes
    return batches // processes + 1  # even_batches: the last round is topped up


def sd_scripts_steps(batches: int, processes: int, accumulation: int, epochs: int | None,
                     max_train_steps: int = 1600) -> tuple[int, int]:  # fmt: skip
    steps = max_train_steps
    if epochs is not None:
        steps = epochs * math.ceil(batches / processes / accumulation)
    per_epoch = math.ceil(shard_len(batches, processes) / accumulation)
    return steps, math.ceil(steps / per_epoch)


@pytest.mark.parametrize("processes", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("accumulation", [1, 2, 3])
def test_steps_with_n_processes_are_sd_scripts_own(processes: int, accumulation: int) -> None:
    for batches in range(1, 60):
        for epochs in (None, 1, 2, 7):
            length = TrainingLength(
                max_train_epochs=epochs, gradient_accumulation_steps=accumulation,
                processes=processes,
            )  # fmt: skip
            count = count_training_steps(batches, length)
            expected = sd_scripts_steps(batches, processes, accumulation, epochs)
            assert (count.total_steps, count.epochs) == expected, (batches, epochs)
        assert batches_per_process(batches, processes) == shard_len(batches, processes)


def test_worked_by_hand() -> None:
    # 10 batches over 4 GPUs: accelerate deals 3, 3, 2, 2 and tops the last round up -> 3 each.
    assert batches_per_process(10, 4) == 3
    two_epochs = count_training_steps(10, TrainingLength(max_train_epochs=2, processes=4))
    assert (two_epochs.total_steps, two_epochs.epochs) == (6, 2)  # 2 x ceil(10/4)
    # A step budget stays the budget; each epoch is shorter, so there are more of them.
    budget = count_training_steps(10, TrainingLength(max_train_steps=30, processes=4))
    assert (budget.total_steps, budget.epochs) == (30, 10)
    one_gpu = count_training_steps(10, TrainingLength(max_train_steps=30))
    assert (one_gpu.total_steps, one_gpu.epochs) == (30, 3)


# ---------------------------------------------------------------------------------------------
# The host's GPUs


def fake_nvidia_smi(folder: Path, *, busy: bool = True) -> Path:
    """A stand-in ``nvidia-smi`` answering the queries kohyawrap makes: two RTX 4090s, GPU 0
    running another user's python (20 GB) when ``busy``."""
    folder.mkdir(parents=True, exist_ok=True)
    used0, free0 = (20480, 3784) if busy else (2, 24262)
    apps = f"{UUID0}, 4242, 20480, /usr/bin/python3 other_job.py\n" if busy else ""
    script = folder / "nvidia-smi"
    script.write_text(
        f"""#!/usr/bin/env bash
case "$*" in
  *--query-gpu=name,memory.total,driver_version*)
    printf '%s\\n' 'NVIDIA GeForce RTX 4090, 24564, 550.54.14' 'NVIDIA GeForce RTX 4090, 24564, 550.54.14' ;;
  *--query-gpu=index,uuid,memory.used,memory.free*)
    printf '%s\\n' '0, {UUID0}, {used0}, {free0}' '1, {UUID1}, 2, 24262' ;;
  *--query-compute-apps=*)
    printf '%s' '{apps}' ;;
  *)
    echo '| NVIDIA-SMI 550.54.14    Driver Version: 550.54.14    CUDA Version: 12.4 |' ;;
esac
"""
    )
    script.chmod(0o755)
    return folder


@pytest.fixture
def two_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HostFacts:
    """This machine's facts, read by the real probe, with the fake nvidia-smi first on PATH."""
    bin_dir = fake_nvidia_smi(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return read_facts(LocalHost(), str(tmp_path / "work"), probe_torch=False)


def test_the_probe_reads_index_memory_and_processes_of_each_gpu(two_gpus: HostFacts) -> None:
    gpu0, gpu1 = two_gpus.gpus
    assert (gpu0.index, gpu0.uuid, gpu0.memory_free_mib) == (0, UUID0, 3784)
    assert (gpu1.index, gpu1.uuid, gpu1.memory_free_mib, gpu1.processes) == (1, UUID1, 24262, ())
    assert [(p.pid, p.used_mib, p.name) for p in gpu0.processes] == [
        (4242, 20480, "/usr/bin/python3 other_job.py")
    ]
    assert any("GPU 0 is in use: 1 process(es)" in n for n in two_gpus.notes())
    # The record keeps all of it.
    assert HostFacts.from_json(json.loads(json.dumps(two_gpus.to_json()))) == two_gpus


def test_facts_without_the_new_queries_still_parse() -> None:
    facts = parse_facts("NVIDIA_SMI=yes\nGPU=Tesla T4, 15360, 535.183.01\n", label="h")
    assert facts.gpus[0].index is None and facts.gpus[0].processes == ()
    assert choose_gpus(GpuRequest(count=1), facts.gpus).devices == (0,)


def test_one_job_is_pinned_to_the_free_gpu(two_gpus: HostFacts) -> None:
    chosen = choose_gpus(GpuRequest(count=1), two_gpus.gpus)
    assert chosen.devices == (1,) and chosen.visible == UUID1
    assert "most free memory" in chosen.basis and "1 busy GPU(s) left alone" in chosen.basis


def test_too_few_free_gpus_are_refused_with_every_gpus_state(two_gpus: HostFacts) -> None:
    with pytest.raises(HostError) as err:
        choose_gpus(GpuRequest(count=2, multi=True), two_gpus.gpus)
    assert "1 of the host's 2 GPU(s) are free" in err.value.message
    assert any("other_job.py (pid 4242)" in line for line in err.value.evidence)


def test_a_named_busy_gpu_needs_force(two_gpus: HostFacts) -> None:
    with pytest.raises(HostError, match="in use by other processes"):
        choose_gpus(GpuRequest(devices=(0,)), two_gpus.gpus)
    assert choose_gpus(GpuRequest(devices=(0,)), two_gpus.gpus, force=True).devices == (0,)
    with pytest.raises(HostError, match="has no GPU 5"):
        choose_gpus(GpuRequest(devices=(5,)), two_gpus.gpus)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("all", (None, True, ())), ("2", (2, False, ())), ("device=1", (None, False, (1,))),
     ("device=0, 2", (None, False, (0, 2)))],
)  # fmt: skip
def test_gpus_values(text: str, parsed: tuple) -> None:
    assert parse_gpus(text) == parsed


@pytest.mark.parametrize("text", ["0", "-1", "device=", "device=0,0", "gpu=1", "two", "1,2"])
def test_bad_gpus_values_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="not a GPU selection"):
        parse_gpus(text)


def request(dataset: Path, gpus: GpuRequest, **spec: object) -> TrainRequest:
    return TrainRequest(
        spec=RunSpec(gpu="auto", model="sd15", base_model="org/model", output_name="柴犬",
                     overrides=(("max_train_epochs", 4),), **spec),  # type: ignore[arg-type]
        dataset=dataset,
        gpus=gpus,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        (GpuRequest(count=2), "without --multi-gpu trains on one GPU"),
        (GpuRequest(every=True), "without --multi-gpu trains on one GPU"),
        (GpuRequest(devices=(0, 1)), "without --multi-gpu trains on one GPU"),
        (GpuRequest(count=1, scale_lr=True), "--scale-lr multiplies"),
    ],
)
def test_selections_that_are_not_one_job_are_refused_before_connecting(
    tmp_path: Path, gpus: GpuRequest, message: str
) -> None:
    from kohyawrap.launcher.request import check_request

    with pytest.raises(UsageError, match=message):
        check_request(request(make_dataset(tmp_path / "data"), gpus))


def plan_on(dataset: Path, facts: HostFacts, gpus: GpuRequest) -> RunPlan:
    return build_run_plan(request(dataset, gpus), target="root@box", home="/root", now=NOW,
                          facts=facts)  # fmt: skip


def test_a_job_across_both_gpus_is_planned_with_sd_scripts_arithmetic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", busy=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    facts = read_facts(LocalHost(), str(tmp_path / "work"), probe_torch=False)
    dataset = make_dataset(tmp_path / "数据")
    one = plan_on(dataset, facts, GpuRequest())
    both = plan_on(dataset, facts, GpuRequest(every=True, multi=True))
    assert both.gpus.devices == (0, 1) and both.gpus.visible == f"{UUID0},{UUID1}"
    assert both.spec.processes == 2 and one.spec.processes == 1
    assert both.rendered.accelerate_args[:5] == (
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    )  # fmt: skip
    assert "--multi_gpu" not in one.rendered.accelerate_args
    assert "--multi_gpu --num_processes 2" in both.rendered.files["launch.sh"]
    # The steps: the same dataset and epochs; each process takes half of every epoch's batches.
    tdir = read_training_dir(dataset)
    single = build_forecast(one.spec, tdir).steps
    double = build_forecast(both.spec, tdir).steps
    assert double.batches_per_epoch == single.batches_per_epoch
    assert double.batches_per_process == math.ceil(single.batches_per_epoch / 2)
    assert double.effective_batch_size == 2 * single.batch_size
    assert both.estimate.steps == double.total_steps == 4 * math.ceil(single.batches_per_epoch / 2)
    assert one.estimate.steps == single.total_steps == 4 * single.batches_per_epoch
    # Two cards rented: twice the typical price; the learning rate left as it was.
    assert both.estimate.price_per_hour == pytest.approx(2 * one.estimate.price_per_hour)
    assert both.rendered.settings["learning_rate"] == one.rendered.settings["learning_rate"]
    assert any("2 processes (one per GPU)" in n for n in both.estimate.notes)
    # The record round-trips, and a plan that uses no GPU selection records none.
    assert RunPlan.from_json(json.loads(json.dumps(both.to_json()))) == both
    assert "gpus" not in one.to_json() and "processes" not in one.to_json()["spec"]


def test_scale_lr_multiplies_the_learning_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", busy=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    facts = read_facts(LocalHost(), str(tmp_path / "work"), probe_torch=False)
    dataset = make_dataset(tmp_path / "data")
    plain = plan_on(dataset, facts, GpuRequest(every=True, multi=True))
    scaled = plan_on(dataset, facts, GpuRequest(every=True, multi=True, scale_lr=True))
    for key in ("learning_rate", "unet_lr", "text_encoder_lr"):
        if key in plain.rendered.settings:
            assert scaled.rendered.settings[key] == pytest.approx(2 * plain.rendered.settings[key])
    assert "learning_rate" in scaled.rendered.settings
    assert scaled.rendered.inputs_hash != plain.rendered.inputs_hash


def test_a_pinned_job_on_a_busy_box_uses_the_free_card(two_gpus: HostFacts, tmp_path: Path) -> None:
    plan = plan_on(make_dataset(tmp_path / "data"), two_gpus, GpuRequest(count=1))
    assert plan.gpus.devices == (1,) and plan.spec.processes == 1
    assert plan.spec.gpu == "rtx4090"  # --gpu auto read from the chosen card


def test_not_enough_free_memory_on_a_named_gpu_is_refused(
    two_gpus: HostFacts, tmp_path: Path
) -> None:
    dataset = make_dataset(tmp_path / "data")
    with pytest.raises(HostError, match="more than is free now"):
        # GPU 0 has 3.7 GB free next to the other job: named and shared (--force skips both).
        build_run_plan(
            request(dataset, GpuRequest(devices=(0,))), target="root@box", home="/root",
            now=NOW, facts=_forced_busy(two_gpus),
        )  # fmt: skip


def _forced_busy(facts: HostFacts) -> HostFacts:
    """The same facts with GPU 0's process gone but its memory still taken (a leak, say)."""
    from dataclasses import replace

    gpu0, gpu1 = facts.gpus
    return replace(facts, gpus=(replace(gpu0, processes=()), gpu1))


def test_cpu_runs_cannot_be_multi_gpu() -> None:
    from kohyawrap.render import accelerate_args

    with pytest.raises(UsageError, match="needs GPUs"):
        accelerate_args("no", cpu=True, processes=2)
    assert accelerate_args("bf16", cpu=False, processes=4, machines=2)[:5] == (
        "--multi_gpu", "--num_processes", "4", "--num_machines", "2",
    )  # fmt: skip
    assert load_catalog().gpu("rtx4090").price_per_hour > 0


def test_hosts_check_lists_each_gpu_with_its_index_free_memory_and_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fixtures.cli import run_cli

    bin_dir = fake_nvidia_smi(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("COLUMNS", "200")
    code, text = run_cli(["hosts", "check", "local", "--no-torch"], capsys)
    assert code == 0, text
    assert "0: NVIDIA GeForce RTX 4090 (24 GiB, 3.7 GiB free, 1 other process(es))" in text
    assert "1: NVIDIA GeForce RTX 4090 (24 GiB, 23.7 GiB free)" in text
    code, data = run_cli(["hosts", "check", "local", "--no-torch", "--json"], capsys)
    gpus = json.loads(data[data.index("{") :])["gpus"]
    assert [g["index"] for g in gpus] == [0, 1] and gpus[0]["processes"][0]["pid"] == 4242
