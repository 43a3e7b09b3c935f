"""FINISH: what happens to the host once a run has ended and its checkpoints are on the laptop.

One rule, kept on the host (kohyawrap/hostside/watchdog.py), whether the laptop or the host's
watchdog finishes: ``--on-finish destroy`` (or a command) only when every checkpoint is safe, by
a receipt the laptop left after verifying it or on the Hugging Face Hub; ``stop`` and
``shutdown`` at any time, since a stopped host keeps its disk. The laptop asks the host to
decide (and records the decision), then to carry it out.
"""

from __future__ import annotations

import json
import posixpath

from kohyawrap.errors import HostError
from kohyawrap.hosts.base import Host, sh
from kohyawrap.launcher import watchdog
from kohyawrap.launcher.manifest import FinishRecord
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.launcher.scripts import parse_kv

# Actions after which the host may drop the connection: that is success, not failure.
GOES_AWAY = ("stop", "destroy", "shutdown")


def ask_host(
    host: Host, folder: str, python: str, script: str, who: str, *flags: str
) -> FinishRecord:
    """Run ``script finish folder flags`` on the host (the run's watchdog or the queue's runner)
    and read its finish decision; ``who`` names the program in the error when it gives none."""
    command = f"cd {sh(folder)} && " + sh(python, script, "finish", folder, *flags)
    result = host.run(command, check=True, timeout=3900)  # a push to the Hub may come first
    text = parse_kv(result.stdout).get("finish", "")
    try:
        record = watchdog.finish_record(json.loads(text))
    except (ValueError, RecursionError):
        record = None
    if record is None:
        raise HostError(
            f"{who} gave no finish decision ({posixpath.join(folder, script)})",
            evidence=(result.stdout + result.stderr).strip().splitlines()[-5:],
        )
    return record


def _ask(host: Host, plan: RunPlan, python: str, flag: str) -> FinishRecord:
    run = plan.layout.run_dir
    return ask_host(host, run, python, watchdog.SCRIPT, "the host's watchdog", flag)


def decide(host: Host, plan: RunPlan, python: str) -> FinishRecord:
    """Ask the host what ``--on-finish`` may do now (decided once; later calls read it back)."""
    watchdog.ensure_installed(host, plan)
    return _ask(host, plan, python, "--decide")


def act(host: Host, plan: RunPlan, python: str, record: FinishRecord, reporter: Reporter) -> str:
    """Carry out the decision; returns the result ("ok", "failed: ...")."""
    if record.action in ("", "none"):
        return record.result
    reporter.stage("finish", record.action)
    try:
        return _ask(host, plan, python, "--act").result
    except HostError as err:
        if record.action not in GOES_AWAY:
            raise
        reporter.info(f"the host went away as asked ({err.message})")
        return f"ok (the connection closed: {err.message})"[:500]
