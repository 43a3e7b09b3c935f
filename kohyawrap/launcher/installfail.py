"""Why building sd-scripts' environment failed, from the installer's output, and the fix.

Pure: the last lines pip or uv printed (and the driver's CUDA version when known) in, a
:class:`InstallProblem` out. The set-up stage shows it as the hint of its error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from kohyawrap.launcher.runplan import DEFAULT_TORCH

# The newest torch build each CUDA runtime line offers (a driver runs wheels built for its own
# CUDA version or older), newest first. Version pairs as PyTorch's "previous versions" install
# commands give them; cu124 is sd-scripts' tested pair (its README, the default --torch-spec).
TORCH_BY_CUDA: tuple[tuple[tuple[int, int], str], ...] = (
    (
        (12, 8),
        "torch==2.7.0 torchvision==0.22.0 --index-url https://download.pytorch.org/whl/cu128",
    ),
    ((12, 4), DEFAULT_TORCH),
    (
        (12, 1),
        "torch==2.5.1 torchvision==0.20.1 --index-url https://download.pytorch.org/whl/cu121",
    ),
    (
        (11, 8),
        "torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu118",
    ),
)

_DISK = re.compile(r"No space left on device|os error 28|\[Errno 28\]|Disk quota exceeded")
_TORCH_MISSING = re.compile(
    r"(?:Could not find a version that satisfies the requirement|No matching distribution found"
    r" for) (?P<pip>torch(?:vision|audio)?)\b"
    r"|Because (?:there is no version of )?(?P<uv>torch(?:vision|audio)?)\W.*"
    r"(?:was not found|has no wheels|no version|cannot be used)"
)
_BNB = re.compile(
    r"libbitsandbytes_cuda\d*\S*\.so|compiled without GPU support|CUDA Setup failed despite GPU"
    r"|Could not load bitsandbytes native library"
)
_NETWORK = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution|Could not fetch URL"
    r"|Connection reset by peer|Read timed out|error sending request|dns error"
)
_CUDA_TAG = re.compile(r"/whl/cu(\d+)(\d)\b")


@dataclass(frozen=True)
class InstallProblem:
    """What went wrong while installing, and what to do about it."""

    kind: str  # disk | torch | bitsandbytes | network
    message: str
    hint: str


def _version(text: str | None) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m[1]), int(m[2])) if m else None


def torch_spec_for(driver_cuda: str | None) -> str | None:
    """The --torch-spec whose wheels a driver with this CUDA version runs (None: too old)."""
    cuda = _version(driver_cuda)
    if cuda is None:
        return None
    return next((spec for floor, spec in TORCH_BY_CUDA if cuda >= floor), None)


def _wheel_cuda(torch_spec: str) -> tuple[int, int] | None:
    m = _CUDA_TAG.search(torch_spec)
    return (int(m[1]), int(m[2])) if m else None


def _torch_hint(torch_spec: str, driver_cuda: str | None) -> str:
    wanted, driver = _wheel_cuda(torch_spec), _version(driver_cuda)
    fitting = torch_spec_for(driver_cuda)
    if driver is not None and fitting is None:
        return (
            f"the host's driver supports CUDA {driver_cuda}, older than any torch sd-scripts runs "
            "with (CUDA 11.8 or newer): rent a host with a newer driver"
        )
    if driver is not None and wanted is not None and wanted > driver:
        return (
            f"these wheels are built for CUDA {wanted[0]}.{wanted[1]}, but the driver supports "
            f"CUDA {driver_cuda}: use --torch-spec '{fitting}'"
        )
    where = f" (the driver supports CUDA {driver_cuda}: '{fitting}' fits it)" if fitting else ""
    return (
        f"no wheel of '{torch_spec}' matches this host's Python or platform{where}: try "
        "--python python3.11 (torch wheels exist for CPython 3.9-3.13), or another torch version "
        "with --torch-spec; `kohyawrap hosts check` shows the host's CUDA and Python"
    )


def diagnose_install(
    lines: Sequence[str], *, torch_spec: str = DEFAULT_TORCH, driver_cuda: str | None = None
) -> InstallProblem | None:
    """The problem the installer's last ``lines`` show, or None when none is recognised."""
    text = "\n".join(lines)
    if _DISK.search(text):
        return InstallProblem(
            "disk",
            "the host's disk filled up during the install",
            "torch and its CUDA wheels need ~6 GB unpacked (plus pip's cache): free space on the "
            "host (old venvs under the work dir, ~/.cache/pip), or rent a larger disk; 40 GB or "
            "more is safe for SDXL (Vast's default of 8 GB is not, docs/sources.md [64])",
        )
    if _BNB.search(text):
        return InstallProblem(
            "bitsandbytes",
            "bitsandbytes does not match the host's CUDA",
            "install a bitsandbytes built for this CUDA in the run's environment "
            "(pip install -U bitsandbytes), or avoid it: --set optimizer_type=AdamW or Adafactor",
        )
    m = _TORCH_MISSING.search(text)
    if m is not None:
        package = m["pip"] or m["uv"]
        return InstallProblem(
            "torch", f"no {package} wheel for this host", _torch_hint(torch_spec, driver_cuda)
        )
    if _NETWORK.search(text):
        return InstallProblem(
            "network",
            "the host could not download packages",
            "check the host's internet access (a proxy or firewall); run again: what was "
            "downloaded is cached",
        )
    return None
