"""``kohyawrap dataset caption``: scan a folder of photos, decide which need a caption, have a
captioner make them, and write each caption file next to its photo.

This is the one writer of caption files. Photos are only ever read. A caption is written to a
temporary file in the same folder and then linked into place, so a caption file is either
absent or complete, and an existing one is never replaced unless the plan says so (an empty
file, or ``--overwrite``). Captions are written as they arrive: an interrupted run keeps what
it finished, and running it again captions only the rest.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kohyawrap.dataset.caption import (
    Captioner,
    CaptionOutcome,
    CaptionPlan,
    CaptionResult,
    CaptionReview,
    CaptionTask,
    Progress,
    RawCaption,
    compose_caption,
    plan_captions,
    review_captions,
)
from kohyawrap.dataset.layout import check_caption_extension
from kohyawrap.dataset.scan import SourceFolder, scan_sources
from kohyawrap.errors import DatasetError


@dataclass(frozen=True)
class CaptionRequest:
    """Which folder to caption and how (the captioner itself is passed separately)."""

    folder: Path
    trigger: str | None = None
    caption_extension: str = ".txt"
    overwrite: bool = False
    dry_run: bool = False


def plan_folder(request: CaptionRequest) -> CaptionPlan:
    """Scan ``request.folder`` and plan each photo's caption (nothing is written)."""
    return plan_captions(
        _scan(request.folder, request.caption_extension),
        request.caption_extension,
        request.overwrite,
    )


def _scan(folder: Path, caption_extension: str) -> SourceFolder:
    check_caption_extension(caption_extension)
    source = scan_sources(folder, caption_extension)
    if not source.images:
        raise DatasetError(
            f"{folder} holds no photos (.jpg .jpeg .png .webp .bmp)",
            hint="give the folder of source photos: kohyawrap dataset caption ./photos",
        )
    return source


def caption_folder(
    request: CaptionRequest,
    make_captioner: Callable[[], Captioner],
    progress: Progress | None = None,
    *,
    label: str = "",
) -> CaptionResult:
    """Caption the photos of ``request.folder`` that need it; with ``dry_run`` only plan.

    ``make_captioner`` is called only when a photo needs a caption and it is not a dry run, so
    nothing is downloaded or connected before the folder has been checked, or when every photo
    already has its caption. ``label`` names the captioner in a result that did not make one.
    """
    source = _scan(request.folder, request.caption_extension)
    plan = plan_captions(source, request.caption_extension, request.overwrite)
    outcomes = {t.image: CaptionOutcome(t, caption=t.existing) for t in plan.tasks}
    todo = plan.todo
    captioner = None
    if todo and not request.dry_run:
        captioner = make_captioner()
        made = captioner.caption([t.image for t in todo], progress)
        for task, raw in zip(todo, made, strict=True):
            outcomes[task.image] = _apply(task, raw, request.trigger)
    return CaptionResult(
        folder=request.folder,
        captioner=captioner.label if captioner is not None else label,
        trigger=request.trigger,
        dry_run=request.dry_run,
        outcomes=tuple(outcomes[t.image] for t in plan.tasks),
        others=source.others,
    )


def _apply(task: CaptionTask, raw: RawCaption, trigger: str | None) -> CaptionOutcome:
    if raw.error is not None:
        return CaptionOutcome(task, error=raw.error)
    caption = compose_caption(raw, trigger)
    if not caption:
        return CaptionOutcome(task, error="the captioner found nothing to say (no caption written)")
    try:
        write_caption(task.caption_path, caption, replace=task.action == "replace")
    except FileExistsError:
        return CaptionOutcome(
            task, error=f"{task.caption_path.name} appeared meanwhile: left as it is"
        )
    except OSError as err:
        return CaptionOutcome(task, error=f"cannot write {task.caption_path.name}: {err.strerror}")
    return CaptionOutcome(task, caption=caption, written=True)


def write_caption(path: Path, caption: str, *, replace: bool) -> None:
    """Write ``caption`` + newline (UTF-8) to ``path`` atomically.

    Without ``replace`` an existing file is never touched (FileExistsError): the temporary file
    is hard-linked to ``path``, which fails if the name is taken. Where the file system has no
    hard links (FAT, some network shares) an existence check guards an atomic rename instead.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with temp.open("xb") as fh:
        fh.write(caption.encode("utf-8") + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    try:
        if replace:
            os.replace(temp, path)
            return
        try:
            os.link(temp, path)
        except FileExistsError:
            raise
        except OSError:
            if path.exists():
                raise FileExistsError(path) from None
            os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def review_folder(
    folder: Path, trigger: str | None, caption_extension: str = ".txt"
) -> CaptionReview:
    """The tag-frequency table and trigger coverage of a folder's captions (reads only)."""
    return review_captions(_scan(folder, caption_extension), trigger)
