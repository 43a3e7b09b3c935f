"""kohyawrap's watchdog: guards a run's money on the GPU host, with or without a laptop.

run.sh starts it in a session of its own beside the training job; once started it needs nothing
from the laptop. Every ``poll_seconds`` it:

- prices the run with the host's own clock: the dollars the set-up cost before the launch (told
  by the laptop in ``config.json``) plus the price times the time since the job began
  (``started_at``, written by run.sh);
- stops the job when ``--max-dollars`` or ``--max-hours`` would be passed by its next look, or
  earlier, right after a checkpoint is completely saved, when the next checkpoint could not be
  reached within the limit. sd-scripts does nothing special on SIGTERM (no handler at the pinned
  commit 48d368fa): whatever is not saved is lost, so the moment to stop is just after a save;
- once the job has ended: pushes the checkpoints to the Hugging Face Hub when asked (and compares
  the Hub's sha256 of each file), then waits for a laptop to acknowledge every checkpoint. When
  none has within ``--idle-minutes`` it carries out ``--on-finish`` itself, under the safety rule.

The safety rule: a checkpoint is safe when a laptop left a receipt for it
(``receipts/<name>.sha256``, the sha256 it verified) that matches the file now, or the Hub holds
it with the same sha256. Destroying the host, or running the user's own command (which may destroy
it), needs every checkpoint safe; stopping does not, since a stopped host keeps its disk.

Its decisions are JSON files in ``<run>/watchdog/`` that the laptop reads when it attaches or
pulls: ``stop.json`` (why and when it stopped the job), ``hub.json`` (the push), ``finish.json``
(what it did to the host, or refused to, and why), and ``state.json`` (the money now).

    python watchdog.py watch RUN_DIR            # the guard (run.sh starts it)
    python watchdog.py finish RUN_DIR --decide  # the laptop's FINISH stage: decide, print, record
    python watchdog.py finish RUN_DIR --act     # ... then carry out what was decided
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

VERSION = 1
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt")
RESTOP_SECONDS = 60.0  # ask again when a stopped job has not ended after this long
# A graceful stop loses nothing and a hard stop loses up to a save interval, so the next save is
# expected this much later than the pace seen so far (machines slow down; tqdm's rate lags).
PACE_MARGIN = 1.15
PUSH_WAIT_SECONDS = 3600.0  # how long a finish waits for another process's push to the Hub
ACTION_TIMEOUT = 120.0
VAST_API = "https://console.vast.ai/api/v0"  # docs.vast.ai REST API base URL
# Keys of the provider's environment worth reading (never printed: CONTAINER_API_KEY is a secret).
PROVIDER_KEYS = re.compile(r"^(RUNPOD_[A-Z0-9_]+|CONTAINER_ID|CONTAINER_API_KEY|VAST_[A-Z0-9_]+)$")


# ---------------------------------------------------------------------------------------------
# Time


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


# ---------------------------------------------------------------------------------------------
# What the laptop told it, and where its files are


@dataclass(frozen=True)
class Config:
    """``watchdog/config.json``, written by the laptop before the launch."""

    price_per_hour: float = 0.0
    spent_before_launch: float = 0.0  # dollars of set-up (connect to launch), on the laptop's clock
    max_dollars: float | None = None
    max_hours: float | None = None
    idle_minutes: float = 30.0
    on_finish: str = "none"  # none | stop | destroy | shutdown | a shell command
    provider: str = "auto"  # auto | runpod | vast | none
    poll_seconds: float = 5.0
    push_to_hub: str = ""  # "user/repo", or "" for no push
    hub_private: bool = True
    save_state: bool = False  # a save is complete once its -state folder is written too
    run_id: str = ""

    @classmethod
    def load(cls, path: Path) -> Config:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Paths:
    """The run folder's files the watchdog reads and writes."""

    run: Path

    def own(self, name: str) -> Path:
        """A file in ``<run>/watchdog/``."""
        return self.run / "watchdog" / name

    @property
    def config(self) -> Path:
        return self.own("config.json")

    @property
    def stop(self) -> Path:
        return self.own("stop.json")

    @property
    def hub(self) -> Path:
        return self.own("hub.json")

    @property
    def finish(self) -> Path:
        return self.own("finish.json")

    @property
    def token(self) -> Path:
        return self.own("hf_token")

    @property
    def receipts(self) -> Path:
        return self.run / "receipts"

    @property
    def output(self) -> Path:
        return self.run / "output"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_number(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def log(message: str) -> None:
    """One line on stdout (run.sh sends it to ``watchdog/log``)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def dollars(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 or amount <= 0 else f"${amount:.4f}"


# ---------------------------------------------------------------------------------------------
# Reading the training log: progress and checkpoint saves

_FRAME = re.compile(
    r"steps:\s*\d{1,3}%\|[^|]{0,200}\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<elapsed>[0-9:]{1,12})<"
)
_SAVE = re.compile(r"saving checkpoint: (?P<path>.+)")
_SEPARATORS = re.compile(r"[\r\n]")
MAX_LINE = 64_000


def seconds_of(text: str) -> float | None:
    """tqdm's ``MM:SS`` or ``H:MM:SS`` as seconds."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        return None
    total = 0
    for part in parts:
        total = total * 60 + part
    return float(total)


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    seconds_per_step: float | None


@dataclass
class LogReader:
    """Follows ``run.log`` from a byte offset; remembers the last progress and announced saves."""

    path: Path
    offset: int = 0
    pending: str = ""
    progress: Progress | None = None
    announced: list[tuple[str, int]] = field(default_factory=list)  # (file name, step) in order
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )

    def poll(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read(4 << 20)
        except OSError:
            return
        self.offset += len(chunk)
        self.feed(self.decoder.decode(chunk))

    def feed(self, text: str) -> None:
        *lines, self.pending = _SEPARATORS.split(self.pending + text)
        self.pending = self.pending[-MAX_LINE:]
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        frame = _FRAME.search(line)
        if frame:
            n, total = int(frame["n"]), int(frame["total"])
            elapsed = seconds_of(frame["elapsed"])
            per_step = elapsed / n if n and elapsed else None
            self.progress = Progress(n, total, per_step or self._last_rate())
            return
        saved = _SAVE.search(line)
        if saved:
            name = os.path.basename(saved["path"].strip())
            step = self.progress.step if self.progress else 0
            if name.endswith(MODEL_EXTENSIONS) and name not in dict(self.announced):
                self.announced.append((name, step))

    def _last_rate(self) -> float | None:
        return self.progress.seconds_per_step if self.progress else None


def complete(path: Path, *, last_size: int | None) -> bool:
    """The checkpoint is whole: a .safetensors file holds every byte its header promises; any
    other file kept its size since the last look."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if path.suffix != ".safetensors":
        return size > 0 and size == last_size
    try:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100_000_000:
                return False
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error):
        return False
    if not isinstance(header, dict):
        return False
    ends: list[int] = [
        info["data_offsets"][1]
        for key, info in header.items()
        if key != "__metadata__" and isinstance(info, dict) and "data_offsets" in info
    ]
    return bool(size == 8 + length + max(ends, default=0))


@dataclass
class Saves:
    """Checkpoints the log announced, and which of them are completely on disk."""

    output: Path
    save_state: bool
    done: list[tuple[str, int]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    seen_at: list[float] = field(default_factory=list)  # when each of ``done`` was seen complete

    def update(self, announced: list[tuple[str, int]], elapsed: float = 0.0) -> bool:
        """Move completed saves to ``done`` (seen ``elapsed`` seconds into the job); True when
        one completed at this look."""
        fresh = False
        finished = dict(self.done)
        for name, step in announced:
            if name in finished:
                continue
            path = self.output / name
            whole = complete(path, last_size=self.sizes.get(name))
            if whole and self.save_state:
                whole = self._state_saved(name.rsplit(".", 1)[0])
            if whole:
                self.done.append((name, step))
                self.seen_at.append(elapsed)
                fresh = True
            with contextlib.suppress(OSError):
                self.sizes[name] = path.stat().st_size
        return fresh

    def _state_saved(self, stem: str) -> bool:
        """``<stem>-state/`` holds train_state.json and kept its size since the last look
        (accelerate writes the optimizer and random states after sd-scripts' train_state.json)."""
        folder = self.output / f"{stem}-state"
        try:
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        except OSError:
            return False
        key = f"{stem}-state/"
        stable = self.sizes.get(key) == size
        self.sizes[key] = size
        return stable and (folder / "train_state.json").is_file()


# ---------------------------------------------------------------------------------------------
# Limits: when to stop the job


@dataclass(frozen=True)
class Stop:
    """The watchdog's decision to stop the job (``reason``: budget | deadline)."""

    reason: str
    graceful: bool  # right after a complete save: nothing trained is lost
    spent: float
    message: str
    after: str = ""  # the checkpoint it stopped after (graceful stops)
    at: float = 0.0  # host clock


@dataclass(frozen=True)
class Limits:
    price_per_hour: float
    spent_before_launch: float
    max_dollars: float | None
    max_hours: float | None
    poll_seconds: float

    @classmethod
    def of(cls, cfg: Config) -> Limits:
        return cls(
            cfg.price_per_hour,
            cfg.spent_before_launch,
            cfg.max_dollars,
            cfg.max_hours,
            cfg.poll_seconds,
        )

    def spent(self, elapsed: float) -> float:
        """Dollars spent ``elapsed`` seconds after the job began (set-up included)."""
        return self.spent_before_launch + self.price_per_hour * max(0.0, elapsed) / 3600

    def projected(self, elapsed: float, progress: Progress | None) -> float | None:
        """Dollars at the end of training, at the speed seen so far."""
        if progress is None or progress.seconds_per_step is None:
            return None
        left = max(0, progress.total - progress.step) * progress.seconds_per_step
        return self.spent(elapsed + left)

    def check(
        self,
        elapsed: float,
        progress: Progress | None,
        saves: list[tuple[str, int]],
        just_saved: bool,
        seen_at: list[float] | None = None,
    ) -> Stop | None:
        """Whether to stop now: at the limit (by the next look), or right after a save when the
        next save would come after the limit. ``seen_at``: when each save was seen complete."""
        hard = self._hard(elapsed)
        if hard is not None:
            return hard
        if just_saved and saves and progress is not None:
            return self._graceful(elapsed, progress, saves, seen_at or [])
        return None

    def _hard(self, elapsed: float) -> Stop | None:
        look = elapsed + self.poll_seconds
        spent = self.spent(elapsed)
        if self.max_dollars is not None and self.spent(look) >= self.max_dollars:
            return Stop(
                "budget",
                False,
                spent,
                f"the {dollars(self.max_dollars)} budget (--max-dollars) would be passed before "
                f"the next look: stopped at {dollars(spent)}",
            )
        if self.max_hours is not None and look >= self.max_hours * 3600:
            return Stop(
                "deadline",
                False,
                spent,
                f"the {self.max_hours:g} h deadline (--max-hours) would pass before the next "
                f"look: stopped after {elapsed / 3600:.3g} h",
            )
        return None

    def _graceful(
        self, elapsed: float, p: Progress, saves: list[tuple[str, int]], seen_at: list[float]
    ) -> Stop | None:
        if p.seconds_per_step is None or p.step >= p.total:
            return None
        name, last = saves[-1]
        previous = saves[-2][1] if len(saves) > 1 else 0
        upcoming = min(last + max(1, last - previous), p.total)
        steps = max(0, upcoming - p.step)
        wait = steps * p.seconds_per_step
        if len(seen_at) >= 2 and last > previous:
            # The pace between the last two saves, when it is slower than the average rate.
            wait = max(wait, (seen_at[-1] - seen_at[-2]) / (last - previous) * steps)
        # The next save shows up complete one look after sd-scripts writes it.
        at_next = elapsed + wait * PACE_MARGIN + self.poll_seconds
        spent = self.spent(elapsed)
        what = f"{name} is saved; the next checkpoint (step {upcoming} of {p.total})"
        if self.max_dollars is not None and self.spent(at_next) > self.max_dollars:
            return Stop(
                "budget",
                True,
                spent,
                f"{what} would cost ~{dollars(self.spent(at_next))}, over the "
                f"{dollars(self.max_dollars)} budget: stopped now, nothing trained is lost",
                after=name,
            )
        if self.max_hours is not None and at_next > self.max_hours * 3600:
            return Stop(
                "deadline",
                True,
                spent,
                f"{what} would come after the {self.max_hours:g} h deadline (--max-hours): stopped now, "
                "nothing trained is lost",
                after=name,
            )
        return None


def request_stop(paths: Paths, stop: Stop, limit_seconds: float) -> None:
    """Ask run.sh to stop the trainer (it forwards SIGTERM to the trainer's process group)."""
    (paths.run / "stop_requested").touch()
    if stop.reason == "deadline":
        # job.exit_status reads this file: the host's own --max-hours limit stopped the job.
        (paths.run / "deadline").write_text(f"{int(limit_seconds)}\n")
    pid = read_number(paths.run / "run.pid")
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGTERM)


# ---------------------------------------------------------------------------------------------
# Safety: is every checkpoint somewhere else, verified?


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoints(output: Path) -> list[Path]:
    """Every LoRA file sd-scripts saved: directly in ``output/``, with a model extension."""
    try:
        found = [p for p in output.iterdir() if p.is_file() and p.name.endswith(MODEL_EXTENSIONS)]
    except FileNotFoundError:
        return []
    return sorted(found)


@dataclass(frozen=True)
class Safety:
    """Which checkpoints are safe elsewhere (by receipt or on the Hub) and which are not."""

    by_receipt: tuple[str, ...]
    on_hub: tuple[str, ...]
    missing: tuple[str, ...]  # with why, e.g. "demo.safetensors (no receipt)"

    @property
    def safe(self) -> bool:
        return not self.missing

    @property
    def how(self) -> str:
        parts = []
        if self.by_receipt:
            parts.append(f"{len(self.by_receipt)} verified on a laptop")
        if self.on_hub:
            parts.append(f"{len(self.on_hub)} verified on the Hugging Face Hub")
        if parts:
            return ", ".join(parts)
        return "none verified" if self.missing else "no checkpoint to keep"


def check_safety(paths: Paths) -> Safety:
    """Compare each checkpoint's sha256 now with its receipt, then with the Hub's record."""
    hub = (read_json(paths.hub) or {}).get("files") or {}
    by_receipt, on_hub, missing = [], [], []
    for path in checkpoints(paths.output):
        digest = file_sha256(path)
        receipt = paths.receipts / f"{path.name}.sha256"
        try:
            acknowledged = receipt.read_text().split()[0]
        except (OSError, IndexError):
            acknowledged = ""
        if acknowledged == digest:
            by_receipt.append(path.name)
        elif hub.get(path.name) == digest:
            on_hub.append(path.name)
        elif acknowledged:
            missing.append(f"{path.name} (changed since a laptop verified it)")
        else:
            missing.append(f"{path.name} (not verified on a laptop or the Hub)")
    return Safety(tuple(by_receipt), tuple(on_hub), tuple(missing))


def last_acknowledged(paths: Paths) -> float:
    """When a laptop last left a receipt (host clock), 0 if never."""
    try:
        return max((p.stat().st_mtime for p in paths.receipts.iterdir()), default=0.0)
    except OSError:
        return 0.0


# ---------------------------------------------------------------------------------------------
# The provider: who rents this machine, and how it stops or destroys itself from inside


def provider_environment(
    environ: Mapping[str, str] | None = None,
    rp_environment: Path = Path("/etc/rp_environment"),
    init_environ: Path = Path("/proc/1/environ"),
) -> dict[str, str]:
    """The provider's variables. An SSH session often lacks them: RunPod keeps them in
    /etc/rp_environment, Vast.ai in the environment of the container's first process."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for raw in init_environ.read_bytes().split(b"\0"):
            key, sep, value = raw.decode("utf-8", "replace").partition("=")
            if sep and PROVIDER_KEYS.match(key):
                found[key] = value
    with contextlib.suppress(OSError):
        for line in rp_environment.read_text(encoding="utf-8", errors="replace").splitlines():
            key, sep, value = line.strip().removeprefix("export ").partition("=")
            if sep and PROVIDER_KEYS.match(key):
                found[key] = value.strip().strip("'\"")
    for key, value in (os.environ if environ is None else environ).items():
        if PROVIDER_KEYS.match(key) and value:
            found[key] = value
    return found


@dataclass(frozen=True)
class Provider:
    name: str  # runpod | vast | none
    instance: str  # the pod or instance id ("" when unknown)


def detect_provider(forced: str, env: Mapping[str, str]) -> Provider:
    """``--provider`` (auto: RUNPOD_POD_ID means RunPod; CONTAINER_ID with CONTAINER_API_KEY
    means Vast.ai) and the instance id the host's environment gives."""
    runpod = env.get("RUNPOD_POD_ID", "")
    vast = env.get("CONTAINER_ID", "") if env.get("CONTAINER_API_KEY") else ""
    if forced == "runpod" or (forced == "auto" and runpod):
        return Provider("runpod", runpod)
    if forced == "vast" or (forced == "auto" and vast):
        return Provider("vast", env.get("CONTAINER_ID", ""))
    return Provider("none", "")


@dataclass(frozen=True)
class Choice:
    """What the finish will do: ``action`` is carried out ("" = nothing), ``message`` says why."""

    action: str  # none | stop | destroy | shutdown | command | ""
    message: str


def choose(asked: str, provider: Provider, safety: Safety) -> Choice:
    """Turn ``--on-finish`` into what may be done now, under the safety rule."""
    where = {"runpod": "RunPod pod", "vast": "Vast.ai instance"}.get(provider.name, "")
    if asked in ("", "none"):
        return Choice("none", "--on-finish none: the host is left running")
    if asked in ("stop", "destroy") and not where:
        return Choice("", f"--on-finish {asked} needs RunPod or Vast.ai; neither was found")
    if where and not provider.instance and asked in ("stop", "destroy", "shutdown"):
        return Choice("", f"no {where} id in the host's environment: nothing was stopped")
    if asked == "shutdown" and not where:
        return Choice("shutdown", "shutting the machine down (shutdown -h now)")
    if asked in ("stop", "shutdown"):
        why = " (a container cannot power its machine off)" if asked == "shutdown" else ""
        return Choice("stop", f"stopping the {where}{why}; its disk is still billed")
    # destroy, or the user's command (which may destroy): only when every checkpoint is safe
    if safety.safe:
        what = (
            f"destroying the {where}" if asked == "destroy" else "running the --on-finish command"
        )
        return Choice("destroy" if asked == "destroy" else "command",
                      f"{what}: every checkpoint is safe ({safety.how})")  # fmt: skip
    missing = "; ".join(safety.missing[:5]) + (" ..." if len(safety.missing) > 5 else "")
    if asked == "destroy":
        return Choice(
            "stop",
            f"destroy refused: {len(safety.missing)} checkpoint(s) are not safe ({missing}); "
            f"stopped the {where} instead, so its disk keeps them (and is still billed)",
        )
    return Choice(
        "",
        f"the --on-finish command was not run: {len(safety.missing)} checkpoint(s) are not safe "
        f"({missing}) and it may destroy them",
    )


def _runpod(action: str, provider: Provider, env: Mapping[str, str]) -> str:
    # The legacy verbs work in old and new runpodctl (new ones keep them as hidden aliases).
    verb = "remove" if action == "destroy" else "stop"
    return _run(["runpodctl", verb, "pod", provider.instance], {**os.environ, **env})


def _vast(action: str, provider: Provider, env: Mapping[str, str]) -> str:
    # Vast's REST API with the instance's own key (it can only start, stop or destroy this
    # instance); the key travels in a header, never on a command line.
    base = os.environ.get("KOHYAWRAP_VAST_API", VAST_API).rstrip("/")
    url = f"{base}/instances/{provider.instance}/"
    body = json.dumps({"state": "stopped"}).encode() if action == "stop" else None
    request = urllib.request.Request(  # noqa: S310 - https (or a test stand-in on loopback)
        url,
        data=body,
        method="PUT" if action == "stop" else "DELETE",
        headers={
            "Authorization": f"Bearer {env.get('CONTAINER_API_KEY', '')}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=ACTION_TIMEOUT) as response:  # noqa: S310
            return f"ok (HTTP {response.status})"
    except OSError as err:
        return f"failed: {type(err).__name__}: {err}"


def _shutdown() -> str:
    if os.geteuid() == 0:
        return _run(["shutdown", "-h", "now"], dict(os.environ))
    result = _run(["sudo", "-n", "shutdown", "-h", "now"], dict(os.environ))
    return result if result.startswith("ok") else _run(["shutdown", "-h", "now"], dict(os.environ))


def _run(argv: list[str], env: Mapping[str, str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=ACTION_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"failed: {type(err).__name__}: {err}"
    if done.returncode == 0:
        return "ok"
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return f"failed: exit {done.returncode}: {' | '.join(tail)}"[:500]


def carry_out(choice: Choice, cfg: Config, provider: Provider, run: Path) -> str:
    """Do what was chosen; returns "ok", "failed: ..." or "" when there was nothing to do."""
    env = provider_environment()
    if choice.action in ("stop", "destroy") and provider.name == "runpod":
        return _runpod(choice.action, provider, env)
    if choice.action in ("stop", "destroy") and provider.name == "vast":
        return _vast(choice.action, provider, env)
    if choice.action == "shutdown":
        return _shutdown()
    if choice.action == "command":
        return _run(["bash", "-c", cfg.on_finish], dict(os.environ), cwd=run)
    return ""


# ---------------------------------------------------------------------------------------------
# The Hugging Face Hub: push every checkpoint, then check the Hub's sha256 of each


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[bool]:
    """``mkdir`` is atomic: True for the one process that made ``folder`` (it is removed after)."""
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()


def git_blob_sha1(path: Path) -> str:
    """The id git gives a file's content (the Hub reports it for files not stored in LFS)."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def push_to_hub(paths: Paths, cfg: Config) -> dict[str, Any]:
    """Upload every checkpoint to ``cfg.push_to_hub`` and compare the Hub's sha256 with each
    file's; the token file is deleted whatever happens. Returns what ``hub.json`` records."""
    record: dict[str, Any] = {"repo": cfg.push_to_hub, "files": {}, "error": "", "at": time.time()}
    try:
        token = paths.token.read_text(encoding="utf-8").strip()
    except OSError:
        record["error"] = "no Hugging Face token on the host (it travels with the launch)"
        return record
    finally:
        with contextlib.suppress(OSError):
            paths.token.unlink()
    try:
        record["files"] = _upload(paths, cfg, token)
    except Exception as err:
        record["error"] = f"{type(err).__name__}: {err}".replace(token, "***")[:1000]
    return record


def _upload(paths: Paths, cfg: Config, token: str) -> dict[str, str]:
    from huggingface_hub import CommitOperationAdd, HfApi

    files = {p.name: p for p in checkpoints(paths.output)}
    if not files:
        return {}
    api = HfApi(token=token)
    api.create_repo(cfg.push_to_hub, private=cfg.hub_private, exist_ok=True)
    api.create_commit(
        cfg.push_to_hub,
        [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(p))
            for name, p in files.items()
        ],
        commit_message=f"kohyawrap run {cfg.run_id}".strip(),
    )
    verified = {}
    for info in api.get_paths_info(cfg.push_to_hub, sorted(files)):
        path = files.get(getattr(info, "path", ""))
        if path is None:
            continue
        local = file_sha256(path)
        lfs = getattr(info, "lfs", None)
        remote = getattr(lfs, "sha256", None) if lfs is not None else None
        if remote == local or (
            lfs is None and getattr(info, "blob_id", None) == git_blob_sha1(path)
        ):
            verified[path.name] = local
    return verified


def ensure_pushed(paths: Paths, cfg: Config, clock: Clock) -> None:
    """Push once (whoever gets the lock); others wait for ``hub.json``."""
    if not cfg.push_to_hub or paths.hub.exists():
        return
    waited = 0.0
    while not paths.hub.exists() and waited < PUSH_WAIT_SECONDS:
        with locked(paths.own("push.lock")) as mine:
            if mine:
                log(f"pushing the checkpoints to the Hugging Face Hub: {cfg.push_to_hub}")
                record = push_to_hub(paths, cfg)
                write_json(paths.hub, record)
                log(f"hub: {len(record['files'])} file(s) verified {record['error']}".strip())
                return
        clock.sleep(2.0)
        waited += 2.0


# ---------------------------------------------------------------------------------------------
# Finishing: decide (under the safety rule), record, then act


def decide(paths: Paths, cfg: Config, by: str, why: str, clock: Clock) -> dict[str, Any]:
    """Decide the finish once (the first caller wins) and record it in ``finish.json``."""
    if read_json(paths.finish) is None:
        ensure_pushed(paths, cfg, clock)
    return decide_once(
        paths, cfg.on_finish, cfg.provider, by, why, clock, lambda: (check_safety(paths), {})
    )


def decide_once(
    paths: Paths,
    asked: str,
    provider_choice: str,
    by: str,
    why: str,
    clock: Clock,
    assess: Callable[[], tuple[Safety, dict[str, Any]]],
    what: str = "finish",
) -> dict[str, Any]:
    """Decide ``asked`` under the safety rule once (the first caller wins) and record it in
    ``finish.json``; ``assess`` gives the safety (and any extra fields) under the lock. The run's
    watchdog and the queue's runner both decide here, so the laptop reads both records alike."""
    existing = read_json(paths.finish)
    if existing is not None:
        return existing
    with locked(paths.own("finish.lock")) as mine:
        if not mine:
            return read_json(paths.finish) or {"action": "", "message": "being decided"}
        provider = detect_provider(provider_choice, provider_environment())
        safety, extra = assess()
        choice = choose(asked, provider, safety)
        record = {
            "asked": asked,
            "action": choice.action,
            "message": choice.message,
            "by": by,
            "why": why,
            "provider": provider.name,
            "instance": provider.instance,
            "safe": safety.safe,
            "safe_by": safety.how,
            "missing": list(safety.missing),
            **extra,
            "at": clock.now(),
            "result": "pending" if choice.action not in ("", "none") else "",
        }
        write_json(paths.finish, record)
        log(f"{what} ({by}): {choice.message}")
        return record


def act(paths: Paths, cfg: Config) -> dict[str, Any]:
    """Carry out the recorded decision, once; record how it went (if the host is still here)."""
    with locked(paths.own("act.lock")) as mine:
        record = read_json(paths.finish) or {}
        if not mine or record.get("result") != "pending":
            return record
        record["result"] = "started"
        write_json(paths.finish, record)
    provider = Provider(str(record.get("provider", "none")), str(record.get("instance", "")))
    choice = Choice(str(record.get("action", "")), str(record.get("message", "")))
    result = carry_out(choice, cfg, provider, paths.run)
    record["result"] = result
    write_json(paths.finish, record)
    log(f"finish: {choice.action}: {result}")
    return record


# ---------------------------------------------------------------------------------------------
# The guard loop


@dataclass
class Guard:
    """The watchdog's state between looks."""

    paths: Paths
    cfg: Config
    clock: Clock
    reader: LogReader = field(init=False)
    saves: Saves = field(init=False)
    stop: Stop | None = None
    asked_at: float = 0.0

    def __post_init__(self) -> None:
        self.reader = LogReader(self.paths.run / "run.log")
        self.saves = Saves(self.paths.output, self.cfg.save_state)
        recorded = read_json(self.paths.stop)
        if recorded is not None:  # restarted after a stop: do not decide twice
            self.stop = Stop(**{k: recorded[k] for k in Stop.__dataclass_fields__ if k in recorded})

    def look(self) -> bool:
        """One look; True when there is nothing left to guard."""
        now = self.clock.now()
        if (self.paths.run / "exit_code").exists():
            return self.after_job(now)
        started = read_number(self.paths.run / "started_at") or now
        self.reader.poll()
        elapsed = now - started
        just_saved = self.saves.update(self.reader.announced, elapsed)
        limits = Limits.of(self.cfg)
        if self.stop is None:
            progress, saves = self.reader.progress, self.saves
            stop = limits.check(elapsed, progress, saves.done, just_saved, saves.seen_at)
            if stop is not None:
                self.stop = replace(stop, at=now)
                write_json(self.paths.stop, asdict(self.stop))
                log(f"stopping the training ({stop.reason}): {stop.message}")
                self._ask(now)
        elif now - self.asked_at >= RESTOP_SECONDS:
            self._ask(now)
        self._state(now, elapsed, limits)
        return False

    def _ask(self, now: float) -> None:
        if self.stop is not None:
            request_stop(self.paths, self.stop, (self.cfg.max_hours or 0) * 3600)
            self.asked_at = now

    def _state(self, now: float, elapsed: float, limits: Limits) -> None:
        p = self.reader.progress
        write_json(
            self.paths.own("state.json"),
            {
                "at": now,
                "spent": round(limits.spent(elapsed), 6),
                "projected": limits.projected(elapsed, p),
                "step": p.step if p else None,
                "total": p.total if p else None,
                "saved": [name for name, _ in self.saves.done],
            },
        )

    def after_job(self, now: float) -> bool:
        """Push when asked; finish when no laptop acknowledged everything within the idle time."""
        if self.paths.finish.exists():
            return True
        ensure_pushed(self.paths, self.cfg, self.clock)
        if self.cfg.on_finish in ("", "none"):
            return True
        ended = read_number(self.paths.run / "ended_at") or now
        quiet_since = max(ended, last_acknowledged(self.paths))
        if now - quiet_since < self.cfg.idle_minutes * 60:
            return False
        why = (
            f"no laptop finished the run within {self.cfg.idle_minutes:g} min of its end "
            "(--idle-minutes)"
        )
        decide(self.paths, self.cfg, "watchdog", why, self.clock)
        act(self.paths, self.cfg)
        return True


def watch(run: Path, clock: Clock | None = None) -> int:
    """Guard the run in ``run`` until there is nothing left to do."""
    clock = clock or SystemClock()
    paths = Paths(run)
    cfg = Config.load(paths.config)
    paths.own("pid").write_text(f"{os.getpid()}\n")
    log(f"watching {run} (price {dollars(cfg.price_per_hour)}/h, poll {cfg.poll_seconds:g} s)")
    guard = Guard(paths, cfg, clock)
    try:
        while not guard.look():
            clock.sleep(cfg.poll_seconds)
    finally:
        # The token is only needed for a push; it never outlives the watchdog.
        with contextlib.suppress(OSError):
            paths.token.unlink()
    log("done")
    return 0


def main(argv: list[str]) -> int:
    usage = "usage: watchdog.py watch RUN_DIR | finish RUN_DIR --decide|--act [--by WHO]"
    if len(argv) < 2 or argv[0] not in ("watch", "finish"):
        print(usage, file=sys.stderr)
        return 2
    run = Path(argv[1]).resolve()
    if argv[0] == "watch":
        return watch(run)
    paths = Paths(run)
    cfg = Config.load(paths.config)
    if "--act" in argv:
        record = act(paths, cfg)
    else:
        by = argv[argv.index("--by") + 1] if "--by" in argv[:-1] else "laptop"
        record = decide(paths, cfg, by, "a laptop verified every checkpoint", SystemClock())
    print("KW finish=" + json.dumps(record, ensure_ascii=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
