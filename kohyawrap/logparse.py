"""Turn the raw output of sd-scripts into events, and say why a run failed.

sd-scripts writes three kinds of text to the same log (see docs/logs.md):

- plain ``print`` lines: ``running training`` block, ``epoch 1/2``, ``saving checkpoint: <path>``;
- logging records, either rich's layout (a time column, the level, the message wrapped inside an
  80-column box, ``file.py:NNN`` on the right) or, with ``console_log_simple``, the bare message;
- tqdm bars redrawn in place with ``\\r`` and no newline; only the ``steps:`` bar is training.

:class:`LogParser` takes bytes as they arrive (split anywhere, even inside a UTF-8 character) and
returns events. The same bytes give the same events however they are chunked: a ``Progress`` is
emitted whenever ``(step, total, avr_loss)`` differs from the last one emitted, so the two redraws
tqdm makes per step give at most two events and a repeated frame none.
"""

from __future__ import annotations

import codecs
import math
import re
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kohyawrap.models import (
    CheckpointSaved,
    EpochStart,
    Event,
    Failure,
    FailureKind,
    LogWarning,
    ModelSaved,
    Progress,
    TrainingStarted,
)

# ---------------------------------------------------------------------------------------------
# Layer 1: bytes -> segments -> tqdm frames and whole messages

_SEPARATORS = re.compile(r"[\r\n]")
# Bounded repeats keep a match cheap on a long line that is not a frame at all.
_FRAME = re.compile(
    r"(?P<desc>[^|]{0,200}?)\s*(?P<pct>\d{1,3})%\|(?P<bar>[^|]{0,200})\|\s*"
    r"(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<info>[^\]]{0,500})\]"
)
_FRAME_MAX = 1000  # longer pending text cannot be a whole frame
# rich's log layout: 19-character time (blank when unchanged), level padded to 8, message at 29.
_RICH_HEAD = re.compile(
    r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d| {19}) (DEBUG|INFO|WARNING|ERROR|CRITICAL)\b"
)
_RICH_PATH = re.compile(r"\s(\S+:\d+)$")
_RICH_INDENT = 29


@dataclass(frozen=True)
class _Frame:
    """One tqdm redraw: ``desc: pct%|bar| n/total [info]``."""

    desc: str
    n: int
    total: int
    info: str
    text: str


@dataclass(frozen=True)
class _Message:
    """A whole log message: a plain line (level None) or an unwrapped rich record."""

    level: str | None
    text: str


_Item = _Frame | _Message


def _match_frame(segment: str) -> tuple[_Frame, str] | None:
    """The tqdm frame at the start of ``segment`` and whatever was printed right after it."""
    m = _FRAME.match(segment)
    if m is None:
        return None
    desc = m["desc"].strip().removesuffix(":").strip()
    frame = _Frame(desc, int(m["n"]), int(m["total"]), m["info"], m[0].strip())
    return frame, segment[m.end() :]


def _cells(text: str) -> int:
    """Terminal width of ``text``: East Asian wide characters take two columns."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


class _RichJoiner:
    """Gathers a rich record's wrapped lines back into one message."""

    def __init__(self) -> None:
        self._level: str | None = None
        self._text = ""
        self._width = 0
        self._glue = False

    def push(self, line: str) -> list[_Message]:
        """Take one line; return the messages it completes."""
        if not line.strip():
            return []  # blank lines (and rich's blank padding rows) carry nothing
        if self._level is not None and line.startswith(" " * _RICH_INDENT):
            self._add(line[_RICH_INDENT:].rstrip())
            return []
        done = self.flush()
        head = _RICH_HEAD.match(line)
        if head is None:
            done.append(_Message(None, line.rstrip()))
            return done
        body = line.rstrip()[_RICH_INDENT:]
        path = _RICH_PATH.search(body)
        message = body[: path.start()] if path else body
        self._level = head[1]
        self._width = _cells(line.rstrip()) - _RICH_INDENT - len(path[1]) - 1 if path else 0
        self._text = ""
        self._add(message.rstrip())
        return done

    def _add(self, chunk: str) -> None:
        piece = chunk.strip()
        sep = "" if self._glue or not self._text or not piece else " "
        self._text += sep + piece
        # rich folds a word longer than the column at the exact width: no space was lost there.
        self._glue = _cells(chunk) == self._width and " " not in piece

    def flush(self) -> list[_Message]:
        """End the open record, if any."""
        if self._level is None:
            return []
        message = _Message(self._level, self._text)
        self._level = None
        return [message]


class _Stream:
    """Incremental splitter: bytes in, frames and messages out (in order)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []  # pieces of the unterminated segment (no quadratic joins)
        self._pending_len = 0
        self._joiner = _RichJoiner()

    def feed(self, data: bytes, final: bool = False) -> list[_Item]:
        """Items completed by ``data``; with ``final`` also the unterminated rest."""
        segments = _SEPARATORS.split(self._decoder.decode(data, final))
        self._pending.append(segments[0])
        self._pending_len += len(segments[0])
        if len(segments) > 1 or final:
            segments[0] = "".join(self._pending)
            rest = "" if final else segments.pop()
            self._pending, self._pending_len = [rest], len(rest)
        else:
            segments = []
        items: list[_Item] = []
        for segment in segments:
            items += self._segment(segment)
        items += self._joiner.flush() if final else self._peek()
        return items

    def _segment(self, segment: str) -> list[_Item]:
        found = _match_frame(segment)
        if found is None:
            return list(self._joiner.push(segment))
        frame, rest = found
        items: list[_Item] = [*self._joiner.flush(), frame]
        return items + list(self._joiner.push(rest))

    def _peek(self) -> list[_Item]:
        # tqdm leaves its latest frame unterminated until the next redraw; report a complete
        # ``steps`` frame now so a live view is not one step behind (repeats are deduplicated).
        if not 0 < self._pending_len <= _FRAME_MAX:
            return []
        found = _match_frame("".join(self._pending))
        if found is None or found[0].desc != "steps":
            return []
        return [*self._joiner.flush(), found[0]]


def _render(message: _Message) -> str:
    if message.level in (None, "INFO", "DEBUG"):
        return message.text
    return f"{message.level}: {message.text}"


def readable_lines(data: bytes | str) -> list[str]:
    """The log as a terminal would show it: one line per message, each tqdm bar at its last frame.

    Use it for the evidence of a failed run (its last lines) and as the input of diagnosis.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    lines: list[str] = []
    frame: str | None = None
    for item in _Stream().feed(raw, final=True):
        if isinstance(item, _Frame):
            frame = item.text
            continue
        if frame is not None:
            lines.append(frame)
            frame = None
        if item.text.strip():
            lines.append(_render(item))
    if frame is not None:
        lines.append(frame)
    return lines


# ---------------------------------------------------------------------------------------------
# Layer 2: frames and messages -> events

_EPOCH = re.compile(r"epoch (\d+)/(\d+)")
_CHECKPOINT = re.compile(r"saving checkpoint: (.+)")
_BLOCK_LINE = re.compile(r"\s+(?P<label>[^/]+?)\s*/.*[:=]\s*(?P<value>\d+)\s*")
_BLOCK_FIELDS = {
    "num train images * repeats": "num_images",
    "num batches per epoch": "batches_per_epoch",
    "num epochs": "epochs",
    "batch size per device": "batch_size",
    "total optimization steps": "total_steps",
}
_ACCELERATE_DEFAULTS = "The following values were not passed to `accelerate launch`"
# Plain lines worth showing when console_log_simple hides the level (rich shows WARNING itself).
_PLAIN_WARNINGS = re.compile(r"ignore directory without repeats|No caption file found for")
# Warnings every run without regularisation images prints, and every leg kohyawrap resumes (it
# passes initial_epoch on purpose: states.py): not worth a user's attention.
_BENIGN_WARNINGS = re.compile(
    r"^no regularization images|^steps from the state is ignored because initial_step"
)
_NO_DATA = re.compile(r"No data found\b")


def _interval(text: str) -> float | None:
    """``03:38`` or ``1:02:03`` as seconds; ``?`` (unknown) as None."""
    if not re.fullmatch(r"\d+(:\d\d){1,2}", text):
        return None
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def _sec_per_it(text: str) -> float | None:
    m = re.fullmatch(r"([\d.]+)(s/it|it/s)", text)
    if m is None or float(m[1]) == 0:
        return None
    value = float(m[1])
    return value if m[2] == "s/it" else 1 / value


def _progress(frame: _Frame, epoch: int | None) -> tuple[Progress, str | None]:
    """A Progress from a ``steps`` frame, and the raw ``avr_loss`` text (None before the first)."""
    parts = [p.strip() for p in frame.info.split(",")]
    elapsed, _, eta = parts[0].partition("<")
    rate = _sec_per_it(parts[1]) if len(parts) > 1 else None
    postfix = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    raw = postfix.get("avr_loss")
    try:
        loss = float(raw) if raw is not None else None
    except ValueError:
        loss = None
    progress = Progress(frame.n, frame.total, _interval(elapsed), _interval(eta), rate, loss, epoch)
    return progress, raw


class LogParser:
    """Incremental sd-scripts log parser: ``feed(bytes) -> events`` then ``close() -> events``.

    ``settings`` (the flat training options) make failure hints specific, e.g. which batch size
    to try after an out-of-memory error. A :class:`Failure` is emitted as soon as its evidence is
    seen (a traceback's exception line, ``No data found``, a NaN loss); the process may still be
    running or may even exit 0, so the caller decides what to do. The last Failure is the one
    to report.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None, tail_lines: int = 200) -> None:
        self._stream = _Stream()
        self._settings: Mapping[str, Any] = dict(settings or {})
        self._limit = tail_lines
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._frame: str | None = None  # last steps frame, not yet in the tail
        self._last_key: tuple[int, int, str | None] | None = None
        # The newest drawing of a step, not yet reported (see _on_frame), and its step.
        self._held: tuple[Progress, str | None] | None = None
        self._seen_step: tuple[int, int] | None = None
        self._epoch: int | None = None
        self._block: dict[str, int] | None = None
        self._accelerate: list[str] | None = None
        self._in_traceback = False
        self._last_failure: Failure | None = None
        self._nan_seen = False

    def feed(self, data: bytes) -> list[Event]:
        """Events completed by ``data`` (any chunk of the log, in order)."""
        return self._handle(self._stream.feed(data))

    def close(self) -> list[Event]:
        """Events of whatever remained unterminated at the end of the log."""
        events = self._handle(self._stream.feed(b"", final=True))
        events += self._release()
        events += self._end_blocks()
        self._flush_frame()
        return events

    def tail(self) -> list[str]:
        """The last readable lines seen so far (see :func:`readable_lines`)."""
        lines = [*self._tail, *([self._frame] if self._frame else [])]
        return lines[-self._limit :]

    def _handle(self, items: Iterable[_Item]) -> list[Event]:
        events: list[Event] = []
        for item in items:
            if isinstance(item, _Frame):
                events += self._on_frame(item)
            else:
                events += self._on_message(item)
        return events

    def _flush_frame(self) -> None:
        if self._frame is not None:
            self._tail.append(self._frame)
            self._frame = None

    def _on_frame(self, frame: _Frame) -> list[Event]:
        """Progress, with each step's own loss.

        sd-scripts draws each step twice: ``progress_bar.update(1)`` shows step N with the
        previous step's ``avr_loss`` still in the postfix, then ``set_postfix`` redraws step N with
        its own (tqdm may skip the first drawing, never the second). So the last drawing of a step
        is the true one: a frame is reported when a second drawing of its step arrives, or when
        anything else follows it (the next step, a log line, the end of the log).
        """
        if frame.desc != "steps" or frame.text == self._frame:
            return []  # not the step bar, or the same drawing again (seen early, then whole)
        self._frame = frame.text
        progress, raw_loss = _progress(frame, self._epoch)
        events: list[Event] = []
        loss = progress.avr_loss
        if loss is not None and not math.isfinite(loss) and not self._nan_seen:
            self._nan_seen = True
            events += self._fail(_nan_failure(frame.text, self._settings))
        step = (frame.n, frame.total)
        again = step == self._seen_step  # a second drawing of the step seen last
        self._seen_step = step
        if again:
            self._held = None  # the earlier drawing of this step carried the previous loss
        events = self._release() + events
        if raw_loss is None or again:
            events += self._report(progress, raw_loss)  # no loss to mix up, or the true drawing
        else:
            self._held = (progress, raw_loss)
        return events

    def _report(self, progress: Progress, raw_loss: str | None) -> list[Event]:
        key = (progress.step, progress.total, raw_loss)
        if key == self._last_key:
            return []
        self._last_key = key
        return [progress]

    def _release(self) -> list[Event]:
        """The held drawing, if any: something followed it, so it was the last of its step."""
        held, self._held = self._held, None
        return self._report(*held) if held is not None else []

    def _on_message(self, message: _Message) -> list[Event]:
        released = self._release()
        self._flush_frame()
        if message.text.strip():
            self._tail.append(_render(message))
        events = released + self._in_blocks(message)
        if message.level is None:
            events += self._traceback(message.text)
        return events + self._match(message)

    def _in_blocks(self, message: _Message) -> list[Event]:
        """Multi-line plain blocks: ``running training`` and accelerate's defaults warning."""
        text = message.text
        if self._block is not None:
            m = _BLOCK_LINE.fullmatch(text) if message.level is None else None
            if m is None:
                return self._end_blocks()
            field = _BLOCK_FIELDS.get(m["label"])
            if field:
                self._block[field] = int(m["value"])
            return self._end_blocks() if field == "total_steps" else []
        if self._accelerate is not None:
            if text.startswith("\t"):
                self._accelerate.append(text.strip().replace("`", ""))
                return []
            return self._end_blocks()
        return []

    def _end_blocks(self) -> list[Event]:
        events: list[Event] = []
        if self._block is not None:
            b, self._block = self._block, None
            events.append(
                TrainingStarted(
                    b.get("num_images"),
                    b.get("batches_per_epoch"),
                    b.get("epochs"),
                    b.get("batch_size"),
                    b.get("total_steps"),
                )
            )
        if self._accelerate is not None:
            used, self._accelerate = self._accelerate, None
            events.append(LogWarning("accelerate launch used defaults: " + "; ".join(used)))
        return events

    def _match(self, message: _Message) -> list[Event]:
        text = message.text.strip()
        if m := _EPOCH.fullmatch(text):
            self._epoch = int(m[1])
            return [EpochStart(int(m[1]), int(m[2]))]
        if m := _CHECKPOINT.fullmatch(text):
            return [CheckpointSaved(m[1].strip())]
        if text == "model saved.":
            return [ModelSaved()]
        if text.startswith("running training"):
            self._block = {}
            return []
        if text.startswith(_ACCELERATE_DEFAULTS):
            self._accelerate = []
            return []
        if _NO_DATA.search(text):
            return self._fail(_diagnose_lines(list(self._tail), self._settings))
        if message.level in ("WARNING", "ERROR", "CRITICAL") or (
            message.level is None and _PLAIN_WARNINGS.match(text)
        ):
            return [] if _BENIGN_WARNINGS.match(text) else [LogWarning(text)]
        return []

    def _traceback(self, line: str) -> list[Event]:
        if line.strip() == "Traceback (most recent call last):":
            self._in_traceback = True
            return []
        if not self._in_traceback or line[:1].isspace():
            return []
        self._in_traceback = False
        if line.startswith(("During handling", "The above exception")):
            return []
        return self._fail(_diagnose_lines(list(self._tail), self._settings))

    def _fail(self, failure: Failure | None) -> list[Event]:
        if failure is None or failure == self._last_failure:
            return []
        self._last_failure = failure
        return [failure]


def parse(data: bytes, settings: Mapping[str, Any] | None = None) -> list[Event]:
    """All events of a whole log."""
    parser = LogParser(settings)
    return parser.feed(data) + parser.close()


# ---------------------------------------------------------------------------------------------
# Layer 3: diagnosis of a failed run

_EXCEPTION = re.compile(
    r"(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)(?::.*)?"
)
_LAUNCHER_EXCEPTION = "subprocess.CalledProcessError"


def _shorten(line: str, limit: int = 240) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[: limit - 3].rsplit(" ", 1)[0] + "..."


def _get_int(settings: Mapping[str, Any], key: str) -> int | None:
    value = settings.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _max_side(resolution: Any) -> int | None:
    parts = re.findall(r"\d+", str(resolution)) if resolution is not None else []
    return max(int(p) for p in parts) if parts else None


def _memory_steps(s: Mapping[str, Any]) -> list[str]:
    """Settings that lower VRAM use, cheapest in quality first, skipping those already applied."""
    steps = []
    if not s.get("gradient_checkpointing"):
        steps.append("--set gradient_checkpointing=true")
    batch = _get_int(s, "train_batch_size") or 1
    if batch > 1:
        steps.append(f"--set train_batch_size={max(1, batch // 2)} (now {batch})")
    if not s.get("cache_latents"):
        steps.append("--set cache_latents=true")
    if "cache_text_encoder_outputs" in s and not s["cache_text_encoder_outputs"]:
        steps.append("--set cache_text_encoder_outputs=true --set network_train_unet_only=true")
    optimizer = str(s.get("optimizer_type") or "AdamW").lower()
    if "8bit" not in optimizer and "adafactor" not in optimizer:
        steps.append("--set optimizer_type=AdamW8bit (needs bitsandbytes)")
    if s.get("mixed_precision") in (None, "no"):
        steps.append("--set mixed_precision=bf16 (fp16 on cards without bf16)")
    dim = _get_int(s, "network_dim")
    if dim is not None and dim > 8:
        steps.append(f"--set network_dim={dim // 2} (now {dim})")
    side = _max_side(s.get("resolution"))
    if side is not None and side > 512:
        steps.append(f"a lower resolution (now {side})")
    return steps


def _oom_hint(m: re.Match[str], s: Mapping[str, Any], lines: list[str]) -> str:
    if not s:
        return (
            "the GPU ran out of memory: lower train_batch_size, enable gradient_checkpointing and"
            " cache_latents (cache_text_encoder_outputs too for SDXL), use an 8-bit optimizer"
            " (AdamW8bit), or lower network_dim or the resolution"
        )
    steps = _memory_steps(s)
    if not steps:
        return "the GPU ran out of memory with every memory saving on: use a larger GPU"
    return "the GPU ran out of memory; try, in this order: " + "; ".join(steps[:3])


# Optimizers that pick their own step size: a learning rate near 1.0 is how they are used.
_ADAPTIVE_OPTIMIZERS = ("prodigy", "dadapt")
# estimate: the presets use 1e-4 to 5e-4 (the published recipes, docs/sources.md [9], [10], [16]);
# ten times the usual is where a LoRA's loss starts to blow up.
_HIGH_LEARNING_RATE = 1e-3
# Options sdxl_train_network.py adds to train_network.py's (docs/sources.md [59]): among SD1.x, SD2.x
# and SDXL runs, an SDXL run's settings. The FLUX.1 and SD3 scripts have them too, so a run of those
# (its LoRA module, or the T5-XXL they load) is told apart first: their VAE is not SDXL's.
_SDXL_ONLY = ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk",
              "disable_mmap_load_safetensors")  # fmt: skip


def _is_dit(s: Mapping[str, Any]) -> bool:
    """A FLUX.1 / Chroma / SD3 run: its LoRA module is its family's own, or it loads a T5-XXL."""
    from kohyawrap.sdscripts import FAMILIES

    others = {f.network_module for f in FAMILIES.values() if f.network_module != "networks.lora"}
    return str(s.get("network_module") or "") in others or "t5xxl" in s


def _is_sdxl(s: Mapping[str, Any]) -> bool:
    return not _is_dit(s) and any(key in s for key in _SDXL_ONLY)


def _learning_rate(s: Mapping[str, Any]) -> tuple[str, float] | None:
    for key in ("unet_lr", "learning_rate"):
        lr = s.get(key)
        if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0:
            return key, float(lr)
    return None


def _nan_causes(s: Mapping[str, Any]) -> list[str]:
    """The likely causes of a NaN loss in these settings, most likely first, each with its fix."""
    causes = []
    optimizer = str(s.get("optimizer_type") or "AdamW").lower()
    fp16 = s.get("mixed_precision") == "fp16" or bool(s.get("full_fp16"))
    if fp16 and optimizer.startswith("prodigy"):
        causes.append(
            "Prodigy with fp16: adaptive optimizers are reported to give NaN or to learn nothing in "
            "fp16 (docs/sources.md [62]): --set mixed_precision=bf16 where the GPU has bf16, or "
            "--set optimizer_type=AdamW8bit"
        )
    if fp16 and _is_sdxl(s) and not s.get("no_half_vae"):
        causes.append(
            "SDXL in fp16 without no_half_vae: SDXL's VAE overflows in fp16 "
            "(sd-scripts docs/sdxl_train_network.md): --set no_half_vae=true"
        )
    rate = _learning_rate(s)
    if rate is not None and not optimizer.startswith(_ADAPTIVE_OPTIMIZERS):
        key, lr = rate
        if lr >= _HIGH_LEARNING_RATE:
            causes.append(
                f"a learning rate too high for {s.get('optimizer_type') or 'AdamW'} ({key}={lr:g};"
                f" the presets use 1e-4 to 5e-4): --set {key}={lr / 10:g}"
            )
    return causes


def _nan_tips(s: Mapping[str, Any]) -> list[str]:
    """What else to try when nothing in the settings stands out."""
    tips = []
    rate = _learning_rate(s)
    if rate is not None:
        key, lr = rate
        tips.append(f"lower the learning rate (--set {key}={lr / 2:g}, now {lr:g})")
    else:
        tips.append("lower the learning rate")
    if s.get("mixed_precision") in ("fp16", None):
        tips.append("use --set mixed_precision=bf16 where the GPU supports it (fp16 overflows)")
    if s.get("mixed_precision") in ("fp16", None) and not s.get("no_half_vae") and not _is_dit(s):
        tips.append("for SDXL in fp16 --set no_half_vae=true")
    return tips


def _nan_hint(s: Mapping[str, Any]) -> str:
    causes, tips = _nan_causes(s), _nan_tips(s)
    if not causes:
        return "the loss became NaN, so the LoRA is ruined: " + "; ".join(tips)
    others = causes[1:] + tips
    return f"the loss became NaN, so the LoRA is ruined; likely cause: {causes[0]}" + (
        f" (else: {'; '.join(others)})" if others else ""
    )


def _nan_failure(line: str, settings: Mapping[str, Any]) -> Failure:
    return Failure("nan", _shorten(line), _nan_hint(settings))


_PIP_NAMES = {"cv2": "opencv-python", "PIL": "pillow", "yaml": "PyYAML", "sklearn": "scikit-learn"}


def _import_hint(m: re.Match[str], s: Mapping[str, Any], lines: list[str]) -> str:
    module = (m["module"] or "").split(".")[0]
    if module == "bitsandbytes":
        return (
            "8-bit optimizers (AdamW8bit, Lion8bit, ...) need bitsandbytes: install it in"
            " sd-scripts' environment, or use --set optimizer_type=AdamW"
        )
    if module == "xformers":
        return "xformers is not installed: use --set sdpa=true --set xformers=false instead"
    if module in ("library", "networks"):
        return f"sd-scripts' own package '{module}' is missing: the checkout is incomplete"
    if not module:
        return "an installed package does not match sd-scripts: reinstall its requirements.txt"
    pip_name = _PIP_NAMES.get(module, module)
    return f"install the missing package in sd-scripts' environment: pip install {pip_name}"


def _model_hint(m: re.Match[str], s: Mapping[str, Any], lines: list[str]) -> str:
    model = m["model"] or ""
    if not model:
        return (
            "the base model file is damaged or incomplete (interrupted download?): fetch it again"
        )
    if "Sdxl" in model or "SDXL" in model:
        return (
            "sdxl_train_network.py was given a checkpoint that is not SDXL: pick the model preset"
            " that matches the checkpoint (SD 1.x/2.x use train_network.py)"
        )
    return (
        f"the checkpoint does not fit {model}: an SDXL checkpoint needs the sdxl preset"
        " (sdxl_train_network.py); an SD 2.x one needs the sd2 preset (v2, v_parameterization)"
    )


def _config_hint(m: re.Match[str], s: Mapping[str, Any], lines: list[str]) -> str:
    if m["split"]:
        return 'resolution must be a string in the training config: resolution = "512" or "512,768"'
    if m["network"]:
        return 'network_module is missing: set network_module = "networks.lora"'
    return "the --config_file path does not exist (relative paths start at the run folder)"


def _no_data_hint(m: re.Match[str], s: Mapping[str, Any], lines: list[str]) -> str:
    ignored = [
        line.rsplit(":", 1)[1].strip()
        for line in lines
        if "ignore directory without repeats" in line and ":" in line
    ]
    hint = (
        "sd-scripts found no training images: train_data_dir must be the PARENT of folders named"
        " <repeats>_<concept> (e.g. dataset/10_sks dog/) holding .png/.jpg/.jpeg/.webp/.bmp files"
    )
    return hint + (f"; ignored (no repeat count): {', '.join(ignored)}" if ignored else "")


def _disk_hint(m: re.Match[str], s: Mapping[str, Any], lines: list[str]) -> str:
    return (
        "the host's disk is full: free space (old runs, ~/.cache/huggingface), keep fewer"
        " checkpoints (save_last_n_epochs), or rent a larger disk"
    )


def _nan_sig_hint(m: re.Match[str], s: Mapping[str, Any], lines: list[str]) -> str:
    return _nan_hint(s)


def _cuda_hint(m: re.Match[str], s: Mapping[str, Any], lines: list[str]) -> str:
    if m["bnb"]:
        return (
            "bitsandbytes does not match the host's CUDA: install one built for it in the run's"
            " environment (pip install -U bitsandbytes), or --set optimizer_type=AdamW"
        )
    return (
        "the host's NVIDIA driver is older than the CUDA the torch wheels were built for: choose"
        " wheels for the driver's CUDA with --torch-spec (`kohyawrap hosts check` shows it; e.g."
        " .../whl/cu121 for a CUDA 12.1-12.3 driver), or rent a host with a newer driver"
    )


@dataclass(frozen=True)
class _Signature:
    kind: FailureKind
    pattern: re.Pattern[str]
    hint: Callable[[re.Match[str], Mapping[str, Any], list[str]], str]


# Checked in this order: the root cause of a crash before the symptoms printed after it.
_SIGNATURES = (
    _Signature(
        "oom",
        re.compile(r"OutOfMemoryError|CUDA out of memory|CUDA error: out of memory"),
        _oom_hint,
    ),
    _Signature(
        "disk", re.compile(r"No space left on device|\[Errno 28\]|Disk quota exceeded"), _disk_hint
    ),
    _Signature(
        "cuda",
        re.compile(
            r"(?P<bnb>libbitsandbytes_cuda\d*\S*\.so|bitsandbytes was compiled without GPU support"
            r"|CUDA Setup failed despite GPU being available)"
            r"|The NVIDIA driver on your system is too old"
        ),
        _cuda_hint,
    ),
    _Signature(
        "import",
        re.compile(r"ModuleNotFoundError: No module named '(?P<module>[^']+)'|^ImportError: "),
        _import_hint,
    ),
    _Signature(
        "model_load",
        re.compile(
            r"Error\(s\) in loading state_dict for (?P<model>\w+)"
            r"|SafetensorError: Error while deserializing header"
        ),
        _model_hint,
    ),
    _Signature(
        "config",
        re.compile(
            r"(?P<split>'int' object has no attribute 'split')"
            r"|(?P<network>import network module: None|'NoneType' object has no attribute"
            r" 'startswith')|(?P<file>\S+\.toml not found\.)"
        ),
        _config_hint,
    ),
    _Signature(
        "no_data",
        re.compile(r"No data found\b|num train images \* repeats[^:]*: 0$"),
        _no_data_hint,
    ),
    _Signature("nan", re.compile(r"avr_loss=nan\b|loss is nan", re.IGNORECASE), _nan_sig_hint),
)


def _other(lines: list[str]) -> Failure | None:
    exceptions = [line for line in lines if _EXCEPTION.fullmatch(line.strip())]
    own = [line for line in exceptions if not line.startswith(_LAUNCHER_EXCEPTION)]
    if own:
        return Failure("other", _shorten(own[-1]), "see the log lines above for the cause")
    if exceptions:
        killed = "SIGKILL" in exceptions[-1]
        hint = (
            "the training process was killed (SIGKILL): often the host ran out of RAM"
            if killed
            else "sd-scripts exited with an error: see the log lines above"
        )
        return Failure("other", _shorten(exceptions[-1]), hint)
    return None


def _diagnose_lines(lines: list[str], settings: Mapping[str, Any]) -> Failure | None:
    for signature in _SIGNATURES:
        for line in reversed(lines):
            m = signature.pattern.search(line.strip())
            if m is not None:
                hint = signature.hint(m, settings, lines)
                return Failure(signature.kind, _shorten(line), hint)
    return _other(lines)


def diagnose(tail: str, settings: Mapping[str, Any] | None = None) -> Failure | None:
    """Why a run failed, from the end of its log; None when nothing in ``tail`` looks fatal.

    ``tail`` may be raw output (tqdm frames, rich wrapping). ``settings`` are the flat training
    options; with them the hint names the setting to change and its next value.
    """
    return _diagnose_lines(readable_lines(tail), settings or {})
