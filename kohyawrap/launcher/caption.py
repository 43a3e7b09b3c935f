"""Captions from a natural-language captioner on the GPU host (FLUX needs sentences, not tags).

:func:`caption_on_host` takes a connected Host, the host's Python (one with torch and
transformers: the sd-scripts venv) and the images, and returns one caption per image. Built on
the Host protocol only: the images go up in one incremental tar stream (``upload_tree``), a
script rendered from ``templates/remote/caption.sh.j2`` loads the captioner and writes every
caption into one JSON file, and that file comes back through ``download``, checked against the
sha256 the host computed. The job's folder is named after its inputs, so running it again (after
a dropped connection, say) re-uses the upload and, once finished, the captions.

It is meant to run beside other work (``train`` can run it while the base model downloads):
plain inputs, progress through a small reporter, no CLI. :class:`HostCaptioner` adapts it to
the ``Captioner`` protocol that ``dataset caption`` uses.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from kohyawrap.dataset import imaging
from kohyawrap.dataset.caption import (
    MAX_CAPTION_CHARS,
    Progress,
    RawCaption,
    compose_caption,
)
from kohyawrap.errors import HostError, RemoteCommandError, UsageError
from kohyawrap.hosts.base import Host
from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.scripts import parse_kv, render_script

UPLOAD_MAX_SIDE = 1024  # the captioners see 768 (Florence-2) or 384 (JoyCaption) px
_MAX_RESULT_BYTES = 64 << 20  # captions.json of 10,000 long captions is ~40 MB
_MAX_LINE = 64 << 10


@dataclass(frozen=True)
class CaptionerSpec:
    """A captioner the host can run: its default model, prompt and extra packages."""

    name: str
    model: str
    prompt: str
    needs: tuple[str, ...] = ()  # modules its code imports beyond sd-scripts' venv
    vram: str = ""


CAPTIONERS = {
    # Florence-2's own detailed-caption task; its remote code imports timm and einops.
    "florence2": CaptionerSpec(
        "florence2",
        "microsoft/Florence-2-large",
        "<MORE_DETAILED_CAPTION>",
        ("timm", "einops"),
        "about 4 GB",
    ),
    # JoyCaption Beta One (Llama 3.1 8B + SigLIP2) with its model card's descriptive prompt.
    "joycaption": CaptionerSpec(
        "joycaption",
        "fancyfeast/llama-joycaption-beta-one-hf-llava",
        "Write a long descriptive caption for this image in a formal tone.",
        (),
        "about 20 GB",
    ),
}


@dataclass(frozen=True)
class HostCaptionOptions:
    """Which captioner, where its files go on the host, and what to put first."""

    captioner: str = "florence2"
    model: str | None = None  # default: the captioner's
    prompt: str | None = None  # Florence-2: the task token; JoyCaption: the instruction
    trigger: str | None = None
    work_dir: str = "~/kohyawrap"
    model_script: Path | None = None  # a local file replacing the built-in loader
    timeout: float | None = None

    @property
    def spec(self) -> CaptionerSpec:
        """The captioner's facts; UsageError for an unknown name."""
        if self.captioner not in CAPTIONERS:
            raise UsageError(
                f"unknown captioner {self.captioner!r}",
                hint="choose one of: " + ", ".join(sorted(CAPTIONERS)),
            )
        return CAPTIONERS[self.captioner]


class CaptionReporter(Protocol):
    """What a caption job tells the person watching; every method cheap and never raising."""

    def stage(self, name: str, detail: str = "") -> None:
        """A step starts: upload, caption, fetch."""

    def transfer(self, label: str, done: int, total: int) -> None:
        """Bytes of the upload so far."""

    def progress(self, done: int, total: int) -> None:
        """Images captioned on the host so far."""


class SilentCaptionReporter:
    """Shows nothing (library use)."""

    def stage(self, name: str, detail: str = "") -> None:
        pass

    def transfer(self, label: str, done: int, total: int) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass


@dataclass(frozen=True)
class HostCaptions:
    """The captions that came back, by the names the images were given."""

    captions: Mapping[str, str]  # name -> caption, the trigger first
    raw: Mapping[str, str]  # name -> what the captioner said
    errors: Mapping[str, str]  # name -> why it has no caption
    job_dir: str
    cached: bool = False
    facts: Mapping[str, str] = field(default_factory=dict)  # KW lines the script printed


def caption_on_host(
    host: Host,
    python: str,
    images: Mapping[str, Path],
    options: HostCaptionOptions,
    reporter: CaptionReporter | None = None,
    hf_token: str | None = None,
) -> HostCaptions:
    """Caption ``images`` (plain file name -> local file) on ``host`` with ``python``.

    ``python`` empty: the newest kohyawrap venv under the work dir, else ``python3``.
    ``hf_token`` travels as a 0600 file over the SSH channel, never in a command line, and the
    script deletes it before the model loads. Raises HostError when the job fails.
    """
    spec = options.spec
    report = reporter or SilentCaptionReporter()
    work = _expand(options.work_dir, host.home())
    job_dir = posixpath.join(work, "captions", _job_id(images, options, spec))
    script_path = _upload(host, images, options, job_dir, report)
    token_file = ""
    if hf_token:
        token_file = posixpath.join(job_dir, ".hf-token")
        host.put_bytes(hf_token.encode() + b"\n", token_file, mode=0o600)
    out = posixpath.join(job_dir, "captions.json")
    report.stage("caption", f"{spec.name} ({options.model or spec.model}) on {host.label}")
    script = render_script(
        "caption",
        python=python,
        work=work,
        images=posixpath.join(job_dir, "images"),
        out=out,
        captioner=spec.name,
        model=options.model or spec.model,
        prompt=options.prompt or spec.prompt,
        model_script=script_path,
        token_file=token_file,
        deps=posixpath.join(work, "caption-deps"),
        needs=spec.needs,
        hf_home=posixpath.join(work, "models", "hf"),
    )
    facts = _run(host, script, report, spec, options.timeout)
    data = _fetch(host, out, report)
    return _captions(data, images, options.trigger, job_dir, facts)


def _expand(work_dir: str, home: str) -> str:
    if work_dir == "~" or work_dir.startswith("~/"):
        return posixpath.join(home, work_dir[2:])
    return work_dir if work_dir.startswith("/") else posixpath.join(home, work_dir)


def _job_id(images: Mapping[str, Path], options: HostCaptionOptions, spec: CaptionerSpec) -> str:
    """Same images, captioner, model, prompt and script -> same job (and its cached result)."""
    digest = hashlib.sha256()
    for name in sorted(images):
        digest.update(f"{name}\0{file_sha256(images[name])}\0".encode())
    script = file_sha256(options.model_script) if options.model_script else ""
    digest.update(f"{spec.name}\0{options.model}\0{options.prompt}\0{script}".encode())
    return f"{spec.name}-{digest.hexdigest()[:16]}"


def _upload(
    host: Host,
    images: Mapping[str, Path],
    options: HostCaptionOptions,
    job_dir: str,
    report: CaptionReporter,
) -> str:
    report.stage("upload", f"{len(images)} images")
    host.upload_tree(
        dict(images),
        posixpath.join(job_dir, "images"),
        progress=lambda done, total: report.transfer("images", done, total),
    )
    if options.model_script is None:
        return ""
    remote = posixpath.join(job_dir, "model_script.py")
    host.put_bytes(options.model_script.read_bytes(), remote)
    return remote


def _run(
    host: Host, script: str, report: CaptionReporter, spec: CaptionerSpec, timeout: float | None
) -> dict[str, str]:
    """Run the job, turning its ``KW progress=a/b`` lines into progress as they arrive."""
    facts: dict[str, str] = {}
    try:
        for line in _lines(host.stream(script, timeout=timeout)):
            found = parse_kv(line)
            facts.update(found)
            done, _, total = found.get("progress", "").partition("/")
            if done.isdigit() and total.isdigit():
                report.progress(int(done), int(total))
    except RemoteCommandError as err:
        raise RemoteCommandError(
            f"caption.sh ({spec.name})",
            err.returncode,
            err.output,
            hint=f"{spec.name} needs a GPU with {spec.vram} free, torch and transformers in the "
            "host's Python (--host-python), and network access to the Hugging Face Hub",
        ) from err
    except HostError as err:
        # The host's message would quote the whole script; say what was happening instead.
        raise HostError(
            f"the connection to {host.label} broke while captioning",
            hint="run the same command again: the upload is re-used and finished captions kept",
        ) from err
    return facts


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        pending = pending[-_MAX_LINE:]  # a line without end (a progress bar) stays bounded
        for line in complete:
            yield line.decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


def _fetch(host: Host, out: str, report: CaptionReporter) -> dict[str, Any]:
    """captions.json, downloaded and checked against the host's sha256, then parsed."""
    report.stage("fetch", "captions")
    stat = host.stat(out)
    digest = host.sha256([out]).get(out)
    if stat is None or digest is None:
        raise HostError(f"the caption job finished but {out} is missing on {host.label}")
    if stat.size > _MAX_RESULT_BYTES:
        raise HostError(f"{out} is {stat.size} bytes: too large for captions, not fetched")
    with tempfile.TemporaryDirectory(prefix="kohyawrap-captions-") as tmp:
        local = Path(tmp) / "captions.json"
        host.download(out, local, expected_sha256=digest)
        try:
            data = json.loads(local.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HostError(f"{out} from {host.label} is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise HostError(f"{out} from {host.label} is not a captions file")
    return data


def _captions(
    data: dict[str, Any],
    images: Mapping[str, Path],
    trigger: str | None,
    job_dir: str,
    facts: dict[str, str],
) -> HostCaptions:
    """Only the names we sent count; anything else the host wrote is ignored."""
    said = data.get("captions") if isinstance(data.get("captions"), dict) else {}
    failed = data.get("errors") if isinstance(data.get("errors"), dict) else {}
    raw: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name in sorted(images):
        text = said.get(name) if isinstance(said, dict) else None
        if isinstance(text, str) and text.strip():
            raw[name] = " ".join(text.split())[:MAX_CAPTION_CHARS]
        else:
            why = failed.get(name) if isinstance(failed, dict) else None
            errors[name] = str(why)[:500] if why else "the captioner returned no caption"
    captions = {n: compose_caption(RawCaption(text=t), trigger) for n, t in raw.items()}
    cached = facts.get("captions") == "cached"
    return HostCaptions(captions, raw, errors, job_dir, cached, facts)


# ---------------------------------------------------------------------------------------------
# ``dataset caption --captioner``: the same job behind the Captioner protocol


def prepare_uploads(
    images: Sequence[Path], folder: Path, max_side: int = UPLOAD_MAX_SIDE
) -> tuple[dict[str, Path], dict[int, str]]:
    """Upright JPEG copies of ``images`` in ``folder``, at most ``max_side`` px, named by index
    (``00000.jpg``: no user file name reaches the host). Returns (name -> copy, index -> why not).
    """
    uploads: dict[str, Path] = {}
    problems: dict[int, str] = {}
    for index, path in enumerate(images):
        name = f"{index:05d}.jpg"
        try:
            width, height = imaging.read_header(path).upright_size
        except (imaging.ImageProblem, OSError) as err:
            problems[index] = str(err)
            continue
        scale = min(1.0, max_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        written = imaging.write_image(str(path), str(folder / name), "convert", size, "JPEG")
        if written.ok:
            uploads[name] = folder / name
        else:
            problems[index] = written.error or "unreadable"
    return uploads, problems


class _ProgressReporter(SilentCaptionReporter):
    def __init__(self, inner: CaptionReporter, progress: Progress | None) -> None:
        self.inner = inner
        self.callback = progress

    def stage(self, name: str, detail: str = "") -> None:
        self.inner.stage(name, detail)

    def transfer(self, label: str, done: int, total: int) -> None:
        self.inner.transfer(label, done, total)

    def progress(self, done: int, total: int) -> None:
        self.inner.progress(done, total)
        if self.callback is not None:
            self.callback(done, total)


class HostCaptioner:
    """A captioner on a connected host, as ``dataset caption`` uses it (``Captioner``)."""

    def __init__(
        self,
        host: Host,
        python: str,
        options: HostCaptionOptions,
        reporter: CaptionReporter | None = None,
        hf_token: str | None = None,
    ) -> None:
        spec = options.spec
        self.host = host
        self.python = python
        # The trigger is put first by the caller, like for the tagger's tags.
        self.options = replace(options, trigger=None)
        self.reporter = reporter or SilentCaptionReporter()
        self.hf_token = hf_token
        self.label = f"{spec.name} {options.model or spec.model} on {host.label}"

    def caption(
        self, images: Sequence[Path], progress: Progress | None = None
    ) -> Iterator[RawCaption]:
        """Prepare small upright copies, caption them on the host, yield in ``images`` order."""
        with tempfile.TemporaryDirectory(prefix="kohyawrap-caption-upload-") as tmp:
            uploads, problems = prepare_uploads(images, Path(tmp))
            result = None
            if uploads:
                result = caption_on_host(
                    self.host,
                    self.python,
                    uploads,
                    self.options,
                    _ProgressReporter(self.reporter, progress),
                    self.hf_token,
                )
        for index in range(len(images)):
            name = f"{index:05d}.jpg"
            if index in problems:
                yield RawCaption(error=problems[index])
            elif result is not None and name in result.raw:
                yield RawCaption(text=result.raw[name])
            else:
                why = result.errors.get(name) if result is not None else None
                yield RawCaption(error=why or "no caption came back")
