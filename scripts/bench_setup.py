#!/usr/bin/env python3
"""Benchmark set-up: connect -> training launched (warm), and a cold set-up with the real
sd-scripts requirements (--cold).

Warm (default): `kohyawrap train` on a fresh host and then again on the set-up one (loopback
sshd, the fake sd-scripts repo from the tests). Baseline in the same run: one OpenSSH
`ssh host true`. Targets: the second run launches in <= 15 s; with --model-mb 2000 (a 2 GB local
base model, hashed once and checked on the host through its sidecar) in <= 4 s.

Cold (--cold): the real sd-scripts at the pinned commit (--sd-scripts-repo: a clone or mirror
holding it) installed for real with its requirements.txt, on a loopback sshd behind a relay that
adds --rtt, with an empty package cache, a --model-mb base model downloaded by the host from a
local HTTP server capped at --host-mbps, and a dataset of --dataset-mb uploaded from here.
The same run times, each on a bare work dir:
  * sequential: pip install, then the model download, then the upload (set-up before PREPARE);
  * overlapped: PREPARE (install with uv when the host has it | download | upload at once).
It reports connect -> ready to train for both and their ratio (target <= 0.5x). It downloads
packages from the package index and takes minutes: run it by hand, not in CI. A CPU torch keeps
it within a machine without a GPU: pass --torch-spec with a CPU build, e.g.
  --torch-spec "torch==2.13.0+cpu --find-links /path/to/wheels"

Run from the repository root:
  .venv/bin/python scripts/bench_setup.py [--runs 3] [--model-mb 2000]
  .venv/bin/python scripts/bench_setup.py --cold --sd-scripts-repo ../sd-scripts --torch-spec ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.fakesds import build_fake_sdscripts  # noqa: E402
from tests.fixtures.sshd import Sshd, TcpRelay, running_sshd  # noqa: E402

TARGET_S = 15.0
TARGET_BIG_MODEL_S = 4.0
TARGET_COLD_RATIO = 0.5


def launch_seconds(runs_dir: Path) -> float:
    """connect -> launched for the newest run, from its manifest (its phases on stderr)."""
    newest = sorted(p for p in runs_dir.iterdir() if p.is_dir())[-1]
    m = json.loads((newest / "manifest.json").read_text())
    phases = ", ".join(f"{k} {v:.2f}" for k, v in m["timings"].items())
    print(f"    phases: {phases}", file=sys.stderr)
    return float(m["launched_at"]) - float(m["started_at"])


def write_model(path: Path, megabytes: float) -> None:
    """A random 'checkpoint' of ``megabytes`` MB, settled (mtime in the past) like a real one."""
    left = int(megabytes * 1e6)
    with path.open("wb") as fh:
        while left > 0:
            n = min(left, 8 << 20)
            fh.write(os.urandom(n))
            left -= n
    old = time.time() - 60
    os.utime(path, (old, old))


def ssh_true(sshd: Sshd) -> float:
    """Seconds for one OpenSSH `ssh host true` (the baseline of the warm case)."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            "ssh", "-i", str(sshd.key_path), "-p", str(sshd.port), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={sshd.known_hosts}", sshd.target, "true",
        ],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - t0


def warm(args: argparse.Namespace) -> None:
    """First and second `kohyawrap train` on one host, through the CLI."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        fake = build_fake_sdscripts(tmp / "sd-scripts")
        from kohyawrap.dataset.example import make_example_photos

        photos = make_example_photos(tmp / "photos")
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", CACHE_ENV)}
        env["HOME"] = str(tmp)  # the hash cache lives in this HOME's cache dir
        kw = [sys.executable, "-m", "kohyawrap"]
        build = ["dataset", "build", str(photos), "--trigger", "sks dog", "--class-word", "dog"]
        subprocess.run(
            [*kw, *build, "--model", "sd15", "-o", str(tmp / "data")],
            check=True,
            env=env,
            capture_output=True,
        )
        base = tmp / "base.safetensors"
        write_model(base, args.model_mb)
        with running_sshd(tmp / "sshd") as sshd:
            baseline = ssh_true(sshd)
            train = [
                *kw, "train", "--host", sshd.target, "-p", str(sshd.port),
                "-i", str(sshd.key_path), "--known-hosts", str(sshd.known_hosts),
                "--gpu", "rtx4090", "--model", "sd15", "--dataset", str(tmp / "data"),
                "--base-model", str(base), "--name", "bench",
                "--sd-scripts-repo", fake.url, "--sd-scripts-ref", fake.head,
                "--torch-spec", "skip", "--work-dir", str(tmp / "work"),
                "--runs-dir", str(tmp / "runs"), "--yes", "--force", "--poll", "0.2",
                "--set", "max_train_epochs=1",
            ]  # fmt: skip
            subprocess.run(train, check=True, env=env, capture_output=True)
            cold = launch_seconds(tmp / "runs")
            warm_times = []
            for _ in range(args.runs):
                subprocess.run(train, check=True, env=env, capture_output=True)
                warm_times.append(launch_seconds(tmp / "runs"))
    second = statistics.median(warm_times)
    target = TARGET_BIG_MODEL_S if args.model_mb >= 1000 else TARGET_S
    listed = ", ".join(f"{t:.2f}" for t in warm_times)
    print(f"base model {args.model_mb:g} MB (local file, uploaded by the first run)")
    print(f"OpenSSH `ssh host true` (baseline)   {baseline:6.2f} s")
    print(f"first run:  connect -> launched      {cold:6.2f} s  (clone, venv, model, dataset)")
    print(
        f"second run: connect -> launched      {second:6.2f} s  (median of {args.runs}: {listed})"
    )
    print(
        f"ratio second/first {second / cold:.2f}; second/ssh-true {second / baseline:.1f}x; "
        f"target <= {target:g} s: {'met' if second <= target else 'MISSED'}"
    )


CACHE_ENV = "KOHYAWRAP_CACHE_DIR"


# ---------------------------------------------------------------------------------------------
# --cold


def serve_file(path: Path, mb_per_s: float) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server on 127.0.0.1 serving ``path`` at about ``mb_per_s`` (a model hub)."""
    size = path.stat().st_size

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            start, sent = time.monotonic(), 0
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    ahead = sent / (mb_per_s * 1e6) - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/{path.name}"


def make_photos(root: Path, megabytes: float) -> Path:
    """A dataset of noisy 1024 px JPEGs (they barely compress) with captions: ``megabytes`` MB."""
    from PIL import Image

    concept = root / "10_sks dog"
    concept.mkdir(parents=True)
    total, i = 0, 0
    while total < megabytes * 1e6:
        image = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
        image.save(concept / f"photo {i:03d}.jpg", quality=95)
        (concept / f"photo {i:03d}.txt").write_text(f"sks dog, photo {i}\n")
        total += (concept / f"photo {i:03d}.jpg").stat().st_size
        i += 1
    return root


def cold_variant(
    name: str, args: argparse.Namespace, tmp: Path, model_url: str, data: Path, overlapped: bool
) -> tuple[float, dict[str, float]]:
    """One cold set-up on a bare work dir with empty package caches; (seconds, phase timings)."""
    from kohyawrap.hosts.connect import ConnectOptions
    from kohyawrap.launcher.request import TrainRequest
    from kohyawrap.launcher.runplan import SetupOptions
    from kohyawrap.launcher.runstore import RunStore
    from kohyawrap.launcher.stages import Stage
    from kohyawrap.launcher.verbs import Launcher
    from kohyawrap.models import RunSpec

    root = tmp / name
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if overlapped and Path(uv).exists():
        (bindir / "uv").symlink_to(uv)  # the host has uv (as RunPod and Vast images may)
    path = f"{bindir}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    # Each variant's host starts with empty package caches, as a fresh rental does.
    env = f"SetEnv PATH={path} PIP_CACHE_DIR={root}/pip-cache UV_CACHE_DIR={root}/uv-cache"
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR"):  # a machine whose TLS needs its own CAs
        if os.environ.get(var):
            env += f" {var}={os.environ[var]}"
    env += "\n"
    spec = RunSpec(gpu="rtx4090", model="sd15", base_model=model_url, output_name="bench")
    setup = SetupOptions(
        repo=args.sd_scripts_repo,
        ref=args.sd_scripts_ref or SetupOptions().ref,
        torch_spec=args.torch_spec,
        installer="auto" if overlapped else "pip",
    )
    request = TrainRequest(
        spec=spec, dataset=data, work_dir=str(root / "work"), setup=setup, force=True
    )
    stages = (Stage.PREPARE,) if overlapped else (Stage.SETUP, Stage.MODEL, Stage.UPLOAD)
    with (
        running_sshd(root / "sshd", extra_config=env) as sshd,
        TcpRelay(sshd.port, delay=args.rtt / 2000) as relay,
    ):
        connect = ConnectOptions(
            port=relay.port,
            identity=str(sshd.key_path),
            known_hosts=str(sshd.known_hosts_for(relay.port)),
            ssh_config=str(sshd.ssh_config),
            trusted_hosts=str(root / "trusted"),
            use_agent=False,
        )
        launcher = Launcher(RunStore(root / "runs"), _PrintReporter(name))
        t0 = time.perf_counter()
        result = launcher.train(request, sshd.target, connect, stages=stages)
        seconds = time.perf_counter() - t0
    assert result.manifest is not None
    return seconds, dict(result.manifest.timings)


class _PrintReporter:
    """Set-up lines on stderr, prefixed with the variant (so a long run shows it is alive)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def _say(self, text: str) -> None:
        with self.lock:
            sys.stderr.write(f"[{self.name}] {text}\n")
            sys.stderr.flush()

    def stage(self, name: str, detail: str = "") -> None:
        self._say(f"==> {name} {detail}")

    def info(self, message: str) -> None:
        self._say(f"    {message[:150]}")

    def transfer(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last.get(label, 0) < 5:
            return
        self.last[label] = now
        self._say(f"    {label}: {done / 1e6:.0f}/{total / 1e6:.0f} MB")

    def event(self, *args: object) -> None:
        pass

    def pulled(self, name: str, size: int) -> None:
        pass


def cold(args: argparse.Namespace) -> None:
    """Sequential pip + download + upload vs PREPARE, each on a bare host."""
    if not args.sd_scripts_repo:
        raise SystemExit(
            "--cold needs --sd-scripts-repo (a clone or mirror with the pinned commit)"
        )
    repo = Path(args.sd_scripts_repo)
    if repo.exists():
        args.sd_scripts_repo = repo.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="kw-cold-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ[CACHE_ENV] = str(tmp / "hash-cache")
        model = tmp / "hub" / "base.safetensors"
        model.parent.mkdir()
        write_model(model, args.model_mb)
        data = make_photos(tmp / "data", args.dataset_mb)
        server, url = serve_file(model, args.host_mbps)
        try:
            results = {
                name: cold_variant(name, args, tmp, url, data, overlapped)
                for name, overlapped in (("sequential", False), ("overlapped", True))
                if name in args.variants.split(",")
            }
        finally:
            server.shutdown()
    print(
        f"cold set-up, connect -> ready to train; real sd-scripts requirements, torch "
        f"{args.torch_spec!r}; model {args.model_mb:g} MB at {args.host_mbps:g} MB/s; "
        f"dataset {args.dataset_mb:g} MB at RTT {args.rtt:g} ms"
    )
    for name, (seconds, timings) in results.items():
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(timings.items()))
        print(f"{name:11s} {seconds:7.1f} s   ({phases})")
    if len(results) < 2:
        return
    ratio = results["overlapped"][0] / results["sequential"][0]
    print(
        f"ratio overlapped/sequential {ratio:.2f}x; target <= {TARGET_COLD_RATIO:g}x: "
        f"{'met' if ratio <= TARGET_COLD_RATIO else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="warm runs to time (median reported)")
    parser.add_argument(
        "--model-mb", type=float, default=None, help="base model size, MB (1; --cold: 2000)"
    )
    parser.add_argument("--variants", default="sequential,overlapped", help="--cold: which to time")
    parser.add_argument("--cold", action="store_true", help="a cold set-up, real requirements")
    parser.add_argument("--sd-scripts-repo", default="", help="--cold: git URL or local clone")
    parser.add_argument("--sd-scripts-ref", default="", help="--cold: commit (default: pinned)")
    parser.add_argument(
        "--torch-spec",
        default="torch --index-url https://download.pytorch.org/whl/cpu",
        help="--cold: what installs torch (a CPU build)",
    )
    parser.add_argument("--rtt", type=float, default=50.0, help="--cold: round trip, ms")
    parser.add_argument("--host-mbps", type=float, default=100.0, help="--cold: model MB/s")
    parser.add_argument("--dataset-mb", type=float, default=50.0, help="--cold: dataset MB")
    args = parser.parse_args()
    if args.model_mb is None:
        args.model_mb = 2000.0 if args.cold else 1.0
    (cold if args.cold else warm)(args)


if __name__ == "__main__":
    main()
