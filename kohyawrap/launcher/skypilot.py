"""A run as a SkyPilot task: kohyawrap does not provision clouds; SkyPilot does (many clouds, spot
instances with recovery, several nodes), and runs the very scripts kohyawrap runs over SSH.

:func:`skypilot_plan` plans a run again for a SkyPilot cluster (absolute work folder, processes
over nodes); :func:`build_task` turns that plan into a task: resources from the GPU preset
(``presets/gpus/*.toml`` ``skypilot``), ``setup`` = the rendered ``sdscripts.sh``, ``venv.sh`` and
``files.sh``, ``run`` = the rendered run wrapper ``run.sh``, the dataset, configs and an uploaded
base model as file mounts, outputs on the node (pulled back) or in a bucket, autostop. Pure: the
YAML is text built here (the field names are SkyPilot's, docs/sources.md [69]); nothing talks to
SkyPilot (that is :mod:`kohyawrap.hosts.skypilot`).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from kohyawrap.errors import UsageError
from kohyawrap.hosts.connect import ConnectOptions
from kohyawrap.launcher.layout import venv_fingerprint
from kohyawrap.launcher.request import TrainRequest, build_run_plan, disk_needed_gb
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.launcher.scripts import render_script
from kohyawrap.launcher.setup import HUB_SPEC
from kohyawrap.models_fetch import BASE_KEY, FetchFile, script_values

SKYPILOT_TARGET = "skypilot"
DEFAULT_WORK_DIR = "/kohyawrap"  # the same on every cloud's image, whatever its user's home
MAIN_PROCESS_PORT = 29500  # accelerate's default for the main process of a multi-node job
_EOF = "KOHYAWRAP_SCRIPT_END"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_BUCKET = re.compile(r"^(s3|gs|r2|cos|oci|az|https)://\S+$")


@dataclass(frozen=True)
class SkyOptions:
    """How the run is laid out on SkyPilot: nodes and GPUs, where outputs go, when to stop."""

    nodes: int = 1
    gpus_per_node: int = 1
    accelerator: str = ""  # SkyPilot's name; "" = the GPU preset's `skypilot`
    work_dir: str = DEFAULT_WORK_DIR
    idle_minutes: int | None = 30  # autostop after this long idle; None = never
    down: bool = False  # autodown instead of autostop (needs a bucket: nothing is pulled then)
    bucket: str = ""  # s3://... (or gs://, r2://, ...): outputs are written there
    spot: bool = False
    infra: str = ""  # aws, gcp/us-central1, runpod, ... ("" = SkyPilot chooses)
    disk_gb: int | None = None  # None = what the run needs, rounded up, at least 50 GB


def check_options(options: SkyOptions) -> None:
    """Refuse what SkyPilot could run but would lose the LoRA, or cannot run at all."""
    if options.nodes < 1 or options.gpus_per_node < 1:
        raise UsageError("--nodes and --gpus-per-node must be at least 1")
    if options.down and not options.bucket:
        raise UsageError(
            "--down tears the cluster down when it is idle: the checkpoints on its disk would go "
            "with it before anything pulls them",
            hint="add --bucket s3://... (outputs written there as they are saved), or leave --down "
            "out: autostop keeps the disk",
        )
    if options.bucket and not _BUCKET.match(options.bucket):
        raise UsageError(
            f"--bucket {options.bucket!r} is not a bucket URL",
            hint="e.g. s3://my-bucket/loras, gs://my-bucket, r2://my-bucket",
        )
    if not options.work_dir.startswith("/"):
        raise UsageError(
            f"--work-dir {options.work_dir!r} must be absolute on a SkyPilot node",
            hint=f"sd-scripts reads the paths in the config as written: e.g. {DEFAULT_WORK_DIR}",
        )


def request_from_plan(plan: RunPlan) -> TrainRequest:
    """The request that plans ``plan`` again (same spec, base model, dataset, sd-scripts)."""
    choices = {f.key: _as_typed(f) for f in plan.model_files}
    original = replace(
        plan.spec,
        base_model=choices.pop(BASE_KEY),
        companions=tuple(sorted(choices.items())),
        train_data_dir="dataset",
        output_dir="output",
        logging_dir="logs",
        tokenizer_cache_dir=None,
        reg_data_dir=None,
        processes=1,
        machines=1,
        scale_lr=False,
    )
    return TrainRequest(
        spec=original,
        dataset=Path(plan.dataset_root),
        setup=plan.setup,
        money=plan.money,
        pull_state=plan.pull_state,
        force=True,  # it was planned (and checked) once already
    )


def _as_typed(found: FetchFile) -> str:
    """A model file as a user would name it again: ``owner/repo/file``, a URL or a path."""
    if found.kind == "hf" and found.filename:
        return f"{found.source}/{found.filename}"
    return found.source


def skypilot_plan(plan: RunPlan, options: SkyOptions, now: datetime) -> RunPlan:
    """``plan`` planned again for SkyPilot: an absolute work folder (a node's user and home are
    the cloud's choice), and one training process per GPU of every node."""
    check_options(options)
    if not plan.setup.sd_scripts_path and not _COMMIT.match(plan.setup.ref):
        raise UsageError(
            f"sd-scripts ref {plan.setup.ref!r} is not a commit: a SkyPilot set-up clones a "
            "known commit (its folder is named after it)",
            hint="plan the run with --sd-scripts-ref <40-hex commit> (the default is the pinned one)",
        )
    request = request_from_plan(plan)
    processes = options.nodes * options.gpus_per_node
    spec = replace(request.spec, processes=processes, machines=options.nodes)
    spec = replace(spec, scale_lr=plan.spec.scale_lr and processes > 1)
    request = replace(request, spec=spec, work_dir=options.work_dir)
    return build_run_plan(request, target=SKYPILOT_TARGET, home="/", now=now)


def accelerator(plan: RunPlan, options: SkyOptions) -> str:
    """``RTX4090:1``: SkyPilot's name for the plan's GPU preset, and the count per node."""
    from kohyawrap.presets import load_catalog

    name = options.accelerator
    if not name:
        preset = load_catalog().gpu(plan.spec.gpu, plan.spec.vram_gb)
        name = preset.skypilot
        if not name:
            raise UsageError(
                f"GPU preset {plan.spec.gpu} has no SkyPilot accelerator name",
                hint="name one with --accelerator (`sky show-gpus` lists them), or add "
                f'skypilot = "NAME" to {preset.path}',
            )
    return f"{name}:{options.gpus_per_node}"


@dataclass(frozen=True)
class SkyTask:
    """A SkyPilot task for one run: its YAML and the files its file mounts read."""

    plan: RunPlan
    yaml: str
    files: dict[str, str]  # name in the files folder -> text (configs, plan.json)
    file_mounts: dict[str, str]  # node path -> local path


def build_task(plan: RunPlan, options: SkyOptions, files_dir: Path) -> SkyTask:
    """The task of a :func:`skypilot_plan` plan; ``files_dir`` is where :func:`write_task` puts
    the rendered configs (the file mounts name it absolutely)."""
    check_options(options)
    files = dict(sorted(plan.rendered.files.items()))
    files["plan.json"] = json.dumps(plan.to_json(), indent=2, sort_keys=True, ensure_ascii=False)
    mounts = {plan.layout.in_run(name): str(files_dir / name) for name in plan.rendered.files}
    mounts[plan.layout.in_run("dataset")] = plan.dataset_root
    for found in plan.model_files:
        if found.kind == "upload":
            mounts[found.remote_path] = found.source
    document: dict[str, Any] = {
        "name": _task_name(plan),
        "resources": _resources(plan, options),
        "num_nodes": options.nodes,
    }
    if any(f.kind == "hf" for f in plan.model_files):
        # Given at launch (`sky launch --secret HF_TOKEN`), never written in the task.
        document["secrets"] = {"HF_TOKEN": None}
    text = _yaml(
        document,
        mounts,
        {plan.layout.in_run("output"): options.bucket} if options.bucket else {},
        setup_script(plan),
        run_script(plan, options),
        plan,
    )
    return SkyTask(plan, text, files, mounts)


def _task_name(plan: RunPlan) -> str:
    # SkyPilot names: letters, digits, dashes; the run id keeps the LoRA's name readable.
    name = re.sub(r"[^a-z0-9-]+", "-", plan.run_id.lower()).strip("-")
    return f"kohyawrap-{name}"[:63].rstrip("-")


def _resources(plan: RunPlan, options: SkyOptions) -> dict[str, Any]:
    need = disk_needed_gb(plan, absent=plan.model_files, venv_present=False)
    disk = options.disk_gb if options.disk_gb is not None else max(50, int(need * 1.5) + 10)
    resources: dict[str, Any] = {"accelerators": accelerator(plan, options), "disk_size": disk}
    if options.infra:
        resources["infra"] = options.infra
    if options.spot:
        resources["use_spot"] = True
    if options.idle_minutes is not None:
        resources["autostop"] = {"idle_minutes": options.idle_minutes, "down": options.down}
    return resources


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _heredoc(path: str, text: str) -> str:
    # A value holding the end marker would end the script early (and run what follows it); a
    # control character would not survive the YAML block. Neither comes from kohyawrap itself.
    if _EOF in text or _CONTROL.search(text):
        raise UsageError(
            f"a path or option of this run holds {_EOF!r} or a control character: it cannot be "
            "written into a SkyPilot task",
            hint="rename the folder or file (or change the option) and plan the run again",
        )
    return f"cat >{path} <<'{_EOF}'\n{text.rstrip(chr(10))}\n{_EOF}\n"


def setup_script(plan: RunPlan) -> str:
    """The task's ``setup``: sd-scripts at the plan's commit, its environment, the base model —
    the scripts ``kohyawrap train`` runs over SSH, rendered for this plan, run in order."""
    from kohyawrap.hosts.base import quote

    opts, layout = plan.setup, plan.layout
    work = quote(layout.work)
    parts = [
        f"# kohyawrap {plan.kohyawrap_version}: set-up of run {plan.run_id} (the scripts\n"
        "# `kohyawrap train` runs over SSH, rendered for this run).\n",
        "set -euo pipefail\n",
        # The work folder is outside any home (the same path on every cloud): made with sudo
        # when the node's user may not write there.
        f"mkdir -p {work} 2>/dev/null || {{ sudo mkdir -p {work} && "
        f'sudo chown "$(id -u):$(id -g)" {work}; }}\n',
        "kw=$(mktemp -d)\n",
        _heredoc(
            '"$kw/sdscripts.sh"',
            render_script(
                "sdscripts",
                work=layout.work,
                repo=opts.repo,
                ref=opts.ref,
                sds_path=opts.sd_scripts_path,
            ),
        ),
        'bash "$kw/sdscripts.sh"\n',
    ]
    sds, python = environment_paths(plan)
    if not opts.sd_scripts_path:
        fingerprint = _fingerprint(plan)
        venv = render_script(
            "venv", sds=sds, venv=layout.venv(fingerprint), python=opts.python,
            torch_spec=opts.torch_spec, xformers="yes" if opts.xformers else "no",
            fingerprint=fingerprint, installer=opts.installer,
        )  # fmt: skip
        parts += [_heredoc('"$kw/venv.sh"', venv), 'bash "$kw/venv.sh"\n']
    fetched = [f for f in plan.model_files if f.kind in ("hf", "url")]
    if fetched:
        text = render_script(
            "files",
            **script_values(
                fetched, python=python, hf_home=posixpath.join(layout.models, "hf"),
                work=layout.work,
            ),
            hub_env="" if opts.sd_scripts_path else layout.hub_env(opts.python),
            hub_spec=HUB_SPEC,
        )  # fmt: skip
        # The token goes in on standard input, as over SSH (SkyPilot passes it as a secret).
        parts += [_heredoc('"$kw/files.sh"', text)]
        parts += ['printf \'%s\\n\' "${HF_TOKEN:-}" | bash "$kw/files.sh"\n']
    parts.append('rm -rf "$kw"\n')
    return "".join(parts)


def _fingerprint(plan: RunPlan) -> str:
    # The requirements are the commit's own, so the commit stands for them here.
    opts = plan.setup
    return venv_fingerprint(opts.ref, f"requirements of {opts.ref}", opts.torch_spec, opts.python)


def environment_paths(plan: RunPlan) -> tuple[str, str]:
    """(the sd-scripts checkout, the Python that trains) on a node, known before set-up runs:
    ``sdscripts.sh`` clones a commit into a folder named after it."""
    opts = plan.setup
    if opts.sd_scripts_path:
        return opts.sd_scripts_path, opts.python
    sds = plan.layout.sd_scripts(opts.ref)
    return sds, posixpath.join(plan.layout.venv(_fingerprint(plan)), "bin", "python")


def run_script(plan: RunPlan, options: SkyOptions) -> str:
    """The task's ``run`` (on every node): the run wrapper, in the foreground, so the SkyPilot
    job lasts as long as the training and ends with its exit code."""
    from kohyawrap.hosts.base import quote

    sds, python = environment_paths(plan)
    wrapper = render_script(
        "run", run_dir=plan.layout.run_dir, sds=sds, python=python,
        hf_home=posixpath.join(plan.layout.models, "hf"),
        accelerate_args=list(plan.rendered.accelerate_args),
        max_seconds=int(plan.money.max_hours * 3600) if plan.money.max_hours else 0,
        script=posixpath.join(sds, plan.rendered.script),
        visible_devices="", skypilot_nodes=options.nodes, main_process_port=MAIN_PROCESS_PORT,
    )  # fmt: skip
    return "".join(
        [
            f"# kohyawrap {plan.kohyawrap_version}: run {plan.run_id} (the run wrapper\n"
            "# `kohyawrap train` starts over SSH, in the foreground here).\n",
            "set -euo pipefail\n",
            f"cd {quote(plan.layout.run_dir)}\n",
            "mkdir -p output logs\n",
            _heredoc("run.sh", wrapper),
            # Started once per node: a task run again on the same cluster waits for that job.
            "if mkdir .launched 2>/dev/null; then\n",
            "    bash run.sh\n",
            "else\n",
            f'    echo "kohyawrap: run {plan.run_id} was already started here; waiting for it"\n',
            "    while [ ! -f exit_code ]; do sleep 10; done\n",
            "fi\n",
            'exit "$(cat exit_code)"\n',
        ]
    )


# ---------------------------------------------------------------------------------------------
# YAML, written by hand: scalars as JSON strings (valid YAML), scripts as literal blocks.


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(str(value), ensure_ascii=False)


def _mapping(data: dict[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{_scalar(key)}:")
            lines += _mapping(value, indent + 2)
        else:
            lines.append(f"{pad}{_scalar(key)}: {_scalar(value)}")
    return lines


def _block(text: str) -> list[str]:
    # Literal block: every line as it is, indented two spaces; "|" keeps one final newline.
    return ["|", *(f"  {line}" if line else "" for line in text.rstrip("\n").split("\n"))]


def _yaml(
    document: dict[str, Any],
    mounts: dict[str, str],
    buckets: dict[str, str],
    setup: str,
    run: str,
    plan: RunPlan,
) -> str:
    lines = [
        f"# SkyPilot task for kohyawrap run {plan.run_id} (written by `kohyawrap export skypilot`).",
        "# sky launch -c CLUSTER THIS.yaml   (add --secret HF_TOKEN for a gated Hugging Face model)",
    ]
    lines += _mapping(document, 0)
    lines.append("file_mounts:")
    lines += _mapping(dict(sorted(mounts.items())), 2)
    for path, bucket in buckets.items():
        # Checkpoints written into the bucket as sd-scripts saves them (cached, uploaded in the
        # background): an autodown loses nothing.
        lines.append(f"  {_scalar(path)}:")
        lines += _mapping({"source": bucket, "mode": "MOUNT_CACHED"}, 4)
    setup_lines, run_lines = _block(setup), _block(run)
    lines.append(f"setup: {setup_lines[0]}")
    lines += setup_lines[1:]
    lines.append(f"run: {run_lines[0]}")
    lines += run_lines[1:]
    return "\n".join(lines) + "\n"


def write_task(task: SkyTask, yaml_path: Path, files_dir: Path) -> None:
    """Write the YAML and the files its mounts read (atomically, each)."""
    from kohyawrap.fileio import atomic_write

    for name, text in task.files.items():
        atomic_write(files_dir / name, text)
    atomic_write(yaml_path, task.yaml)


def export_task(plan: RunPlan, options: SkyOptions, yaml_path: Path, now: datetime) -> SkyTask:
    """``kohyawrap export skypilot``: plan ``plan`` again for SkyPilot and write its task, with
    the configs in ``<yaml stem>-files/`` beside it."""
    files_dir = yaml_path.resolve().parent / f"{yaml_path.stem}-files"
    sky = skypilot_plan(plan, options, now)
    task = build_task(sky, options, files_dir)
    write_task(task, yaml_path, files_dir)
    return task


def plan_of(ref: str, runs_dir: Path) -> RunPlan:
    """The RunPlan ``ref`` names: a recorded run (id, prefix or folder), or a plan JSON file
    written by ``kohyawrap train --dry-run --json``. A recorded run gives the plan it started
    with: a resumed or extended leg's plan continues from a state the task would not have."""
    from kohyawrap.fileio import read_user_text
    from kohyawrap.launcher.runstore import RunStore

    path = Path(ref)
    if path.is_file():
        text = read_user_text(path, "the plan file", limit=64 * 1024 * 1024)
        try:
            return RunPlan.from_json(json.loads(text))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UsageError(
                f"{path} is not a kohyawrap plan ({type(err).__name__}: {err})",
                hint="write one with `kohyawrap train ... --dry-run --json > plan.json`, or name "
                "a recorded run",
            ) from err
    return RunStore(runs_dir).find(ref).run.load().original_plan


# ---------------------------------------------------------------------------------------------
# train --via skypilot: SkyPilot brings the machine up, kohyawrap trains on it over SSH


class Provisioner(Protocol):
    """What ``train --via skypilot`` needs of SkyPilot (kohyawrap.hosts.skypilot)."""

    def launch(self, cluster: str, task_yaml: str) -> Path: ...

    def autostop(self, cluster: str, idle_minutes: int, down: bool) -> None: ...


_CLUSTER = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_via(cluster: str, options: SkyOptions) -> None:
    """Refuse what a run followed over SSH cannot do on a SkyPilot cluster."""
    if not _CLUSTER.match(cluster):
        raise UsageError(
            f"--host {cluster!r} is not a SkyPilot cluster name",
            hint="lowercase letters, digits and dashes, starting with a letter (e.g. lora-1)",
        )
    if options.nodes > 1:
        raise UsageError(
            "--via skypilot trains on one machine; a job over several nodes runs as a SkyPilot task",
            hint="`kohyawrap export skypilot RUN -o task.yaml --nodes N`, then `sky launch task.yaml`",
        )
    if options.spot:
        raise UsageError(
            "--spot with --via skypilot: a preempted machine would take the run with it",
            hint="`kohyawrap export skypilot RUN -o task.yaml --spot`, then `sky jobs launch "
            "task.yaml` (SkyPilot's managed jobs recover spot machines)",
        )


def provision_task(gpu: str, vram_gb: float | None, options: SkyOptions, cluster: str) -> str:
    """The task ``sky launch`` gets for ``--via skypilot``: resources only (the GPU preset's
    accelerator, the disk), no set-up and no run: kohyawrap does those over SSH. No autostop
    either: it is set once every checkpoint is verified on the laptop."""
    if gpu == "auto":
        raise UsageError(
            "--via skypilot rents the GPU: name its preset with --gpu (e.g. --gpu rtx4090)",
            hint="or give SkyPilot's name with --accelerator",
        )
    from kohyawrap.presets import load_catalog

    name = options.accelerator or load_catalog().gpu(gpu, vram_gb).skypilot
    if not name:
        raise UsageError(
            f"GPU preset {gpu} has no SkyPilot accelerator name",
            hint="name one with --accelerator (`sky show-gpus` lists them)",
        )
    resources: dict[str, Any] = {
        "accelerators": f"{name}:{options.gpus_per_node}",
        "disk_size": options.disk_gb or 100,
    }
    if options.infra:
        resources["infra"] = options.infra
    lines = [f"# kohyawrap train --via skypilot: cluster {cluster}", f"name: {_scalar(cluster)}"]
    lines += ["resources:", *_mapping(resources, 2)]
    return "\n".join(lines) + "\n"


def connect_to_cluster(connect: ConnectOptions, ssh_config: Path) -> ConnectOptions:
    """How to reach the cluster: SkyPilot's SSH config entry for it, and its host key taken on
    first sight (the machine did not exist before SkyPilot made it: no key could be known) and
    recorded, so every later connection (attach, pull) checks it."""
    return replace(connect, ssh_config=str(ssh_config), trust_new_host=True)


def provision(
    request: TrainRequest,
    cluster: str,
    connect: ConnectOptions,
    options: SkyOptions,
    provisioner: Provisioner | None,
) -> ConnectOptions:
    """``sky launch`` the cluster for ``request`` (nothing is rented before the request is
    checked); returns how to connect to it. Without a provisioner (a dry run) only the checks
    are made."""
    from kohyawrap.launcher.request import check_request

    check_via(cluster, options)
    request = check_request(request)
    task = provision_task(request.spec.gpu, request.spec.vram_gb, options, cluster)
    if provisioner is None:
        return connect
    return connect_to_cluster(connect, provisioner.launch(cluster, task))


def after_pull(cluster: str, options: SkyOptions, provisioner: Provisioner) -> str:
    """Once the run finished and every checkpoint is verified here: autostop (or autodown) the
    cluster; returns what was done, for the user."""
    if options.idle_minutes is None:
        return f"cluster {cluster} keeps running: `sky down {cluster}` when you are done"
    provisioner.autostop(cluster, options.idle_minutes, options.down)
    what = "torn down" if options.down else "stopped"
    return f"cluster {cluster} will be {what} after {options.idle_minutes} idle minutes"
