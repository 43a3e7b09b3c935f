"""The money options of a run, checked before anything is spent, and what the plan says about them.

``--on-finish`` is ``none``, ``stop``, ``destroy``, ``shutdown`` or a shell command. ``stop`` and
``destroy`` need a provider that can do it from inside the host (RunPod's pod id and runpodctl,
Vast.ai's instance id and key), so they are refused when the host shows none. A one-word value
close to a keyword is refused as a typo: it would otherwise run as a command.
"""

from __future__ import annotations

import difflib
import re

from kohyawrap.errors import UsageError
from kohyawrap.forecast import finish_choices
from kohyawrap.hosts.facts import HostFacts
from kohyawrap.launcher.runplan import MoneyOptions
from kohyawrap.presets import Rules

ACTIONS = ("none", "stop", "destroy", "shutdown")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
WHERE = {"runpod": "RunPod pod", "vast": "Vast.ai instance"}


def check_money(money: MoneyOptions) -> None:
    """Refuse money options that can never work (no host needed)."""
    action = money.on_finish.strip()
    if action not in ACTIONS and " " not in action:
        close = difflib.get_close_matches(action.lower(), ACTIONS, n=1, cutoff=0.6)
        if close:
            raise UsageError(
                f"--on-finish {action!r} is not a choice (did you mean {close[0]!r}?)",
                hint="none, stop, destroy, shutdown, or a shell command for the host",
            )
    if money.push_to_hub and not _REPO_ID.match(money.push_to_hub):
        raise UsageError(
            f"--push-to-hub {money.push_to_hub!r} is not a Hugging Face repo id",
            hint="user/repo or org/repo, e.g. --push-to-hub me/my_lora",
        )
    if money.provider not in ("auto", "runpod", "vast", "none"):
        raise UsageError(f"--provider {money.provider!r}: auto, runpod, vast or none")


def provider_of(money: MoneyOptions, facts: HostFacts) -> str:
    """The provider the host's watchdog will act through (``--provider`` wins over the facts)."""
    return facts.provider if money.provider == "auto" else money.provider


def check_provider(money: MoneyOptions, facts: HostFacts) -> None:
    """Refuse ``--on-finish stop|destroy`` on a host that cannot do it from inside."""
    action = money.on_finish
    provider = provider_of(money, facts)
    if action not in ("stop", "destroy"):
        return
    if provider == "none":
        raise UsageError(
            f"--on-finish {action} needs a RunPod pod or a Vast.ai instance; {facts.label} shows "
            "neither (no RUNPOD_POD_ID, no CONTAINER_ID with CONTAINER_API_KEY)",
            hint="use --on-finish shutdown or a command for your own machine, or --provider "
            "runpod|vast if the host hides its environment",
        )
    if provider != facts.provider or not facts.provider_id:
        raise UsageError(
            f"--provider {provider}, but {facts.label} does not show its {WHERE[provider]} id",
            hint="check the host with `kohyawrap hosts check`; --provider auto reads it",
        )
    if provider == "runpod" and not facts.provider_tool:
        raise UsageError(
            f"--on-finish {action} on RunPod needs runpodctl on the host; {facts.label} has none",
            hint="RunPod images ship it; install it, or use --on-finish none and stop the pod yourself",
        )


def need_token(money: MoneyOptions, hf_token: str | None) -> None:
    """``--push-to-hub`` needs a token the host can push with."""
    if money.push_to_hub and not hf_token:
        raise UsageError(
            "--push-to-hub needs a Hugging Face token with write access",
            hint="set HF_TOKEN or pass --hf-token-file (it travels to the host on stdin, is kept "
            "there mode 0600, and deleted right after the push)",
        )


def finish_note(provider: str, price_per_hour: float, disk_gb: float, rules: Rules) -> str:
    """One line of the plan: what each ``--on-finish`` choice costs per day after the run."""
    choices = {(c.action, c.provider): c for c in finish_choices(price_per_hour, disk_gb, rules)}
    stop = choices.get(("stop", provider))
    stop_text = (
        f"stop ~${stop.dollars_per_day:.2f}/day ({stop.note})"
        if stop is not None and stop.dollars_per_day is not None
        else "stop needs RunPod or Vast.ai"
    )
    idle = choices[("none", "any")].dollars_per_day or 0.0
    return (
        f"after the run on this {WHERE.get(provider, 'host')}: {stop_text}; destroy $0/day (only "
        f"once every checkpoint is safe, else it stops); none ~${idle:.2f}/day (the GPU keeps billing)"
    )
