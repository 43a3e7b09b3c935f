"""Optimizer, lr scheduler, warmup and learning rates: values sd-scripts takes from a config
file without a check and trips over only after the models have loaded (an optimizer name that is
no optimizer, ``cosine_annealing``, a warmup with ``constant``, a rate of 0 for every part).

The names are those of the pinned sd-scripts, shipped as data with their sources
(``kohyawrap/data/optimizers_schedulers.toml``, read by :func:`kohyawrap.sdscripts.training_names`).
Pure: settings in, findings out; ``kohyawrap.validate`` runs it with its other rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kohyawrap.errors import suggest
from kohyawrap.models import Finding
from kohyawrap.sdscripts import PINNED_COMMIT, training_names


def optimizer_findings(settings: Mapping[str, Any]) -> Iterator[Finding]:
    """Every finding about the optimizer, scheduler, warmup and learning rates of ``settings``."""
    for rule in (_optimizer, _scheduler, _warmup, _learning_rates):
        yield from rule(settings)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


DEFAULT_LEARNING_RATE = 2e-6  # sd-scripts' --learning_rate default (train_network_args.json)


def _optimizer_type(settings: Mapping[str, Any]) -> str:
    value = settings.get("optimizer_type") or ""
    if not value and settings.get("use_8bit_adam"):
        return "AdamW8bit"
    if not value and settings.get("use_lion_optimizer"):
        return "Lion"
    return value if isinstance(value, str) else ""


def _schedulefree(settings: Mapping[str, Any]) -> bool:
    """sd-scripts replaces the scheduler of a schedule-free optimizer with a dummy one."""
    return _optimizer_type(settings).lower().endswith("schedulefree")


def _adafactor_relative_step(settings: Mapping[str, Any]) -> bool:
    """Adafactor with relative_step (its default): sd-scripts ignores the learning rate and sets
    lr_scheduler to "adafactor:<lr>" whatever the config says."""
    if _optimizer_type(settings).lower() != "adafactor":
        return False
    args = settings.get("optimizer_args") or []
    given = {str(a).split("=", 1)[0].strip(): str(a).split("=", 1)[-1].strip() for a in args}
    relative = given.get("relative_step", "True") != "False"
    return relative or given.get("warmup_init", "False") == "True"


def _closest(word: str, names: Iterable[str]) -> list[str]:
    """Names ``word`` most likely meant: the same in another case, a name it starts with
    (cosine_annealing -> cosine), or a close spelling."""
    pool = list(dict.fromkeys(names))
    lower = word.lower()
    same = [n for n in pool if n.lower() == lower]
    if same:
        return same
    # A known name plus "_something" (cosine_annealing, linear_warmup) meant that name.
    extended = [n for n in pool if lower.startswith(n.lower() + "_")]
    by_lower = {n.lower(): n for n in pool}
    close = [by_lower[n] for n in suggest(lower, by_lower)]
    return list(dict.fromkeys(sorted(extended, key=len, reverse=True) + close))[:3]


def _meant(names: list[str]) -> str | None:
    return "did you mean " + " or ".join(f"'{n}'" for n in names) + "?" if names else None


def _optimizer(s: Mapping[str, Any]) -> Iterator[Finding]:
    flags = [f for f in ("use_8bit_adam", "use_lion_optimizer") if s.get(f)]
    if flags and (len(flags) == 2 or s.get("optimizer_type")):
        others = [*flags[1:], "optimizer_type"] if len(flags) == 1 else flags[1:]
        yield Finding(
            "error",
            "optimizer",
            flags[0],
            f"{flags[0]} and {' and '.join(others)} are both set: sd-scripts stops with an "
            "assertion before training",
            f"remove {flags[0]} and set only optimizer_type",
        )
        return
    name = s.get("optimizer_type")
    if isinstance(name, str) and name:
        yield from _optimizer_name(name)


def _optimizer_name(name: str) -> Iterator[Finding]:
    names = training_names()
    lower = name.lower()
    own = {n.lower(): n for n in names.optimizers}
    if "." in name:
        yield from _dotted_optimizer(name, own)
    elif lower in own:
        package = next(
            (p for pre, p in names.optimizer_packages.items() if lower.startswith(pre)), None
        )
        if package:
            yield Finding(
                "warning",
                "optimizer-package",
                "optimizer_type",
                f"{name} needs the {package} package, which sd-scripts' requirements.txt does not "
                "install: without it sd-scripts stops with an ImportError after loading the models",
                f"install {package} in the host's venv, or use AdamW8bit or Prodigy",
            )
    elif name in names.optimizer_not_usable:
        why, use = names.optimizer_not_usable[name]
        yield Finding(
            "error",
            "optimizer",
            "optimizer_type",
            f"optimizer_type = {name!r} cannot train here: {why}",
            f'optimizer_type = "{use}"',
        )
    elif name not in names.torch_optimizers:
        known = [*names.optimizers, *names.torch_optimizers]
        yield Finding(
            "error",
            "optimizer",
            "optimizer_type",
            f"optimizer_type = {name!r} is no optimizer sd-scripts knows: it looks it up in "
            "torch.optim after the models have loaded and stops with an AttributeError",
            _meant(_closest(name, known))
            or f"one of sd-scripts' names ({', '.join(names.optimizers[:6])}, ...) or a "
            "module.Class path",
        )


def _dotted_optimizer(name: str, own: Mapping[str, str]) -> Iterator[Finding]:
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        yield Finding(
            "error",
            "optimizer",
            "optimizer_type",
            f"optimizer_type = {name!r} is not a module.Class path",
            'e.g. optimizer_type = "bitsandbytes.optim.AdEMAMix8bit"',
        )
    elif name.lower().startswith("dadapt"):
        short = own.get(parts[-1].lower(), "DAdaptAdam")
        yield Finding(
            "error",
            "optimizer",
            "optimizer_type",
            f"optimizer_type = {name!r}: sd-scripts reads every name starting with 'dadapt' as "
            "one of its own D-Adaptation names and stops with 'Unknown optimizer type'",
            f'optimizer_type = "{short}"',
        )
    elif parts[0] not in training_names().host_modules:
        yield Finding(
            "warning",
            "optimizer-package",
            "optimizer_type",
            f"optimizer_type = {name!r} is imported from {parts[0]} on the host, which "
            "sd-scripts' requirements.txt does not install (an ImportError after the models load)",
            f"install {parts[0]} in the host's venv",
        )


def _scheduler(s: Mapping[str, Any]) -> Iterator[Finding]:
    name = s.get("lr_scheduler", "constant")
    if (
        not isinstance(name, str)
        or _schedulefree(s)
        or s.get("lr_scheduler_type")
        or _adafactor_relative_step(s)
    ):
        return  # a dummy, a custom or the forced adafactor scheduler: lr_scheduler is not read
    names = training_names()
    if name.startswith("adafactor"):
        yield from _adafactor_scheduler(s, name)
    elif name in names.scheduler_not_usable:
        yield Finding(
            "error",
            "lr-scheduler",
            "lr_scheduler",
            f"lr_scheduler = {name!r} fails at sd-scripts {PINNED_COMMIT[:8]}: "
            f"{names.scheduler_not_usable[name]}",
            'lr_scheduler = "cosine" (or "constant")',
        )
    elif name not in names.schedulers:
        yield Finding(
            "error",
            "lr-scheduler",
            "lr_scheduler",
            f"lr_scheduler = {name!r} is no scheduler sd-scripts knows: it stops with a "
            "ValueError after the models have loaded",
            _meant(_closest(name, names.schedulers)) or f"one of {', '.join(names.schedulers)}",
        )
    else:
        yield from _scheduler_needs(s, name)


def _adafactor_scheduler(s: Mapping[str, Any], name: str) -> Iterator[Finding]:
    if _optimizer_type(s).lower() != "adafactor":
        yield Finding(
            "error",
            "lr-scheduler",
            "lr_scheduler",
            'the adafactor scheduler needs optimizer_type = "Adafactor" (sd-scripts assertion)',
            'lr_scheduler = "constant"',
        )
    elif not re.fullmatch(r"adafactor:\s*[0-9.eE+-]+", name):
        yield Finding(
            "error",
            "lr-scheduler",
            "lr_scheduler",
            f"lr_scheduler = {name!r}: sd-scripts reads the initial rate after a colon and "
            "stops without one",
            'lr_scheduler = "adafactor:1e-3"',
        )


def _scheduler_needs(s: Mapping[str, Any], name: str) -> Iterator[Finding]:
    args = [str(a) for a in (s.get("lr_scheduler_args") or [])]
    if name == "cosine_with_min_lr" and s.get("lr_scheduler_min_lr_ratio") is None:
        yield Finding(
            "error",
            "lr-scheduler-args",
            "lr_scheduler",
            "cosine_with_min_lr needs lr_scheduler_min_lr_ratio: without it transformers stops "
            "with 'One of min_lr or min_lr_rate should be set'",
            "lr_scheduler_min_lr_ratio = 0.1",
        )
    if name == "piecewise_constant" and not any(a.startswith("step_rules=") for a in args):
        yield Finding(
            "error",
            "lr-scheduler-args",
            "lr_scheduler",
            "piecewise_constant needs its step rules in lr_scheduler_args: without them "
            "diffusers stops with a TypeError",
            'lr_scheduler_args = ["step_rules=1:100,0.1"]',
        )


def _total_steps_known(settings: Mapping[str, Any]) -> int | None:
    """The run's total steps when the config alone says it (max_train_steps without epochs)."""
    if "max_train_epochs" in settings:
        return None
    value = settings.get("max_train_steps", 1600)  # sd-scripts' default
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _warmup(s: Mapping[str, Any]) -> Iterator[Finding]:
    warmup = s.get("lr_warmup_steps", 0)
    if not _is_number(warmup) or _schedulefree(s):
        return
    if warmup < 0:
        yield Finding(
            "error", "warmup", "lr_warmup_steps", f"lr_warmup_steps = {warmup} is negative",
            "lr_warmup_steps = 0",
        )  # fmt: skip
        return
    if isinstance(warmup, float) and warmup >= 1:
        yield Finding(
            "error",
            "warmup",
            "lr_warmup_steps",
            f"lr_warmup_steps = {warmup} is a float, which sd-scripts reads as a ratio of the "
            f"total steps ({warmup:g} x the whole run); the config file is not converted",
            f"lr_warmup_steps = {int(warmup)}  (steps), or a ratio below 1 such as 0.05",
        )
        return
    refuser = _no_warmup_scheduler(s)
    if refuser is None or warmup == 0:
        return
    steps = _total_steps_known(s)
    if isinstance(warmup, float) and steps is not None and int(warmup * steps) == 0:
        return  # sd-scripts truncates the ratio to 0 steps: accepted
    ratio = (
        f" (a ratio: {warmup:g} x the total steps, truncated to whole steps)"
        if isinstance(warmup, float)
        else ""
    )
    yield Finding(
        "error",
        "warmup",
        "lr_warmup_steps",
        f"lr_warmup_steps = {warmup}{ratio} with {refuser}: sd-scripts stops after loading the "
        "models ('does not require num_warmup_steps')",
        'lr_warmup_steps = 0, or lr_scheduler = "constant_with_warmup"',
    )


def _no_warmup_scheduler(settings: Mapping[str, Any]) -> str | None:
    """What makes sd-scripts refuse a warmup: the scheduler in use, or None when it takes one."""
    if settings.get("lr_scheduler_type"):
        return f"the custom lr_scheduler_type {settings['lr_scheduler_type']!r}"
    if _adafactor_relative_step(settings):
        return "Adafactor (relative_step uses the adafactor scheduler)"
    name = settings.get("lr_scheduler", "constant")
    if isinstance(name, str) and (
        name in training_names().no_warmup or name.startswith("adafactor")
    ):
        default = "" if "lr_scheduler" in settings else " (sd-scripts' default)"
        return f"lr_scheduler = {name!r}{default}"
    return None


def _learning_rates(s: Mapping[str, Any]) -> Iterator[Finding]:
    negative = [
        (key, v)
        for key, value in s.items()
        if key == "learning_rate" or key.endswith("_lr")
        for v in (value if isinstance(value, list) else [value])
        if _is_number(v) and v < 0
    ]
    for key, value in negative:
        yield Finding(
            "error",
            "learning-rate",
            key,
            f"{key} = {value} is negative: the optimizer would climb the loss instead of "
            "descending it",
            f"{key} = 1e-4",
        )
    if negative or _adafactor_relative_step(s):
        return
    yield from _zero_rates(s)


def _zero_rates(s: Mapping[str, Any]) -> Iterator[Finding]:
    """sd-scripts' LoRA skips a part whose rate is 0 ("NO LR skipping!"): say which parts."""
    base = s.get("learning_rate", DEFAULT_LEARNING_RATE)
    te_value = s.get("text_encoder_lr")
    te_value = te_value[0] if isinstance(te_value, list) and te_value else te_value
    parts = {
        "U-Net": ("unet_lr", s.get("unet_lr")),
        "text encoder": ("text_encoder_lr", te_value),
    }
    trained = {
        "U-Net": not s.get("network_train_text_encoder_only"),
        "text encoder": not s.get("network_train_unet_only"),
    }
    frozen = []
    for part, (key, value) in parts.items():
        rate, source = (value, key) if _is_number(value) else (base, "learning_rate")
        if trained[part] and _is_number(rate) and rate == 0:
            frozen.append((part, source))
    if frozen and len(frozen) == sum(trained.values()):
        source = frozen[0][1]
        yield Finding(
            "error",
            "learning-rate",
            source,
            f"{source} = 0 leaves nothing to train: sd-scripts skips every part with rate 0 and "
            "the optimizer stops with 'empty parameter list'",
            f"{source} = 1e-4",
        )
        return
    for part, source in frozen:
        yield Finding(
            "note",
            "learning-rate",
            source,
            f"{source} = 0: the {part} is not trained (sd-scripts skips a part with rate 0)",
        )
