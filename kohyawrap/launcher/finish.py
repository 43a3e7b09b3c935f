"""FINISH: what happens to the host once every file of a finished run is safe on the laptop."""

from __future__ import annotations

from kohyawrap.errors import HostError
from kohyawrap.hosts.base import Host
from kohyawrap.launcher.report import Reporter

# RunPod keeps RUNPOD_POD_ID in /etc/rp_environment (sourced only by interactive shells).
SHUTDOWN = (
    "[ -f /etc/rp_environment ] && . /etc/rp_environment; "
    'if command -v runpodctl >/dev/null && [ -n "${RUNPOD_POD_ID:-}" ]; '
    'then runpodctl stop pod "$RUNPOD_POD_ID"; '
    "else sudo -n shutdown -h now 2>/dev/null || shutdown -h now; fi"
)


def on_finish(host: Host, action: str, reporter: Reporter) -> None:
    """Carry out ``--on-finish``. The caller guarantees every announced file is verified locally."""
    if action in ("", "none"):
        return
    reporter.stage("finish", action)
    if action == "shutdown":
        reporter.info("shutting the host down (--on-finish shutdown)")
        command = SHUTDOWN
    else:
        reporter.info(f"running the --on-finish command on the host: {action}")
        command = action
    try:
        host.run(command, check=True, timeout=120)
    except HostError as err:
        # A shutdown drops our connection: that is success, not failure.
        if action != "shutdown":
            raise
        reporter.info(f"the host went away as asked ({err.message})")
