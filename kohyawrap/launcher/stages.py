"""The stages of a run on a host: SETUP -> MODEL -> UPLOAD -> TRAIN (detached).

Each stage is idempotent: run again on the same host it finds its work done and skips it
(fingerprinted venv, cached clone and model, incremental upload).
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass
from pathlib import Path

from kohyawrap.errors import HostError, RemoteCommandError
from kohyawrap.hosts.base import Host, TransferStats, sh
from kohyawrap.hosts.facts import HostFacts
from kohyawrap.launcher.layout import venv_fingerprint
from kohyawrap.launcher.report import Reporter
from kohyawrap.launcher.runplan import RunPlan
from kohyawrap.launcher.scripts import parse_kv, render_script


@dataclass(frozen=True)
class Environment:
    """The sd-scripts checkout and Python that will run the training."""

    sd_scripts: str
    commit: str
    python: str
    fingerprint: str
    torch_version: str
    cached: bool


def _run_script(host: Host, name: str, hint: str, **values: object) -> dict[str, str]:
    script = render_script(name, **values)
    try:
        result = host.run(script, check=True)
    except RemoteCommandError as err:
        raise RemoteCommandError(
            f"{name}.sh (host setup)", err.returncode, err.output, hint=hint
        ) from err
    return parse_kv(result.stdout)


def prepare_environment(host: Host, plan: RunPlan, reporter: Reporter) -> Environment:
    """Clone sd-scripts at the pinned commit and build (or reuse) its venv."""
    opts = plan.setup
    reporter.stage("setup", f"sd-scripts {opts.ref[:12]} from {opts.repo}")
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
        # A provider template: its environment is used as it is, nothing installed.
        return Environment(sds, commit, opts.python, "preinstalled", "unknown", True)
    fingerprint = venv_fingerprint(
        commit, found["requirements_sha256"], opts.torch_spec, opts.python
    )
    venv = plan.layout.venv(fingerprint)
    info = _run_script(
        host,
        "venv",
        "the install failed: see the output above; --torch-spec chooses the torch wheels",
        sds=sds,
        venv=venv,
        python=opts.python,
        torch_spec=opts.torch_spec,
        xformers="yes" if opts.xformers else "no",
        fingerprint=fingerprint,
    )
    cached = info.get("venv") == "cached"
    reporter.info(
        f"environment {fingerprint} ({'reused' if cached else 'installed'}), torch {info.get('torch_version')}"
    )
    return Environment(
        sds,
        commit,
        posixpath.join(venv, "bin", "python"),
        fingerprint,
        info.get("torch_version", "none"),
        cached,
    )


def ensure_model(
    host: Host, plan: RunPlan, env: Environment, reporter: Reporter, hf_token: str | None
) -> str:
    """Make the base model exist at its planned host path; returns how ("cached", ...)."""
    model = plan.model
    reporter.stage("model", f"{model.kind}: {model.source}")
    if model.kind == "upload":
        folder, name = posixpath.split(model.remote_path)
        stats = host.upload_tree(
            {name: Path(model.source)},
            folder,
            progress=lambda d, t: reporter.transfer("base model", d, t),
        )
        return "uploaded" if stats.files_sent else "cached"
    token_file = ""
    if hf_token and model.kind == "hf":
        # The token travels over the SFTP/stdin channel into a 0600 file; the script deletes it.
        token_file = posixpath.join(plan.layout.work, f".hf-token-{plan.run_id}")
        host.put_bytes(hf_token.encode() + b"\n", token_file, mode=0o600)
    found = _run_script(
        host,
        "model",
        "check the repo id / URL, the token (HF_TOKEN) and the host's disk space",
        python=env.python,
        kind=model.kind,
        source=model.source,
        filename=model.filename,
        dest=model.remote_path,
        token_file=token_file,
        hf_home=posixpath.join(plan.layout.models, "hf"),
    )
    return found.get("model", "?")


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


def upload_dataset(host: Host, plan: RunPlan, reporter: Reporter) -> TransferStats:
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
    return stats


def upload_run_files(host: Host, plan: RunPlan, env: Environment) -> None:
    """The rendered configs and the run wrapper, into the run folder."""
    for name, text in sorted(plan.rendered.files.items()):
        # Beside each other in the working directory: the training config names the sample prompts
        # and dataset config by bare file name, which sd-scripts resolves against its cwd.
        host.put_bytes(text.encode(), plan.layout.in_run(name))
    wrapper = render_script(
        "run",
        run_dir=plan.layout.run_dir,
        sds=env.sd_scripts,
        python=env.python,
        hf_home=posixpath.join(plan.layout.models, "hf"),
        accelerate_args=list(plan.rendered.accelerate_args),
        max_seconds=int(plan.max_hours * 3600) if plan.max_hours else 0,
        script=posixpath.join(env.sd_scripts, plan.rendered.script),
    )
    host.put_bytes(wrapper.encode(), plan.layout.in_run("run.sh"), mode=0o755)
    host.run(f"mkdir -p {sh(plan.layout.in_run('output'))} {sh(plan.layout.in_run('logs'))}")


def launch(host: Host, run_dir: str, *, wait_seconds: float = 20.0) -> int:
    """Start the run wrapper detached (own session, no terminal) and return its pid."""
    pid_file = posixpath.join(run_dir, "run.pid")
    if host.stat(pid_file) is not None:
        raise HostError(
            f"{run_dir} was already launched", hint="use `kohyawrap attach` to follow it"
        )
    host.run(f"cd {sh(run_dir)} && setsid -f nohup bash run.sh >/dev/null 2>&1 </dev/null")
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        text = host.run(f"cat {sh(pid_file)} 2>/dev/null || true").stdout.strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.1)
    raise HostError(f"the run did not start within {wait_seconds:.0f} s (no {pid_file})")


def preflight(
    host: Host, plan: RunPlan, facts: HostFacts, reporter: Reporter, *, force: bool
) -> None:
    """Refuse a host that cannot run the plan, with the numbers: before anything is installed."""
    from kohyawrap.hosts.facts import check_disk
    from kohyawrap.launcher.request import disk_needed_gb

    for note in facts.notes():
        reporter.info(note)
    if not facts.python_version:
        raise HostError(
            f"no python3 on {host.label}", hint="install python3 (3.10+) or pass --python"
        )
    if not facts.git_version and not plan.setup.sd_scripts_path:
        raise HostError(f"no git on {host.label}", hint="install git, or use --sd-scripts-path")
    if not facts.gpus and not plan.spec.cpu and not force:
        raise HostError(
            f"{host.label} has no NVIDIA GPU that nvidia-smi can see",
            hint="check the driver, use --smoke to test the chain on the CPU, or --force to start anyway",
        )
    model_present = host.stat(plan.model.remote_path) is not None
    check_disk(
        facts, disk_needed_gb(plan, model_present=model_present, venv_present=bool(facts.venvs))
    )
