"""SETUP, MODEL and UPLOAD: make the host ready to train, and the checks that come before.

Each step is idempotent: run again on the same host it finds its work done and skips it
(fingerprinted venv, cached clone and model, incremental upload), so a step cut by a dropped
connection is simply run again.
"""

from __future__ import annotations

import posixpath
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from kohyawrap.errors import HostError, RemoteCommandError, UsageError
from kohyawrap.hosts.base import Host, sh
from kohyawrap.hosts.facts import HostFacts, check_disk
from kohyawrap.launcher.layout import venv_fingerprint
from kohyawrap.launcher.manifest import UploadRecord
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.launcher.scripts import parse_kv, render_script

# Lines of pip / uv output worth showing while an environment is built.
_INSTALL_PROGRESS = re.compile(
    r"^(Collecting|Downloading|Installing collected|Successfully installed|Resolved|Prepared|"
    r"Installed|Building wheel|Using cached)\b"
)
_MAX_SHOWN = 160  # characters of one progress line


@dataclass(frozen=True)
class Environment:
    """The sd-scripts checkout and Python that will run the training."""

    sd_scripts: str
    commit: str
    python: str
    fingerprint: str
    torch_version: str
    cached: bool
    installer: str


def _run_script(host: Host, name: str, hint: str, **values: object) -> dict[str, str]:
    script = render_script(name, **values)
    try:
        result = host.run(script, check=True)
    except RemoteCommandError as err:
        raise RemoteCommandError(
            f"{name}.sh (host set-up)", err.returncode, err.output, hint=hint
        ) from err
    return parse_kv(result.stdout)


def _stream_script(
    host: Host, name: str, hint: str, reporter: Reporter, **values: object
) -> dict[str, str]:
    """Like :func:`_run_script`, showing the install's progress lines as they come."""
    script = render_script(name, **values)
    found: dict[str, str] = {}
    lines: deque[str] = deque(maxlen=40)
    pending = b""
    try:
        for chunk in host.stream(script, check=True):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                lines.append(line)
                _show_progress(line, found, reporter)
    except RemoteCommandError as err:
        raise RemoteCommandError(
            f"{name}.sh (host set-up)", err.returncode, "\n".join(lines), hint=hint
        ) from err
    return found


def _show_progress(line: str, found: dict[str, str], reporter: Reporter) -> None:
    if line.startswith("KW ") and "=" in line:
        key, _, value = line[3:].partition("=")
        found[key.strip()] = value.strip()
        if key.strip() == "step":
            reporter.info(f"installing: {value.strip()}")
        elif key.strip() == "fallback":
            reporter.info(value.strip())
        return
    text = line.strip()
    if _INSTALL_PROGRESS.match(text):
        reporter.info(text[:_MAX_SHOWN])


def prepare_environment(host: Host, plan: RunPlan, reporter: Reporter) -> Environment:
    """Clone sd-scripts at the pinned commit and build (or reuse) its venv."""
    opts = plan.setup
    where = f"the checkout at {opts.sd_scripts_path}" if opts.sd_scripts_path else opts.repo
    reporter.stage("setup", f"sd-scripts {opts.ref[:12]} from {where}")
    found = _run_script(
        host,
        "sdscripts",
        "check --sd-scripts-repo / --sd-scripts-ref, and that git works on the host",
        work=plan.layout.work,
        repo=opts.repo,
        ref=opts.ref,
        sds_path=opts.sd_scripts_path,
    )
    sds, commit = found["sds"], found["commit"]
    reporter.info(f"sd-scripts {commit[:12]} ({found.get('clone', '?')}) at {sds}")
    if opts.sd_scripts_path:
        # A provider template or the user's own checkout: its environment is used as it is.
        return Environment(
            sds, commit, opts.python, "preinstalled", "unknown", True, "preinstalled"
        )
    fingerprint = venv_fingerprint(
        commit, found["requirements_sha256"], opts.torch_spec, opts.python
    )
    info = _stream_script(
        host,
        "venv",
        "the install failed: see the output above; --torch-spec chooses the torch wheels and "
        "--installer pip avoids uv",
        reporter,
        sds=sds,
        venv=plan.layout.venv(fingerprint),
        python=opts.python,
        torch_spec=opts.torch_spec,
        xformers="yes" if opts.xformers else "no",
        fingerprint=fingerprint,
        installer=opts.installer,
    )
    cached = info.get("venv") == "cached"
    installer = info.get("installer", "")
    reporter.info(
        f"environment {fingerprint} ({'reused' if cached else 'installed with ' + installer}), "
        f"torch {info.get('torch_version')}"
    )
    python = posixpath.join(plan.layout.venv(fingerprint), "bin", "python")
    return Environment(
        sds, commit, python, fingerprint, info.get("torch_version", "none"), cached, installer
    )


_PACKAGES = (
    "import importlib.metadata as m\n"
    "names = {f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions() if d.metadata['Name']}\n"
    "print('\\n'.join(sorted(names, key=str.lower)))\n"
)


def packages(host: Host, python: str) -> tuple[str, ...]:
    """Every installed distribution as ``name==version``, whichever installer built it."""
    result = host.run(sh(python, "-c", _PACKAGES), check=False, timeout=120)
    return tuple(line for line in result.stdout.splitlines() if line.strip())


def ensure_model(
    host: Host, plan: RunPlan, env: Environment, reporter: Reporter, hf_token: str | None
) -> str:
    """Make the base model exist at its planned host path; returns how ("cached", ...)."""
    model = plan.model
    reporter.stage("model", f"{model.kind}: {model.source}")
    if model.in_place:
        return "in place"
    if model.kind == "upload":
        folder, name = posixpath.split(model.remote_path)
        stats = host.upload_tree(
            {name: Path(model.source)},
            folder,
            progress=lambda d, t: reporter.transfer("base model", d, t),
        )
        return "uploaded" if stats.files_sent else "cached"
    script = render_script(
        "model",
        python=env.python,
        kind=model.kind,
        source=model.source,
        filename=model.filename,
        dest=model.remote_path,
        hf_home=posixpath.join(plan.layout.models, "hf"),
        work=plan.layout.work,
    )
    # The token travels on the command's standard input, never in a file or an argument.
    token = (hf_token or "").encode() + b"\n" if model.kind == "hf" else None
    try:
        result = host.run(script, stdin=token, check=True)
    except RemoteCommandError as err:
        raise RemoteCommandError(
            "model.sh (base model download)",
            err.returncode,
            err.output,
            hint="check the repo id / URL, the token (HF_TOKEN) and the host's disk space",
        ) from err
    return parse_kv(result.stdout).get("model", "?")


_PRUNE = r"""
import os, sys
root = sys.argv[1]
keep = set(p for p in sys.stdin.buffer.read().decode("utf-8").split("\0") if p)
for base, dirs, files in os.walk(root, topdown=False):
    for name in files:
        rel = os.path.relpath(os.path.join(base, name), root).replace(os.sep, "/")
        if rel not in keep:
            os.remove(os.path.join(base, name))
    for name in dirs:
        path = os.path.join(base, name)
        if not os.listdir(path):
            os.rmdir(path)
"""


def upload_dataset(host: Host, plan: RunPlan, reporter: Reporter) -> UploadRecord:
    """Sync the dataset into the host's dataset cache, then snapshot it into the run folder.

    The cache makes a re-upload of an unchanged dataset free; the hard-link snapshot keeps the
    run's own copy fixed even if a later upload changes the cache.
    """
    reporter.stage("upload", f"{len(plan.dataset_files)} files")
    files = {rel: Path(local) for rel, local in plan.dataset_files.items()}
    cache = plan.dataset_cache
    stats = host.upload_tree(files, cache, progress=lambda d, t: reporter.transfer("dataset", d, t))
    keep = "\0".join(sorted(files)).encode()
    host.run(sh("python3", "-c", _PRUNE, cache), stdin=keep)
    target = plan.layout.in_run("dataset")
    host.run(
        f"mkdir -p {sh(plan.layout.run_dir)} && rm -rf {sh(target)} && cp -al {sh(cache)} {sh(target)}"
    )
    return UploadRecord(stats.files_sent, stats.bytes_sent, stats.files_total, stats.bytes_total)


def upload_run_files(host: Host, plan: RunPlan, sd_scripts: str, python: str) -> None:
    """The rendered configs and the run wrapper, into the run folder."""
    for name, text in sorted(plan.rendered.files.items()):
        # Beside each other in the working directory: the training config names the sample prompts
        # and dataset config by bare file name, which sd-scripts resolves against its cwd.
        host.put_bytes(text.encode(), plan.layout.in_run(name))
    wrapper = render_script(
        "run",
        run_dir=plan.layout.run_dir,
        sds=sd_scripts,
        python=python,
        hf_home=posixpath.join(plan.layout.models, "hf"),
        accelerate_args=list(plan.rendered.accelerate_args),
        max_seconds=int(plan.money.max_hours * 3600) if plan.money.max_hours else 0,
        script=posixpath.join(sd_scripts, plan.rendered.script),
        visible_devices=plan.gpus.visible,  # train --gpus: the GPU(s) this job is pinned to
    )
    host.put_bytes(wrapper.encode(), plan.layout.in_run("run.sh"), mode=0o755)
    host.run(f"mkdir -p {sh(plan.layout.in_run('output'))} {sh(plan.layout.in_run('logs'))}")


# ---------------------------------------------------------------------------------------------
# Preflight: refuse a host that cannot run the plan, before anything is installed or uploaded

_CHECK_PYTHON = """
import sys
print("version=%d.%d.%d" % sys.version_info[:3])
if sys.version_info < (3, 10):
    sys.exit(3)
missing = []
for name in sys.argv[1:]:
    try:
        __import__(name)
    except Exception as err:
        missing.append("%s (%s)" % (name, type(err).__name__))
print("missing=" + ", ".join(missing))
"""
# What the run wrapper starts first in a pre-installed environment (--sd-scripts-path): it imports
# torch and the rest of what training needs.
_PREINSTALLED_NEEDS = ("accelerate.commands.launch",)
_VENV_NEEDS = ("venv", "ensurepip")  # `python -m venv` (Debian splits these into python3-venv)


def check_python(host: Host, plan: RunPlan, facts: HostFacts) -> str:
    """The host's interpreter exists, is 3.10+ and has what the run needs; returns its version."""
    python, opts = plan.setup.python, plan.setup
    uv = opts.installer == "uv" or (opts.installer == "auto" and facts.uv_version is not None)
    needs: tuple[str, ...] = _VENV_NEEDS if not uv else ()
    command = sh(python, "-c", _CHECK_PYTHON, *needs)
    if opts.sd_scripts_path:
        # As the run wrapper runs it: from the checkout, with the checkout on the import path.
        needs = _PREINSTALLED_NEEDS
        path = sh(opts.sd_scripts_path)
        command = f"cd {path} && PYTHONPATH={path} " + sh(python, "-c", _CHECK_PYTHON, *needs)
    result = host.run(command, check=False, timeout=120)
    values = parse_kv("\n".join("KW " + line for line in result.stdout.splitlines()))
    version = values.get("version")
    if version is None:
        raise UsageError(
            f"--python {python!r} does not run on {host.label}",
            evidence=(result.stdout + result.stderr).strip().splitlines()[-3:],
            hint="name an interpreter that exists on the host (e.g. python3, /usr/bin/python3.11)",
        )
    if result.exit_code == 3:
        raise UsageError(
            f"--python {python!r} on {host.label} is Python {version}; sd-scripts needs 3.10 or newer"
        )
    missing = values.get("missing", "")
    if missing and plan.setup.sd_scripts_path:
        raise UsageError(
            f"--python {python!r} on {host.label} cannot import what sd-scripts needs: {missing}",
            hint="with --sd-scripts-path, --python must be the interpreter of that checkout's environment",
        )
    if missing:
        raise UsageError(
            f"--python {python!r} on {host.label} cannot make a virtual environment: {missing}",
            hint="install the python3-venv package on the host (apt-get install python3-venv)",
        )
    return version


def preflight(
    host: Host, plan: RunPlan, facts: HostFacts, reporter: Reporter, *, force: bool
) -> None:
    """Refuse a host that cannot run the plan, with the numbers: before anything is spent."""
    from kohyawrap.launcher.request import disk_needed_gb

    for note in facts.notes():
        reporter.info(note)
    if not facts.git_version and not plan.setup.sd_scripts_path:
        raise HostError(f"no git on {host.label}", hint="install git, or use --sd-scripts-path")
    if not facts.gpus and not plan.spec.cpu and not force:
        raise HostError(
            f"{host.label} has no NVIDIA GPU that nvidia-smi can see",
            hint="check the driver, or --force to start anyway"
            + ("" if plan.smoke else "; --smoke tests the whole chain on the CPU"),
        )
    reporter.info(f"python {check_python(host, plan, facts)} ({plan.setup.python})")
    model_present = plan.model.in_place or host.stat(plan.model.remote_path) is not None
    check_disk(
        facts, disk_needed_gb(plan, model_present=model_present, venv_present=bool(facts.venvs))
    )
