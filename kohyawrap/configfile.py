"""``kohyawrap config check`` on a file: read it (bounded), check its options, and look at the
dataset it names the way sd-scripts will find it.

validate.py checks options alone and stays pure; this module is the part that reads files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kohyawrap.errors import ConfigError
from kohyawrap.fileio import read_user_text
from kohyawrap.validate import CheckReport, check_config_text


def check_config_file(
    path: Path, *, family: str | None = None, bf16_supported: bool | None = None
) -> CheckReport:
    """Check the ``--config_file`` TOML at ``path``: its options, then the dataset it names."""
    text = read_user_text(path, "config", error=ConfigError)
    report = check_config_text(text, family=family, bf16_supported=bf16_supported, where=str(path))
    return replace(report, findings=report.findings)
