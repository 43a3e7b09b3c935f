"""Install failures and their fixes (kohyawrap/launcher/installfail.py), on installer output in
pip's and uv's own words (the pip lines are what pip 24 prints; the torch one is checked
against a real pip in tests/test_resume_e2e.py)."""

from __future__ import annotations

import pytest

from kohyawrap.launcher.installfail import diagnose_install, torch_spec_for
from kohyawrap.launcher.runplan import DEFAULT_TORCH

PIP_DISK = """\
Collecting nvidia-cudnn-cu12==9.1.0.70
  Downloading nvidia_cudnn_cu12-9.1.0.70-py3-none-manylinux2014_x86_64.whl (664.8 MB)
ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device
"""
UV_DISK = "error: Failed to unpack: torch\n  Caused by: No space left on device (os error 28)\n"
PIP_NO_TORCH = """\
Looking in indexes: https://download.pytorch.org/whl/cu124
ERROR: Could not find a version that satisfies the requirement torch==2.6.0 (from versions: none)
ERROR: No matching distribution found for torch==2.6.0
"""
UV_NO_TORCH = """\
  x No solution found when resolving dependencies:
  `-> Because torch==2.6.0 has no wheels with a matching Python ABI tag (e.g. `cp314`) and you
      require torch==2.6.0, we can conclude that your requirements are unsatisfiable.
"""
BNB = (
    "OSError: libbitsandbytes_cuda124.so: cannot open shared object file: No such file or"
    " directory\n"
)
NETWORK = (
    "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(': Failed"
    " to establish a new connection: [Errno 101] Network is unreachable')'\n"
)


@pytest.mark.parametrize(
    ("output", "kind"),
    [(PIP_DISK, "disk"), (UV_DISK, "disk"), (PIP_NO_TORCH, "torch"), (UV_NO_TORCH, "torch"),
     (BNB, "bitsandbytes"), (NETWORK, "network")],
)  # fmt: skip
def test_each_failure_is_recognised(output: str, kind: str) -> None:
    problem = diagnose_install(output.splitlines())
    assert problem is not None and problem.kind == kind


def test_unknown_output_gives_no_diagnosis() -> None:
    assert diagnose_install(["ERROR: something else entirely"]) is None


def test_disk_full_says_how_much_and_where() -> None:
    problem = diagnose_install(PIP_DISK.splitlines())
    assert problem is not None
    assert "~6 GB" in problem.hint and "Vast's default of 8 GB" in problem.hint


def test_torch_wheels_newer_than_the_driver_get_the_spec_that_fits() -> None:
    problem = diagnose_install(PIP_NO_TORCH.splitlines(), driver_cuda="12.2")
    assert problem is not None
    assert "built for CUDA 12.4, but the driver supports CUDA 12.2" in problem.hint
    assert "--torch-spec 'torch==2.5.1 torchvision==0.20.1 --index-url" in problem.hint
    assert problem.hint.endswith("/whl/cu121'")


def test_a_driver_that_fits_points_at_python_or_the_platform() -> None:
    problem = diagnose_install(UV_NO_TORCH.splitlines(), driver_cuda="12.8")
    assert problem is not None
    assert "matches this host's Python or platform" in problem.hint
    assert "--python python3.11" in problem.hint


def test_a_driver_too_old_for_any_torch() -> None:
    problem = diagnose_install(PIP_NO_TORCH.splitlines(), driver_cuda="11.4")
    assert problem is not None and "rent a host with a newer driver" in problem.hint


@pytest.mark.parametrize(
    ("cuda", "tag"),
    [("12.9", "cu128"), ("12.8", "cu128"), ("12.4", "cu124"), ("12.6", "cu124"), ("12.2", "cu121"),
     ("12.0", "cu118"), ("11.8", "cu118"), ("11.7", None), (None, None), ("n/a", None)],
)  # fmt: skip
def test_torch_spec_for_a_driver(cuda: str | None, tag: str | None) -> None:
    spec = torch_spec_for(cuda)
    assert (spec.rsplit("/", 1)[-1] if spec else None) == tag
    if tag == "cu124":
        assert spec == DEFAULT_TORCH
