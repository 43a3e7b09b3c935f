"""What a person sees while the host is set up: install lines, download progress, and why uv
failed before pip took over (lines as pip, uv and tqdm really print them)."""

from __future__ import annotations

from kohyawrap.launcher.setup import _show_progress
from kohyawrap.models import Event


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.transfers: list[tuple[str, int, int]] = []

    def stage(self, name: str, detail: str = "") -> None:
        self.lines.append(f"==> {name}")

    def info(self, message: str) -> None:
        self.lines.append(message)

    def transfer(self, label: str, done: int, total: int) -> None:
        self.transfers.append((label, done, total))

    def event(self, event: Event, dollars_so_far: float, dollars_projected: float | None) -> None:
        pass

    def pulled(self, name: str, size: int) -> None:
        pass


def _feed(lines: list[str], name: str = "venv") -> tuple[Recorder, dict[str, str]]:
    rec, found = Recorder(), {}
    for line in lines:
        _show_progress(line, found, rec, name)
    return rec, found


def test_install_lines_of_pip_and_uv_are_shown_and_noise_is_not() -> None:
    rec, found = _feed(
        [
            "KW step=torch",
            "Collecting accelerate==1.6.0 (from -r requirements.txt (line 1))",
            "  Downloading accelerate-1.6.0-py3-none-any.whl.metadata (19 kB)",
            "Requirement already satisfied: numpy in ./venv/lib/python3.11/site-packages",
            "Resolved 58 packages in 3.42s",
            "Prepared 47 packages in 5.66s",
            "Installed 48 packages in 348ms",
            " + accelerate==1.6.0",
            "error: Failed to fetch: `https://pypi.org/simple/torch/`",
            "KW fallback=uv failed; installing with pip instead",
            "KW installer=pip",
        ]
    )
    assert rec.lines == [
        "installing: torch",
        "Collecting accelerate==1.6.0 (from -r requirements.txt (line 1))",
        "Downloading accelerate-1.6.0-py3-none-any.whl.metadata (19 kB)",
        "Resolved 58 packages in 3.42s",
        "Prepared 47 packages in 5.66s",
        "Installed 48 packages in 348ms",
        "error: Failed to fetch: `https://pypi.org/simple/torch/`",
        "uv failed; installing with pip instead",
    ]
    assert found["installer"] == "pip"


def test_download_progress_becomes_transfer_updates() -> None:
    rec, found = _feed(
        [
            "v1-5-pruned-emaonly.safetensors:  45%|####5     | 1.92G/4.27G [00:19<00:23, 100MB/s]",
            "KW progress=67108864 2000000000",
            "KW model=downloaded",
        ],
        name="model",
    )
    assert rec.transfers == [
        ("model download", 1_920_000_000, 4_270_000_000),
        ("model download", 67_108_864, 2_000_000_000),
    ]
    assert found["model"] == "downloaded"
