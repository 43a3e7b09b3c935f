"""Build a training folder: scan the inputs, plan the layout, apply it, lint the result.

``apply_layout`` is the one writer. It builds into a hidden folder next to the output and renames
it into place at the end, so an output is either the old one or the complete new one, never half
written; sources are only ever read. The build report goes beside the output
(``<out>.build.json``), never inside it: sd-scripts must see only concept folders there.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kohyawrap.dataset import imaging
from kohyawrap.dataset.buckets import BucketSettings, TrainingLength, bucket_settings_for
from kohyawrap.dataset.layout import (
    DEFAULT_TEMPLATE,
    SUGGESTED_EPOCHS,
    BuildOptions,
    ImageOp,
    Layout,
    group_concepts,
    plan_layout,
    reg_concepts,
)
from kohyawrap.dataset.lint import LintReport, lint
from kohyawrap.dataset.scan import (
    REG_FOLDER,
    SourceFolder,
    parse_concept_folder,
    read_training_dir,
    scan_sources,
)
from kohyawrap.errors import DatasetError, UsageError
from kohyawrap.fileio import atomic_write, dump_json
from kohyawrap.models import Finding

Progress = Callable[[int, int], None]
# Lengths used when the caller has no presets to ask (the CLI always asks them).
SUGGESTED_LENGTH = TrainingLength(
    max_train_epochs=SUGGESTED_EPOCHS, basis=f"batch size 1, {SUGGESTED_EPOCHS} epochs assumed"
)
SD_SCRIPTS_LENGTH = TrainingLength(basis="sd-scripts' defaults: batch size 1, 1600 steps")


@dataclass(frozen=True)
class BuildRequest:
    """Everything ``kohyawrap dataset build`` was asked to do."""

    inputs: tuple[Path, ...]
    output: Path
    triggers: tuple[str, ...]
    model: str  # the model preset's family (repeats rule); the shipped preset of that name
    class_words: tuple[str, ...] = ()
    repeats: tuple[int, ...] = ()
    reg_dirs: tuple[Path, ...] = ()
    caption_template: str | None = None
    caption_extension: str = ".txt"
    max_side: int | None = None  # None: the model's max_bucket_reso
    resize: bool = True
    strict: bool = False
    force: bool = False
    jobs: int | None = None
    # How the result is linted and its steps counted (``forecast.preset_steps`` gives the
    # presets' own, as ``plan`` counts): by default batch 1 for the suggested 10 epochs.
    length: TrainingLength = SUGGESTED_LENGTH
    # The model preset's buckets and smallest sharp short side (``forecast.preset_steps``);
    # None: the shipped preset named ``model``.
    bucket: BucketSettings | None = None
    min_short_side: int | None = None


@dataclass(frozen=True)
class Outcome:
    """One image operation and what came of it."""

    op: ImageOp
    written: imaging.Written

    @property
    def ok(self) -> bool:
        """True when the image (and so its caption) is in the output."""
        return self.written.ok


@dataclass(frozen=True)
class BuildResult:
    """What a build did: the layout, what was written or skipped, and the lint of the output."""

    output: Path
    report_path: Path
    layout: Layout
    outcomes: tuple[Outcome, ...]
    lint: LintReport
    max_side: int | None
    notes: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> tuple[Outcome, ...]:
        """Images that turned out damaged while being written (left out)."""
        return tuple(o for o in self.outcomes if not o.ok)

    def to_json(self) -> dict[str, Any]:
        """The build report (also written to ``<out>.build.json``)."""
        return build_report(self)


def build_dataset(request: BuildRequest, progress: Progress | None = None) -> BuildResult:
    """Scan, plan, write and lint a dataset. Raises DatasetError/UsageError on bad input."""
    output = request.output
    _check_paths(request)
    _check_output(output, request.force)
    max_side = _max_side(request)
    folders = [scan_sources(p, request.caption_extension) for p in request.inputs]
    regs = [scan_sources(p, request.caption_extension) for p in request.reg_dirs]
    _refuse_unreadable_captions([*folders, *regs])
    concepts = group_concepts(folders, request.triggers, request.class_words, request.repeats)
    concepts += reg_concepts(regs, request.class_words)
    options = BuildOptions(
        model=request.model,
        max_side=max_side,
        caption_template=request.caption_template or DEFAULT_TEMPLATE,
        caption_extension=request.caption_extension,
    )
    layout = plan_layout(concepts, options)
    swept = sweep_stale_builds(output)
    outcomes = apply_layout(
        layout,
        output,
        force=request.force,
        jobs=request.jobs,
        strict=request.strict,
        progress=progress,
    )
    report = _lint_output(output, request, outcomes)
    failed = [o for o in outcomes if not o.ok]
    notes = (
        layout.notes
        + tuple(
            Finding("warning", "skipped", str(o.op.source), o.written.error or "failed")
            for o in failed
        )
        + swept
    )
    result = BuildResult(output, report_path_for(output), layout, outcomes, report, max_side, notes)
    atomic_write(result.report_path, dump_json(result.to_json()))
    return result


def report_path_for(output: Path) -> Path:
    """Where the build report of ``output`` goes: beside it, ``<name>.build.json``."""
    return output.parent / f"{output.name}.build.json"


# ---------------------------------------------------------------------------------------------
# Checks before anything is written


def _check_paths(request: BuildRequest) -> None:
    out = request.output.resolve()
    sources = [p.resolve() for p in (*request.inputs, *request.reg_dirs)]
    if len(set(sources)) != len(sources):
        raise UsageError("the same folder is given twice as input", hint="give each folder once")
    for src in sources:
        if out == src or out.is_relative_to(src) or src.is_relative_to(out):
            raise UsageError(
                f"the output {request.output} overlaps the input {src}",
                hint="write the dataset to a separate folder, e.g. -o ./training_data",
            )


def _check_output(output: Path, force: bool) -> None:
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if not output.is_dir():
        raise UsageError(f"output {output} exists and is not a folder")
    if not force:
        raise UsageError(
            f"output {output} already exists", hint="add --force to replace it, or pick another -o"
        )
    strangers = [p.name for p in output.iterdir() if not _ours(p)]
    if strangers:
        raise UsageError(
            f"refusing to replace {output}: it holds things a dataset build did not make",
            evidence=strangers[:5],
            hint="remove them yourself or pick another -o",
        )


def _bucket(request: BuildRequest) -> BucketSettings:
    return request.bucket or bucket_settings_for(request.model)


def _ours(entry: Path) -> bool:
    if not entry.is_dir():
        return False
    return entry.name == REG_FOLDER or parse_concept_folder(entry.name) is not None


def _max_side(request: BuildRequest) -> int | None:
    default = _bucket(request).max_bucket_reso  # also: an unknown model stops here
    if not request.resize:
        return None
    if request.max_side is not None:
        if request.max_side < 64:
            raise UsageError(
                f"--max-side {request.max_side} is too small",
                hint="use at least the model's resolution",
            )
        return request.max_side
    return default


def _refuse_unreadable_captions(folders: Sequence[SourceFolder]) -> None:
    """Stop before writing when a caption file cannot be read as text: a caption the user wrote
    is never replaced by a guess or dropped silently. Every such file is listed."""
    bad = [
        f"{i.caption_path}: {i.caption_problem}"
        for folder in folders
        for i in folder.images
        if i.caption_problem is not None
    ]
    if bad:
        raise DatasetError(
            f"{len(bad)} caption file(s) cannot be read as text",
            evidence=bad,
            hint="save them as UTF-8 (or UTF-16 with a byte-order mark), or remove them",
        )


def _strict_error(problems: Sequence[tuple[str, str]]) -> DatasetError:
    return DatasetError(
        f"{len(problems)} input file(s) cannot be used (--strict)",
        evidence=[f"{path}: {why}" for path, why in problems],
        hint="fix or remove them, or drop --strict to skip them with a warning",
    )


# ---------------------------------------------------------------------------------------------
# The writer


def apply_layout(
    layout: Layout,
    output: Path,
    *,
    force: bool = False,
    jobs: int | None = None,
    strict: bool = False,
    progress: Progress | None = None,
) -> tuple[Outcome, ...]:
    """Write ``layout`` to ``output`` atomically; return the outcome of every image.

    Images that turn out damaged while being read are left out with their captions (or, with
    ``strict``, stop the build, leaving the old output untouched).
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / staging_name(output)
    staging.mkdir()
    try:
        for folder in sorted({op.dest.rsplit("/", 1)[0] for op in layout.images}):
            (staging / folder).mkdir(parents=True, exist_ok=True)
        results = _write_images(layout.images, staging, jobs, progress)
        outcomes = tuple(Outcome(op, r) for op, r in zip(layout.images, results, strict=True))
        failed = [(str(o.op.source), o.written.error or "failed") for o in outcomes if not o.ok]
        # Damage shows up in two places: headers (planning) and pixels (writing). --strict lists
        # both, so one run names every file to fix.
        planned = [(str(s.source), s.reason) for s in layout.skipped]
        if strict and (planned or failed):
            raise _strict_error(planned + failed)
        for o in outcomes:
            if o.ok:
                (staging / o.op.caption_dest).write_text(o.op.caption + "\n", encoding="utf-8")
        _swap_into_place(staging, output, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return outcomes


def staging_name(output: Path, *, pid: int | None = None, host: str | None = None) -> str:
    """The hidden folder a build of ``output`` writes into: ``.<name>.building-<host>-<pid>-<rnd>``.

    The owner (a hash of the host name and the process id) is in the name, set by the same
    ``mkdir`` that creates it, so a build killed at any moment leaves a folder the next build can
    tell is stale (see :func:`sweep_stale_builds`).
    """
    owner = pid if pid is not None else os.getpid()
    return f".{output.name}.building-{_host_tag(host)}-{owner}-{secrets.token_hex(4)}"


def sweep_stale_builds(output: Path) -> tuple[Finding, ...]:
    """Remove staging folders of earlier builds of ``output`` that were killed (SIGKILL, power
    loss) before they could clean up. Only folders named by :func:`staging_name` for this very
    output, made on this host, whose process is gone; anything else is left alone."""
    pattern = re.compile(
        rf"^\.{re.escape(output.name)}\.building-([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{8}}$"
    )
    if not output.parent.is_dir():
        return ()
    notes = []
    for entry in sorted(output.parent.iterdir()):
        found = pattern.match(entry.name)
        if not found or entry.is_symlink() or not entry.is_dir():
            continue
        host, pid = found.group(1), int(found.group(2))
        if host != _host_tag() or _alive(pid):
            continue
        shutil.rmtree(entry)
        notes.append(
            Finding(
                "note",
                "stale_build_removed",
                entry.name,
                f"removed what a killed build (process {pid}) left behind",
            )
        )
    return tuple(notes)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may still run; unsure counts as alive (nothing is removed)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _host_tag(host: str | None = None) -> str:
    name = host if host is not None else platform.node()
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]


def _write_images(
    ops: Sequence[ImageOp], staging: Path, jobs: int | None, progress: Progress | None
) -> Iterator[imaging.Written]:
    tasks = [(str(op.source), str(staging / op.dest), op.action, op.size, op.format) for op in ops]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    if workers == 1:
        results: Iterator[imaging.Written] = map(_write_one, tasks)
        yield from _counted(results, len(tasks), progress)
        return
    # Processes, not threads: decoding and resampling hold the GIL for most of their time.
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunk = max(1, len(tasks) // (workers * 8))
        yield from _counted(pool.map(_write_one, tasks, chunksize=chunk), len(tasks), progress)


def _write_one(task: tuple[str, str, str, tuple[int, int], str]) -> imaging.Written:
    return imaging.write_image(*task)


def _counted(
    results: Iterator[imaging.Written], total: int, progress: Progress | None
) -> Iterator[imaging.Written]:
    for done, result in enumerate(results, 1):
        if progress is not None:
            progress(done, total)
        yield result


def _swap_into_place(staging: Path, output: Path, force: bool) -> None:
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()  # an empty folder the user made for the output: simply fill it
    if not output.exists():
        os.replace(staging, output)
        return
    if not force:  # checked before the build; re-checked in case it appeared meanwhile
        raise UsageError(f"output {output} already exists", hint="add --force to replace it")
    old = output.parent / f".{output.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.replace(output, old)
    os.replace(staging, output)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# After writing: lint and report


def _lint_output(output: Path, request: BuildRequest, outcomes: Sequence[Outcome]) -> LintReport:
    tdir = read_training_dir(output, request.caption_extension)
    phashes = {o.op.dest: o.written.phash for o in outcomes if o.ok}
    trigger = request.triggers[0] if len(set(request.triggers)) == 1 else None
    return lint(
        tdir,
        model=request.model,
        bucket=_bucket(request),
        length=request.length,
        caption_extension=request.caption_extension,
        trigger=trigger,
        phashes=phashes,
        min_short_side=request.min_short_side,
    )


def build_report(result: BuildResult) -> dict[str, Any]:
    """The build as JSON data: concepts and repeats rule, every file, skips, notes and the lint.

    Deterministic (no times, sorted), so two builds of the same input give the same report.
    """
    return {
        "output": str(result.output),
        "max_side": result.max_side,
        "concepts": [
            {
                "folder": c.folder,
                "trigger": c.trigger,
                "class_word": c.class_word,
                "is_reg": c.is_reg,
                "repeats": c.repeats.repeats,
                "images": c.repeats.images,
                "per_epoch": c.repeats.per_epoch,
                "repeats_rule": c.repeats.rule,
                "derived": c.repeats.derived,
            }
            for c in result.layout.concepts
        ],
        "files": [_file_entry(o) for o in result.outcomes],
        "skipped": [{"source": str(s.source), "reason": s.reason} for s in result.layout.skipped]
        + [{"source": str(o.op.source), "reason": o.written.error} for o in result.failed],
        "notes": [f.to_json() for f in result.notes],
        "lint": result.lint.to_json(),
    }


def _file_entry(outcome: Outcome) -> dict[str, Any]:
    op, written = outcome.op, outcome.written
    entry: dict[str, Any] = {
        "source": str(op.source),
        "dest": op.dest,
        "caption": op.caption,
        "action": op.action,
        "reasons": list(op.reasons),
        "written": written.ok,
    }
    if written.ok:
        entry.update(width=written.size[0], height=written.size[1], sha256=written.sha256)
    return entry


# ---------------------------------------------------------------------------------------------
# Linting an existing folder (``kohyawrap dataset lint``, ``plan``)


@dataclass(frozen=True)
class LintRequest:
    """What to lint and against which training settings."""

    path: Path
    model: str
    reg_dir: Path | None = None
    caption_extension: str = ".txt"
    trigger: str | None = None
    length: TrainingLength = SD_SCRIPTS_LENGTH
    bucket: BucketSettings | None = None  # None: the model preset's
    near_duplicates: bool = True
    jobs: int | None = None
    min_short_side: int | None = None  # None: the model preset's


def lint_dataset(request: LintRequest) -> LintReport:
    """Scan a training folder, fingerprint its images and lint it."""
    tdir = read_training_dir(request.path, request.caption_extension, request.reg_dir)
    phashes = compute_phashes(tdir.image_files(), request.jobs) if request.near_duplicates else {}
    return lint(
        tdir,
        model=request.model,
        bucket=request.bucket or bucket_settings_for(request.model),
        length=request.length,
        caption_extension=request.caption_extension,
        trigger=request.trigger,
        phashes=phashes,
        min_short_side=request.min_short_side,
    )


def compute_phashes(files: dict[str, Path], jobs: int | None = None) -> dict[str, int]:
    """perceptual hash of each image (key -> hash); unreadable images are left out."""
    keys = sorted(files)
    paths = [str(files[k]) for k in keys]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(paths) // 16 or 1))
    if workers == 1:
        hashes = list(map(imaging.file_phash, paths))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            hashes = list(pool.map(imaging.file_phash, paths, chunksize=16))
    return {k: h for k, h in zip(keys, hashes, strict=True) if h is not None}
