"""SETUP, MODEL and UPLOAD: make the host ready to train, and the checks that come before.

MODEL puts every model file in the host's shared model cache (``<work>/models``): the base model
and the files its family loads beside it, uploaded from the laptop or downloaded on the host.

Each step is idempotent: run again on the same host it finds its work done and skips it
(fingerprinted venv, cached clone and model, incremental upload), so a step cut by a dropped
connection is simply run again.
"""

from __future__ import annotations

import posixpath
import re
from collections import deque
from collections.abc import Callable
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
from kohyawrap.models_fetch import BASE_KEY, FetchFile, script_values

# Lines of pip / uv output worth showing while an environment is built.
_INSTALL_PROGRESS = re.compile(
    r"^(Collecting|Downloading|Installing collected|Successfully installed|Resolved|Prepared|"
    r"Installed|Building wheel|Using cached)\b"
    # ... and why an installer failed (pip's ERROR:, uv's error: and its "x" explanations), so
    # a uv failure that pip then replaces is not silent.
    r"|^(ERROR:|error:|×|╰─▶)"
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
    host: Host,
    name: str,
    hint: str,
    reporter: Reporter,
    *,
    stdin: bytes | None = None,
    explain: Callable[[list[str]], str | None] = lambda lines: None,
    **values: object,
) -> dict[str, str]:
    """Like :func:`_run_script`, showing the install's progress lines as they come; on failure
    ``explain`` may turn the last lines into a better hint."""
    script = render_script(name, **values)
    found: dict[str, str] = {}
    lines: deque[str] = deque(maxlen=40)
    pending = b""
    try:
        for chunk in host.stream(script, check=True, stdin=stdin):
            pending += chunk
            # tqdm redraws its bar with \r: each frame is a line of its own here.
            *complete, pending = re.split(rb"\r\n|\r|\n", pending)
            for raw in complete:
                line = raw.decode("utf-8", "replace")
                if line.strip():
                    lines.append(line)
                _show_progress(line, found, reporter, name)
    except RemoteCommandError as err:
        raise RemoteCommandError(
            f"{name}.sh (host set-up)",
            err.returncode,
            "\n".join(lines),
            hint=explain(list(lines)) or hint,
        ) from err
    return found


def _explain_install(host: Host, torch_spec: str) -> Callable[[list[str]], str | None]:
    """A failed install's diagnosis (asking the host for its driver's CUDA only then)."""
    from kohyawrap.launcher.installfail import diagnose_install

    def explain(lines: list[str]) -> str | None:
        problem = diagnose_install(lines, torch_spec=torch_spec, driver_cuda=driver_cuda(host))
        return f"{problem.message}: {problem.hint}" if problem else None

    return explain


def driver_cuda(host: Host) -> str | None:
    """The CUDA version the host's NVIDIA driver supports (nvidia-smi's header), or None."""
    try:
        out = host.run("nvidia-smi 2>/dev/null | grep -m 1 'CUDA Version'", check=False).stdout
    except HostError:
        return None
    m = re.search(r"CUDA Version:\s*([0-9.]+)", out)
    return m[1] if m else None


# A tqdm frame: " 45%|####5     | 3.12G/6.94G [00:31<00:38, 100MB/s]"
_TQDM = re.compile(r"\d+%\|.*\|\s*([\d.]+)([kMGT]?)B?/([\d.]+)([kMGT]?)B?")
_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def _show_progress(line: str, found: dict[str, str], reporter: Reporter, name: str) -> None:
    if line.startswith("KW ") and "=" in line:
        key, _, value = line[3:].partition("=")
        key, value = key.strip(), value.strip()
        found[key] = value
        if key == "step":
            reporter.info(f"installing: {value}")
        elif key == "fallback":
            reporter.info(value)
        elif key == "progress" and value.count(" ") == 1:
            got, size = (int(x) for x in value.split())
            reporter.transfer(f"{name} download", got, max(got, size))
        return
    text = line.strip()
    frame = _TQDM.search(text)
    if frame:
        done = round(float(frame[1]) * _UNITS[frame[2]])
        total = round(float(frame[3]) * _UNITS[frame[4]])
        reporter.transfer(f"{name} download", done, max(done, total))
    elif _INSTALL_PROGRESS.match(text):
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
        explain=_explain_install(host, opts.torch_spec),
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


# The huggingface_hub that sd-scripts pins (requirements.txt at the pinned commit): the base model
# is downloaded while sd-scripts installs, by this version in a small environment of its own.
HUB_SPEC = "huggingface_hub==0.34.3"


@dataclass(frozen=True)
class FilesFetched:
    """How each model file came to be on the host: ``cached``, ``downloaded``, ``uploaded`` or
    ``in place`` (a local file used where it is), by key (``pretrained_model_name_or_path``,
    ``clip_l``, ...)."""

    how: dict[str, str]

    @property
    def base(self) -> str:
        return self.how.get(BASE_KEY, "?")


def ensure_files(
    host: Host, plan: RunPlan, reporter: Reporter, hf_token: str | None
) -> FilesFetched:
    """Make every model file exist at its planned host path: uploads are sent (only what is not
    there yet), then ``files.sh`` downloads the repo files and URLs into the shared model cache.

    Needs nothing of SETUP, so it runs beside it: downloads use the host's Python, with a small
    huggingface_hub environment of its own when that Python lacks one. Idempotent (a file
    already there is kept), so it is simply run again after a dropped connection. The Hugging
    Face token travels on the script's standard input only.
    """
    files = plan.model_files
    reporter.stage("model", ", ".join(_label(f.key) for f in files))
    how = {f.key: "in place" for f in files if f.in_place}
    uploads = [f for f in files if f.kind == "upload" and not f.in_place]
    how.update(_send_uploads(host, uploads, reporter))
    fetched = [f for f in files if f.kind in ("hf", "url")]
    if fetched:
        how.update(_fetch(host, plan, fetched, reporter, hf_token))
    return FilesFetched({f.key: how.get(f.key, "?") for f in files})


def _label(key: str) -> str:
    return "base model" if key == BASE_KEY else key


def _send_uploads(host: Host, uploads: list[FetchFile], reporter: Reporter) -> dict[str, str]:
    """Upload local model files into the host's cache (each named by its content hash)."""
    how: dict[str, str] = {}
    for f in uploads:
        folder, name = posixpath.split(f.remote_path)
        stats = host.upload_tree(
            {name: Path(f.source)},
            folder,
            progress=_transfer(reporter, _label(f.key)),
            sidecars=True,  # a warm run reads <file>.sha256 instead of hashing gigabytes
        )
        how[f.key] = "uploaded" if stats.files_sent else "cached"
    return how


def _transfer(reporter: Reporter, label: str) -> Callable[[int, int], None]:
    return lambda done, total: reporter.transfer(label, done, total)


def _fetch(
    host: Host,
    plan: RunPlan,
    files: list[FetchFile],
    reporter: Reporter,
    hf_token: str | None,
) -> dict[str, str]:
    """Download repo files and URLs on the host with files.sh; returns key -> cached|downloaded."""
    known = sum(f.size_gb or 0.0 for f in files)
    reporter.info(
        f"fetching {len(files)} model file(s) on the host"
        + (f" (up to {known:.1f} GB; a file already there is kept)" if known else "")
    )
    # The token travels on the command's standard input (one line, empty without a token),
    # never in a file, an argument or the environment.
    token = (hf_token or "").encode() + b"\n"
    found = _stream_script(
        host,
        "files",
        "check the repo ids / URLs, the token (HF_TOKEN or --hf-token-file, for gated repos) and "
        "the host's disk space",
        reporter,
        stdin=token,
        **script_values(
            files,
            python=plan.setup.python,
            hf_home=posixpath.join(plan.layout.models, "hf"),
            work=plan.layout.work,
        ),
        hub_env="" if plan.setup.sd_scripts_path else plan.layout.hub_env(plan.setup.python),
        hub_spec=HUB_SPEC,
    )
    return {f.key: found.get(f"file.{f.key}", "?") for f in files}


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
    target = plan.layout.in_run("dataset")
    host.run(
        sh("python3", "-c", _PRUNE, cache)
        + f" && mkdir -p {sh(plan.layout.run_dir)} && rm -rf {sh(target)}"
        + f" && cp -al {sh(cache)} {sh(target)}",
        stdin=keep,
    )
    return UploadRecord(stats.files_sent, stats.bytes_sent, stats.files_total, stats.bytes_total)


def run_files(plan: RunPlan, sd_scripts: str) -> dict[str, str]:
    """The run's rendered files, launch.sh pointing at the checkout SETUP found (the planned
    one, unless a branch was asked for: its commit is known only now)."""
    from kohyawrap.render import relaunch

    return dict(relaunch(plan.rendered, sd_scripts).files)


def upload_run_files(host: Host, plan: RunPlan, sd_scripts: str, python: str) -> None:
    """The rendered configs and the run wrapper, into the run folder."""
    # Beside each other in the working directory: the training config names the sample prompts
    # and dataset config by bare file name, which sd-scripts resolves against its cwd.
    files = {name: (text.encode(), 0o644) for name, text in run_files(plan, sd_scripts).items()}
    wrapper = render_script(
        "run",
        run_dir=plan.layout.run_dir,
        sds=sd_scripts,
        python=python,
        hf_home=posixpath.join(plan.layout.models, "hf"),
        accelerate_args=list(plan.rendered.accelerate_args),
        script=posixpath.join(sd_scripts, plan.rendered.script),
        visible_devices=plan.gpus.visible,  # train --gpus: the GPU(s) this job is pinned to
    )
    files["run.sh"] = (wrapper.encode(), 0o755)
    files["gpu_sample.sh"] = (render_script("gpu_sample").encode(), 0o755)
    put_files(host, plan.layout.run_dir, files, mkdirs=("output", "logs"))


def put_files(
    host: Host, folder: str, files: dict[str, tuple[bytes, int]], *, mkdirs: tuple[str, ...] = ()
) -> None:
    """Write small files (name -> bytes, mode) into ``folder`` in ONE command: a tar made here.

    One round trip instead of one per file: a warm run's launch waits on these.
    """
    import io
    import tarfile
    import time

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    dirs = " ".join(sh(posixpath.join(folder, d)) for d in (".", *mkdirs))
    host.run(
        f"mkdir -p {dirs} && tar -x --no-same-owner -f - -C {sh(folder)}", stdin=buf.getvalue()
    )


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
    absent = [f for f in plan.model_files if not f.in_place and host.stat(f.remote_path) is None]
    check_disk(facts, disk_needed_gb(plan, absent=absent, venv_present=bool(facts.venvs)))
