"""A new leg of a recorded run: what ``resume``, ``extend`` and the out-of-memory retries share.

- where the run's training states are (pulled to the laptop, or still on a host),
- the plan of the next leg: the current leg's options, the resume keys, a host of its own,
- putting the chosen state beside the new leg on its host (a copy on the same host, an upload
  from the laptop to a new one).

The rendered config of a leg differs from the first leg's only in the resume/epoch keys (and the
host paths when the host or its work folder differ); it is kept in the run's ``config/leg<N>/``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from kohyawrap.errors import HostError, UsageError
from kohyawrap.hosts.base import Host, sh
from kohyawrap.hosts.connect import ConnectOptions
from kohyawrap.hosts.facts import HostFacts
from kohyawrap.launcher.fetch import Puller
from kohyawrap.launcher.layout import RemoteLayout
from kohyawrap.launcher.legs import leg_records
from kohyawrap.launcher.manifest import PulledFile, RunManifest
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.launcher.runstore import RunDir
from kohyawrap.launcher.states import (
    RESUME_KEYS,
    TRAIN_STATE,
    StateRef,
    parse_train_state,
    state_kind,
    state_refs_from_pulled,
)

_MAX_LISTING = 1 << 20  # bytes of state listing read from a host (train_state.json is tiny)


@dataclass(frozen=True)
class ContinueRequest:
    """``kohyawrap resume`` / ``extend``: where the next leg runs and what it adds."""

    kind: Literal["resume", "extend"]
    target: str | None = None  # None: the run's current host
    work_dir: str | None = None  # None: the run's (same host) or ~/kohyawrap (a new one)
    price: float | None = None  # $/h of the new host (None: the run's, or the preset's)
    epochs: int | None = None  # extend: this many epochs more
    pull_state: bool = False  # also pull training states as they are saved
    force: bool = False  # a host without a GPU


def host_key(target: str, connect: Mapping[str, Any]) -> str:
    """Which host a leg ran on: the target and its port (rented hosts share an address and
    differ by port)."""
    port = connect.get("port")
    return f"{target}:{port}" if port else target


def same_host(m: RunManifest, target: str, given: ConnectOptions) -> bool:
    """``target`` (reached with ``given``) is the run's current host."""
    if target != m.host.target:
        return False
    return given.port is None or given.port == m.host.connect.get("port")


# ---------------------------------------------------------------------------------------------
# Checks before anything is contacted


def check_can_continue(m: RunManifest, kind: str) -> None:
    """Refuse a run that ``resume`` / ``extend`` cannot continue, saying what to do instead."""
    if m.launched_at is None and m.leg_number == 1:
        raise UsageError(
            f"run {m.run_id} never started training (it is {m.status.value})",
            hint=f"start it again: `kohyawrap reproduce {m.run_id} --run HOST`",
        )
    if kind == "resume" and m.status.value == "finished":
        raise UsageError(
            f"run {m.run_id} has finished: there is nothing to resume",
            hint=f"to train it further: `kohyawrap extend {m.run_id} --epochs N`",
        )
    if kind == "extend":
        if m.status.value != "finished":
            raise UsageError(
                f"run {m.run_id} is {m.status.value}: extend continues a finished run",
                hint=f"`kohyawrap resume {m.run_id}` continues it from its newest state",
            )
        if "max_train_epochs" not in m.plan.rendered.settings:
            raise UsageError(
                f"run {m.run_id} trained by steps (max_train_steps): extend adds epochs",
                hint="train a new run with more --set max_train_steps instead",
            )


def check_inputs(m: RunManifest) -> None:
    """The dataset and a local base model must still be on the laptop, unchanged."""
    from kohyawrap.launcher.request import dataset_files, dataset_hash

    plan = m.plan
    root = Path(plan.dataset_root)
    if not root.is_dir():
        raise UsageError(
            f"the run's dataset {root} is no longer on this computer",
            hint="put it back where it was: a new leg uploads it again",
        )
    if dataset_hash(dataset_files(root)) != plan.dataset_sha256:
        raise UsageError(
            f"the dataset {root} changed since run {m.run_id} started",
            hint="a resumed run must see the same images: restore them, or train a new run",
        )
    for f in plan.model_files:
        if f.kind == "upload" and not Path(f.source).is_file():
            raise UsageError(
                f"the model file {f.source} is no longer on this computer",
                hint="put it back: a new host gets it uploaded",
            )


# ---------------------------------------------------------------------------------------------
# Finding the states


def laptop_states(m: RunManifest, run: RunDir) -> list[StateRef]:
    """Every training state pulled to the laptop, by the leg that saved it."""
    found: list[StateRef] = []
    name = m.plan.output_name

    def read(rel: str) -> bytes:
        path = run.path / rel
        return path.read_bytes() if path.is_file() and path.stat().st_size < 4096 else b"{}"

    for leg in leg_records(m, 0.0):
        pulled = m.pulled if leg.number == m.leg_number else leg.pulled
        for ref in state_refs_from_pulled(leg.number, pulled, name, read):
            if _complete_locally(run, ref, pulled):
                found.append(ref)
    return found


def _complete_locally(run: RunDir, ref: StateRef, pulled: dict[str, PulledFile]) -> bool:
    """Every file of the state that was pulled is still on the laptop."""
    prefix = f"output/{ref.folder}/"
    files = [f for rel, f in pulled.items() if rel.startswith(prefix)]
    return len(files) > 1 and all((run.path / f.path).is_file() for f in files)


_LIST_STATES = """for d in {dirs}; do
  for f in "$d"/output/*-state/train_state.json; do
    [ -f "$f" ] && printf '%s\\0%s\\0' "$f" "$(head -c 4096 "$f")"
  done
done | head -c {limit}; true"""


def host_states(host: Host, m: RunManifest, key: str) -> list[StateRef]:
    """The training states the legs that ran on the host ``key`` (see host_key) left there."""
    legs = {
        leg.remote_run_dir: leg.number
        for leg in leg_records(m, 0.0)
        if host_key(leg.target, leg.connect) == key
    }
    legs = {d: n for d, n in legs.items() if d}
    if not legs:
        return []
    command = _LIST_STATES.format(dirs=sh(*legs), limit=_MAX_LISTING)
    fields = host.run(command, check=False, timeout=120).stdout.split("\0")
    found = []
    for path, text in zip(fields[0::2], fields[1::2], strict=False):  # a cut-off last pair
        folder_path = posixpath.dirname(path)
        folder = posixpath.basename(folder_path)
        leg = legs.get(posixpath.dirname(posixpath.dirname(folder_path)))
        kind = state_kind(folder, m.plan.output_name)
        if leg is None or kind is None:
            continue
        try:
            state = parse_train_state(text, path)
        except UsageError:
            continue  # a state being written, or damaged: not one to resume from
        found.append(StateRef(leg, folder, kind, state, remote=folder_path, target=key))
    return found


def pull_state(
    host: Host, run: RunDir, m: RunManifest, ref: StateRef, reporter: Reporter
) -> tuple[RunManifest, StateRef]:
    """Bring a state that is only on ``host`` to the laptop (verified), recorded with its leg."""
    leg_run = run.for_leg(ref.leg)
    leg_dir = posixpath.dirname(posixpath.dirname(ref.remote))
    own = m.pulled if ref.leg == m.leg_number else m.legs[ref.leg - 1].pulled
    puller = Puller(host, leg_run, leg_dir, reporter, dict(own), {})
    names = host.run(
        f"cd {sh(ref.remote)} && find . -maxdepth 1 -type f -print0 | head -c {_MAX_LISTING}"
    ).stdout
    local = leg_run.checkpoints / ref.folder
    for name in sorted(n.removeprefix("./") for n in names.split("\0") if n):
        puller.pull(f"output/{ref.folder}/{name}", local)
    if f"output/{ref.folder}/{TRAIN_STATE}" not in puller.pulled:
        raise HostError(f"could not pull the state {ref.label} from {host.label}")
    if ref.leg == m.leg_number:
        m = m.with_changes(pulled=dict(puller.pulled))
    else:
        legs = list(m.legs)
        legs[ref.leg - 1] = replace(legs[ref.leg - 1], pulled=dict(puller.pulled))
        m = m.with_changes(legs=tuple(legs))
    return m, replace(ref, local=local.relative_to(run.path).as_posix())


# ---------------------------------------------------------------------------------------------
# The next leg's plan


def steps_per_epoch(plan: RunPlan) -> int:
    """Optimizer steps per epoch, as sd-scripts counts them for this plan's dataset."""
    from kohyawrap.dataset.scan import read_training_dir
    from kohyawrap.forecast import count_steps
    from kohyawrap.presets import load_catalog

    tdir = read_training_dir(Path(plan.dataset_root), caption_extension=plan.spec.caption_extension)
    steps = count_steps(plan.rendered, tdir, load_catalog().model(plan.spec.model))
    return max(1, -(-steps.batches_per_epoch // max(1, steps.gradient_accumulation_steps)))


def total_epochs(plan: RunPlan, per_epoch: int) -> int:
    settings = plan.rendered.settings
    if "max_train_epochs" in settings:
        return int(settings["max_train_epochs"])
    return -(-plan.estimate.steps // per_epoch)


def next_plan(
    m: RunManifest,
    *,
    leg: int,
    target: str,
    home: str,
    now: datetime,
    facts: HostFacts | None,
    work_dir: str,
    managed: tuple[tuple[str, Any], ...] = (),
    changes: tuple[tuple[str, Any], ...] = (),
    price: float | None = None,
    pull_state: bool | None = None,
) -> RunPlan:
    """The plan of leg ``leg``: the current leg's options without its resume keys, plus
    ``changes`` (as --set) and ``managed`` (the run's own: resume/epoch keys), in a folder of its
    own on ``target``."""
    from kohyawrap.launcher.reproduce import request_from_plan
    from kohyawrap.launcher.request import build_run_plan

    current = m.plan
    commit = m.sd_scripts.commit if m.sd_scripts else ""
    request = request_from_plan(current, commit)
    kept = tuple((k, v) for k, v in request.spec.overrides if k not in RESUME_KEYS)
    request = replace(
        request,
        spec=replace(request.spec, overrides=kept + changes),
        work_dir=work_dir,
        money=replace(current.money, price_per_hour=price),
        pull_state=current.pull_state if pull_state is None else pull_state,
    )
    plan = build_run_plan(request, target=target, home=home, now=now, facts=facts, managed=managed)
    layout = RemoteLayout(plan.layout.work, f"{m.run_id}-leg{leg}")
    return replace(plan, run_id=m.run_id, created_at=current.created_at, layout=layout)


def money_for(m: RunManifest, same_host: bool, price: float | None) -> float | None:
    """The price of the next leg's host: as given, else the current one's when it is the same."""
    if price is not None:
        return price
    return m.plan.money.price_per_hour if same_host else None


def changed_settings(first: RunPlan, plan: RunPlan) -> dict[str, Any]:
    """The options of ``plan`` unlike the first leg's (a removed one shows as None)."""
    before, after = first.rendered.settings, plan.rendered.settings
    out = {k: v for k, v in after.items() if before.get(k) != v}
    out.update({k: None for k in before if k not in after})
    return dict(sorted(out.items()))


# Options that decide what a state holds: the network's tensors and the optimizer's. A state saved
# with others cannot be loaded (an OOM retry may have changed them).
STATE_SHAPE = (
    "network_module", "network_dim", "network_args", "network_train_unet_only",
    "network_train_text_encoder_only", "optimizer_type",
)  # fmt: skip


def leg_settings(m: RunManifest, leg: int) -> dict[str, Any]:
    """The options leg ``leg`` trained with (the first leg's, with what the leg changed)."""
    settings = dict(m.original_plan.rendered.settings)
    changed = next((x.changed for x in m.legs if x.number == leg), {}) if leg > 1 else {}
    for key, value in changed.items():
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    return settings


def check_state_fits(m: RunManifest, ref: StateRef, plan: RunPlan) -> None:
    """Refuse a state saved with a different network or optimizer than the next leg's."""
    saved, wanted = leg_settings(m, ref.leg), plan.rendered.settings
    differ = [k for k in STATE_SHAPE if saved.get(k) != wanted.get(k)]
    if differ:
        pairs = ", ".join(f"{k} {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ)
        raise UsageError(
            f"the newest state ({ref.label}) was saved with other settings: {pairs}",
            hint="it cannot be loaded into this network or optimizer; start again with the "
            "settings that fit: `kohyawrap reproduce RUN --run HOST`, or a new `train`",
        )


# ---------------------------------------------------------------------------------------------
# Putting the state beside the new leg


def place_state(
    host: Host, plan: RunPlan, ref: StateRef, run: RunDir, reporter: Reporter, key: str
) -> str:
    """Make ``<leg folder>/resume/<state>`` hold the state on the host ``key``; returns how
    ("copied" on the host, or "uploaded" from the laptop)."""
    dest = plan.layout.in_run("resume", ref.folder)
    parent = posixpath.dirname(dest)
    here = bool(ref.remote) and ref.target == key
    if here and host.stat(posixpath.join(ref.remote, TRAIN_STATE)):
        # Hard links on the same file system: no bytes copied (sd-scripts only reads a state).
        host.run(
            f"mkdir -p {sh(parent)} && rm -rf {sh(dest)} && "
            f"{{ cp -al {sh(ref.remote)} {sh(dest)} 2>/dev/null || cp -a {sh(ref.remote)} {sh(dest)}; }}"
        )
        reporter.info(f"state {ref.label} copied on the host")
        return "copied"
    if not ref.local:
        raise HostError(
            f"the state {ref.label} is neither on this computer nor on {host.label}",
            hint="pull it from the host that has it (`kohyawrap pull RUN` with --pull-state runs)",
        )
    folder = run.path / ref.local
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}
    reporter.stage("upload", f"state {ref.label} ({len(files)} files)")
    host.upload_tree(files, dest, progress=lambda d, t: reporter.transfer("state", d, t))
    return "uploaded"


def write_leg_configs(run: RunDir, plan: RunPlan) -> None:
    """Keep the leg's rendered files beside the first leg's (``config/leg<N>/``)."""
    for name, text in sorted(plan.rendered.files.items()):
        target = run.leg_config / name
        target.parent.mkdir(parents=True, exist_ok=True)
        run.write_text(target.relative_to(run.path).as_posix(), text)
