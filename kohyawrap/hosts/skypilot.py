"""SkyPilot's Python API, the one place kohyawrap calls it (``train --via skypilot``): launch a
cluster for a task, read the SSH config entry SkyPilot writes for it, set its autostop.

SkyPilot is optional (``pip install 'kohyawrap[skypilot]'``) and imported only here, only when
used. Nothing in this module runs in the tests (no cloud can be reached from them): what it is
given (the task YAML) and what follows it (training over SSH with the entry it wrote) are tested;
docs/scale.md says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kohyawrap.errors import HostError, UsageError

INSTALL = "pip install 'kohyawrap[skypilot]'"


def _sky() -> Any:
    try:
        import sky
    except ImportError as err:
        raise UsageError(
            "--via skypilot needs SkyPilot, which is not installed here",
            hint=f"{INSTALL}, then `sky check` to connect a cloud",
        ) from err
    return sky


def ssh_config_path(cluster: str, home: Path | None = None) -> Path:
    """The OpenSSH config SkyPilot writes for ``cluster`` (its head node): SkyPilot keeps one file
    per cluster under ~/.sky/generated/ssh/ and includes them from ~/.ssh/config."""
    return (home or Path.home()) / ".sky" / "generated" / "ssh" / cluster


class SkyPilotProvisioner:
    """Launches clusters through SkyPilot's Python API (``sky.launch``) and sets autostop."""

    def launch(self, cluster: str, task_yaml: str) -> Path:
        """Bring ``cluster`` up for the task (reusing it when it exists); returns its SSH config."""
        import yaml

        sky = _sky()
        task = sky.Task.from_yaml_config(yaml.safe_load(task_yaml))
        try:
            request = sky.launch(task, cluster_name=cluster)
            sky.stream_and_get(request)
        except (
            Exception
        ) as err:  # SkyPilot's own errors (no cloud, no capacity, quota) differ by version
            raise HostError(
                f"SkyPilot could not launch cluster {cluster!r}: {type(err).__name__}: {err}",
                hint="`sky check` shows which clouds are set up; `sky show-gpus` which GPUs exist",
            ) from err
        path = ssh_config_path(cluster)
        if not path.is_file():
            raise HostError(
                f"SkyPilot launched {cluster!r} but wrote no SSH config at {path}",
                hint=f"`sky status {cluster}`; connect with --host {cluster} --ssh-config PATH",
            )
        return path

    def autostop(self, cluster: str, idle_minutes: int, down: bool) -> None:
        """Stop (or tear down) ``cluster`` once it has been idle ``idle_minutes``."""
        sky = _sky()
        sky.stream_and_get(sky.autostop(cluster, idle_minutes, down=down))
