"""Host facts: parsing literal nvidia-smi output, the real probe on both hosts, `hosts check`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from kohyawrap.cli import cli, main
from kohyawrap.errors import HostError
from kohyawrap.hosts.base import Host
from kohyawrap.hosts.facts import Gpu, check_disk, parse_facts, parse_gpu, read_facts
from tests.fixtures.sshd import Sshd

SMI_HEADER = (
    "| NVIDIA-SMI 550.54.14              Driver Version: 550.54.14      CUDA Version: 12.4     |"
)

ONE_4090 = f"""\
OS=Ubuntu 22.04.4 LTS
KERNEL=Linux 5.15.0-105-generic
ARCH=x86_64
CPUS=32
MEM_KB=263852472
NVIDIA_SMI=yes
GPU=NVIDIA GeForce RTX 4090, 24564, 550.54.14
SMI_HEADER={SMI_HEADER}
DISK_DIR=/root
DISK_TOTAL_KB=104857600
DISK_FREE_KB=52428800
PYTHON=Python 3.10.12
GIT=git version 2.34.1
WORK_DIR=/root/kohyawrap
TORCH=2.1.2+cu121
TORCH_CUDA=True
"""


def test_one_rtx_4090() -> None:
    facts = parse_facts(ONE_4090, label="root@1.2.3.4:22022")
    assert facts.gpus == (Gpu("NVIDIA GeForce RTX 4090", 24564, "550.54.14"),)
    assert (facts.driver_version, facts.cuda_version) == ("550.54.14", "12.4")
    assert (facts.python_version, facts.git_version, facts.uv_version) == (
        "3.10.12",
        "2.34.1",
        None,
    )
    assert (facts.cpu_count, facts.memory_mib) == (32, 257668)
    assert facts.disk_free_bytes == 50 * 1024**3 and facts.disk_free_gb == pytest.approx(
        53.69, abs=0.01
    )
    assert (facts.torch_version, facts.torch_cuda) == ("2.1.2+cu121", True)
    assert facts.os == "Ubuntu 22.04.4 LTS"
    assert facts.notes() == []
    assert facts.to_json()["gpus"][0]["memory_mib"] == 24564


def test_eight_a100s_are_called_out() -> None:
    lines = "\n".join("GPU=NVIDIA A100-SXM4-80GB, 81920, 535.104.05" for _ in range(8))
    facts = parse_facts(f"NVIDIA_SMI=yes\n{lines}\nSMI_HEADER=| CUDA Version: 12.2 |\n", label="h")
    assert len(facts.gpus) == 8 and facts.cuda_version == "12.2"
    assert any(n.startswith("8 GPUs: a run trains on one unless") for n in facts.notes())


def test_gpu_lines() -> None:
    assert parse_gpu("Tesla T4, 15360, 535.183.01") == Gpu("Tesla T4", 15360, "535.183.01")
    # Names may hold commas; unknown memory is allowed.
    assert parse_gpu("NVIDIA H100 80GB HBM3, [N/A], 550.90.07") == Gpu(
        "NVIDIA H100 80GB HBM3", None, "550.90.07"
    )
    assert parse_gpu("Weird, Name, 24576, 545.23.08") == Gpu("Weird, Name", 24576, "545.23.08")
    failed = (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running."
    )
    assert parse_gpu(failed) is None
    facts = parse_facts(f"NVIDIA_SMI=yes\nGPU={failed}\n", label="h")
    assert facts.gpus == () and facts.driver_version is None
    assert any("couldn't communicate" in n for n in facts.notes())


def test_host_without_nvidia_smi() -> None:
    facts = parse_facts("OS=Debian GNU/Linux 12 (bookworm)\nPYTHON=Python 3.8.10\n", label="h")
    assert facts.gpus == () and facts.cuda_version is None and not facts.nvidia_smi
    notes = facts.notes()
    assert any("nvidia-smi not found" in n for n in notes)
    assert any("3.8.10" in n and "3.10" in n for n in notes)
    assert any("git not found" in n for n in notes)


def test_check_disk_reports_numbers() -> None:
    facts = parse_facts(ONE_4090, label="root@1.2.3.4:22022")
    check_disk(facts, 20)
    with pytest.raises(HostError) as info:
        check_disk(facts, 80)
    assert "53.7 GB free at /root" in str(info.value) and "80.0 GB needed" in str(info.value)


def test_read_facts_on_a_real_host(any_host: Host, tmp_path: Path) -> None:
    work = tmp_path / "kohyawrap"
    (work / "sd-scripts" / "abc123").mkdir(parents=True)
    (work / "venvs" / "fp-1").mkdir(parents=True)
    facts = read_facts(any_host, str(work), probe_torch=False)
    assert facts.label == any_host.label
    assert facts.gpus == () or facts.nvidia_smi
    assert facts.cpu_count == os.cpu_count()
    assert facts.work_dir == str(work) and facts.disk_path == str(work)
    assert facts.disk_free_bytes is not None and facts.disk_free_bytes > 0
    assert facts.python_version is not None and facts.git_version is not None
    assert (facts.sdscripts_checkouts, facts.venvs) == (("abc123",), ("fp-1",))
    # A work dir that does not exist yet: the disk is measured at its nearest existing parent.
    later = read_facts(any_host, str(tmp_path / "not" / "yet"), probe_torch=False)
    assert later.disk_path == str(tmp_path) and later.sdscripts_checkouts == ()


def _ssh_args(sshd: Sshd) -> list[str]:
    return [
        sshd.target, "-p", str(sshd.port), "-i", str(sshd.key_path),
        "--known-hosts", str(sshd.known_hosts), "--ssh-config", str(sshd.ssh_config),
    ]  # fmt: skip


def test_hosts_check_json_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "work" / "sd-scripts" / "deadbeef").mkdir(parents=True)
    args = [
        "hosts",
        "check",
        *_ssh_args(sshd),
        "--work-dir",
        str(tmp_path / "work"),
        "--no-torch",
        "--json",
    ]
    result = CliRunner().invoke(cli, args, env={"XDG_DATA_HOME": str(tmp_path / "data")})
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["label"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
    assert data["gpus"] == [] and data["sdscripts_checkouts"] == ["deadbeef"]
    assert data["disk_free_gb"] > 0 and data["cpu_count"] == os.cpu_count()


def test_hosts_check_refuses_then_trusts_a_new_host(
    sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    args = _ssh_args(sshd)
    args[args.index("--known-hosts") + 1] = str(empty)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # where the trusted key is recorded
    with pytest.raises(SystemExit) as info:
        main(["hosts", "check", *args, "--no-torch"])
    assert info.value.code == 3
    assert "not a known host" in capsys.readouterr().err
    main(["hosts", "check", *args, "--no-torch", "--trust-new-host"])
    assert "python3" in capsys.readouterr().out
    assert (
        f"[127.0.0.1]:{sshd.port}" in (tmp_path / "data" / "kohyawrap" / "known_hosts").read_text()
    )
