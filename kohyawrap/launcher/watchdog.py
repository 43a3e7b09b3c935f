"""The host's watchdog, seen from the laptop: install it with the run, leave receipts for what
the laptop verified, and read back what it decided.

The watchdog itself (``kohyawrap/hostside/watchdog.py``) runs on the host beside the job and
needs no laptop: it holds ``--max-dollars``, ``--max-hours`` and the idle rule, pushes to the
Hub, and carries out ``--on-finish`` under the safety rule (docs/money.md). This module writes its
``watchdog/config.json`` (and, for a push, the Hugging Face token as a 0600 file it deletes after
the push), and turns the JSON files it writes into the manifest's records. The host is untrusted:
a file that does not parse is ignored, never a traceback.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kohyawrap.hosts.base import Host, sh
from kohyawrap.launcher.manifest import FinishRecord, HostStop, HubPush, PulledFile, StopReason
from kohyawrap.launcher.runplan import RunPlan

SCRIPT = "watchdog.py"  # in the run folder, beside run.sh
HOST_POLL_LIMIT = 5.0  # the watchdog looks at least this often, whatever the laptop's --poll
_SOURCE = Path(__file__).resolve().parents[1] / "hostside" / "watchdog.py"
_MAX_REPORT = 200_000  # bytes of the host's JSON files read back (a hostile host stays bounded)


def script_text() -> bytes:
    """The host-side program, as uploaded."""
    return _SOURCE.read_bytes()


def config_of(plan: RunPlan, *, spent_before_launch: float, poll_seconds: float) -> dict[str, Any]:
    """What the watchdog needs to know: the price, the limits and the finish, from the plan."""
    money = plan.money
    return {
        "price_per_hour": plan.estimate.price_per_hour,
        "spent_before_launch": round(spent_before_launch, 6),
        "max_dollars": money.max_dollars,
        "max_hours": money.max_hours,
        "idle_minutes": money.idle_minutes,
        "on_finish": money.on_finish,
        "provider": money.provider,
        "poll_seconds": min(poll_seconds, HOST_POLL_LIMIT),
        "push_to_hub": money.push_to_hub,
        "hub_private": money.hub_private,
        "save_state": bool(plan.rendered.settings.get("save_state")),
        "run_id": plan.run_id,
    }


def install(
    host: Host,
    plan: RunPlan,
    *,
    spent_before_launch: float,
    poll_seconds: float,
    hf_token: str | None,
) -> None:
    """Put the watchdog and its config in the run folder (before the launch: run.sh starts it).

    For ``--push-to-hub`` the token goes into ``watchdog/hf_token``, mode 0600, through the
    command's standard input (never an argument); the watchdog deletes it right after the push,
    and when it exits in any case.
    """
    run = plan.layout.run_dir
    host.put_bytes(script_text(), posixpath.join(run, SCRIPT))
    config = config_of(plan, spent_before_launch=spent_before_launch, poll_seconds=poll_seconds)
    text = json.dumps(config, indent=1, sort_keys=True) + "\n"
    host.put_bytes(text.encode(), posixpath.join(run, "watchdog", "config.json"))
    if plan.money.push_to_hub and hf_token:
        host.put_bytes(hf_token.encode(), posixpath.join(run, "watchdog", "hf_token"), mode=0o600)


def ensure_installed(host: Host, plan: RunPlan) -> None:
    """The current program, and a config when the run has none (a run launched before the
    watchdog existed: nothing was spent before its launch as far as it knows)."""
    run = plan.layout.run_dir
    host.put_bytes(script_text(), posixpath.join(run, SCRIPT))
    if host.stat(posixpath.join(run, "watchdog", "config.json")) is None:
        install(host, plan, spent_before_launch=0.0, poll_seconds=HOST_POLL_LIMIT, hf_token=None)


# ---------------------------------------------------------------------------------------------
# Receipts: what a laptop verified


def receipt_path(run_dir: str, rel: str) -> str:
    """``<run>/receipts/<name>.sha256`` for the host file ``<run>/<rel>``."""
    return posixpath.join(run_dir, "receipts", posixpath.basename(rel) + ".sha256")


def write_receipt(host: Host, run_dir: str, rel: str, digest: str) -> None:
    """Tell the watchdog this checkpoint is safe on a laptop: the sha256 the laptop verified."""
    line = f"{digest}  {posixpath.basename(rel)}\n"
    host.put_bytes(line.encode(), receipt_path(run_dir, rel))


def ensure_receipts(host: Host, run_dir: str, checkpoints: dict[str, PulledFile]) -> int:
    """Receipts for the pulled ``checkpoints`` that have none on the host (a run pulled before
    receipts existed, or a receipt lost to a drop); returns how many were written."""
    folder = posixpath.join(run_dir, "receipts")
    listing = host.run(f"ls -1 {sh(folder)} 2>/dev/null || true", check=False).stdout
    present = set(listing.splitlines())
    written = 0
    for rel, info in sorted(checkpoints.items()):
        if posixpath.basename(rel) + ".sha256" not in present:
            write_receipt(host, run_dir, rel, info.sha256)
            written += 1
    return written


# ---------------------------------------------------------------------------------------------
# Reading back what the watchdog decided


@dataclass(frozen=True)
class HostReport:
    """The watchdog's decisions as found on the host (None: nothing decided, or unreadable)."""

    stop: HostStop | None = None
    hub: HubPush | None = None
    finish: FinishRecord | None = None


_READ = """cd {dir} 2>/dev/null || exit 0
for f in stop hub finish; do
  [ -f "watchdog/$f.json" ] && printf '%s\\t%s\\n' "$f" "$(head -c 60000 "watchdog/$f.json" | tr -d '\\n')"
done
true
"""


def read_report(host: Host, run_dir: str) -> HostReport:
    """The watchdog's ``stop.json``, ``hub.json`` and ``finish.json`` in one round trip."""
    out = host.run(_READ.format(dir=sh(run_dir)), check=False, timeout=60).stdout[:_MAX_REPORT]
    found: dict[str, Any] = {}
    for line in out.splitlines():
        name, _, text = line.partition("\t")
        try:
            found[name] = json.loads(text)
        except (ValueError, RecursionError):  # a hostile host nests arrays 60000 deep
            continue
    return HostReport(
        stop=host_stop(found.get("stop")),
        hub=hub_push(found.get("hub")),
        finish=finish_record(found.get("finish")),
    )


def host_stop(data: Any) -> HostStop | None:
    """``stop.json`` as a record (None when it is not one)."""
    try:
        return HostStop(
            reason=StopReason(str(data["reason"])),
            graceful=bool(data["graceful"]),
            spent=float(data["spent"]),
            message=str(data["message"])[:2000],
            after=str(data.get("after") or "")[:300],
            at=float(data.get("at") or 0.0),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def hub_push(data: Any) -> HubPush | None:
    """``hub.json`` as a record."""
    try:
        files = {str(k): str(v) for k, v in dict(data.get("files") or {}).items()}
        return HubPush(str(data["repo"]), files, str(data.get("error") or "")[:2000])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def finish_record(data: Any) -> FinishRecord | None:
    """``finish.json`` (or the finish program's answer) as a record."""
    try:
        return FinishRecord(
            asked=str(data["asked"]),
            action=str(data["action"]),
            message=str(data["message"])[:2000],
            by=str(data["by"]),
            provider=str(data.get("provider") or "none"),
            safe=bool(data.get("safe")),
            safe_by=str(data.get("safe_by") or ""),
            missing=tuple(str(m)[:300] for m in list(data.get("missing") or ())[:50]),
            result=str(data.get("result") or "")[:1000],
            at=float(data.get("at") or 0.0),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
