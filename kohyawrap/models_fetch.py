"""Where a run's model files come from and where they go on the host.

A run needs its base model and, for the DiT families, the files its script loads beside it
(FLUX.1: ``clip_l``, ``t5xxl``, ``ae``; Chroma: ``t5xxl``, ``ae``; SD3.5: ``clip_l``, ``clip_g``,
``t5xxl``). Each is named by the user (``--base-model``, ``--clip-l``, ``--clip-g``, ``--t5xxl``,
``--ae``: a Hugging Face ``owner/repo/path/in/repo``, a URL, or a local file) or comes from the
model preset's ``[files.*]`` table. :func:`fetch_plan` turns those choices into typed files to
fetch, each with a host path in the shared model cache (``<work>/models/``) that depends only on
the source: the same repo file (the FLUX.1 ``ae`` of every FLUX family) or the same uploaded bytes
land in one place and are fetched once for every run.

Host layout (the same names as the launcher's base-model cache)::

    <models>/hf-files/<owner>--<repo>--<file>     a Hugging Face file (symlink into <models>/hf)
    <models>/urls/<sha256(url)[:12]>-<name>        a URL
    <models>/uploads/<sha256[:16]>-<name>          a local file, uploaded

Pure: nothing here talks to the network; a local file is read only to hash it (uploads).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from kohyawrap.errors import UsageError
from kohyawrap.fileio import file_sha256
from kohyawrap.names import slug
from kohyawrap.presets import ModelPreset

FileKind = Literal["hf", "url", "upload"]
BASE_KEY = "pretrained_model_name_or_path"
LOCAL_FOLDER = "models"  # `config render`: files nobody named are expected in <run folder>/models/
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HF_PART = re.compile(r"^[A-Za-z0-9_.+=@ -]+$")  # one folder or file name inside a repo
_MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


@dataclass(frozen=True)
class FetchFile:
    """One file a run needs on the host: where it comes from and where it goes."""

    key: str  # the option it fills: pretrained_model_name_or_path, clip_l, clip_g, t5xxl, ae
    kind: FileKind
    source: str  # repo id, URL, or absolute local path
    filename: str  # file inside the repo ("" = a whole Diffusers repo), or the file's own name
    remote_path: str  # absolute host path written into the config
    local_sha256: str = ""  # uploads: content hash (the host name is derived from it)
    size_gb: float | None = None  # known size (preset default or local file); None = unknown
    gated: bool = False  # the preset says the repo asks for a licence click-through (a token)
    in_place: bool = False  # a local file used where it is (``--host local``): nothing copied

    def to_json(self) -> dict[str, Any]:
        """The file as data (``train --dry-run --json``)."""
        return asdict(self)


def option_name(key: str) -> str:
    """``clip_l`` -> ``--clip-l``; the base model -> ``--base-model``."""
    return "--base-model" if key == BASE_KEY else "--" + key.replace("_", "-")


# ---------------------------------------------------------------------------------------------
# The plan of files


def fetch_plan(
    model: ModelPreset,
    choices: Mapping[str, str | None],
    models_dir: str,
    *,
    base_model_file: str | None = None,
    sha256: Callable[[Path], str] | None = None,
    in_place: bool = False,
) -> tuple[FetchFile, ...]:
    """Every file the run needs: the base model first, then the family's companion files.

    ``choices`` maps an option (``pretrained_model_name_or_path``, ``clip_l``, ...) to what the
    user typed; a missing or empty one takes the preset's ``[files.*]`` default. ``models_dir`` is
    the host's model cache (absolute). A choice the family does not load, a required file with no
    default, or a name that is neither a file, a URL nor a repo file is a UsageError, raised here,
    before anything is rented. ``in_place`` (the host is this machine): local files are used
    where they are, neither hashed nor copied into the cache.
    """
    keys = [c.key for c in model.family_info.companions]
    stray = sorted(k for k, v in choices.items() if v and k != BASE_KEY and k not in keys)
    if stray:
        raise UsageError(
            f"{model.name} ({model.family_info.script}) loads no "
            + ", ".join(option_name(k) for k in stray),
            hint=f"its files: {', '.join(option_name(k) for k in [BASE_KEY, *keys])}",
        )
    hasher = _no_hash if in_place else (sha256 or file_sha256)
    files = [_base_file(model, choices.get(BASE_KEY), models_dir, base_model_file, hasher)]
    for companion in model.family_info.companions:
        found = _companion_file(
            model, companion.key, choices.get(companion.key), models_dir, hasher
        )
        if found is None and companion.required:
            raise UsageError(
                f"{model.name} needs {option_name(companion.key)} ({companion.title}) and its "
                "preset names no default file",
                hint=f"{option_name(companion.key)} owner/repo/file.safetensors, a URL or a path",
            )
        if found is not None:
            files.append(found)
    return tuple(_in_place(f) if in_place and f.kind == "upload" else f for f in files)


def _no_hash(path: Path) -> str:
    return ""


def _in_place(found: FetchFile) -> FetchFile:
    return replace(found, remote_path=found.source, local_sha256="", in_place=True)


def _base_file(
    model: ModelPreset,
    text: str | None,
    models_dir: str,
    filename: str | None,
    hasher: Callable[[Path], str],
) -> FetchFile:
    default = model.files.get("base")
    if not text:
        if default is None:
            raise UsageError(f"{model.name} has no default base model", hint="pass --base-model")
        text, filename = default.repo, filename or default.file
    elif default is not None and text == default.repo and filename is None:
        filename = default.file  # the single file people mean when they name the repo
    found = parse_choice(
        BASE_KEY,
        text,
        models_dir,
        filename=filename,
        whole_repo=not model.family_info.needs_file,
        sha256=hasher,
    )
    if found.kind == "hf" and default is not None and found.source == default.repo:
        size = model.vram.model_download_gb if found.filename == default.file else None
        return _with(found, size_gb=size, gated=default.gated)
    return found


def _companion_file(
    model: ModelPreset,
    key: str,
    text: str | None,
    models_dir: str,
    hasher: Callable[[Path], str],
) -> FetchFile | None:
    default = model.files.get(key)
    if not text:
        if default is None:
            return None
        return _with(
            parse_choice(key, f"{default.repo}/{default.file}", models_dir, sha256=hasher),
            size_gb=default.size_gb,
            gated=default.gated,
        )
    found = parse_choice(key, text, models_dir, sha256=hasher)
    if default is None or (found.source, found.filename) != (default.repo, default.file):
        return found
    return _with(found, size_gb=default.size_gb, gated=default.gated)


def _with(found: FetchFile, *, size_gb: float | None, gated: bool) -> FetchFile:
    return replace(found, size_gb=size_gb if found.size_gb is None else found.size_gb, gated=gated)


# ---------------------------------------------------------------------------------------------
# One choice: a local file, a URL, or a Hugging Face repo file


def parse_choice(
    key: str,
    text: str,
    models_dir: str,
    *,
    filename: str | None = None,
    whole_repo: bool = False,
    sha256: Callable[[Path], str] | None = None,
) -> FetchFile:
    """Classify what the user typed for ``key`` and place it in the host's model cache.

    ``owner/repo/path/file`` (or ``hf://owner/repo/path/file``) is a Hugging Face file; a bare
    ``owner/repo`` is one only with ``filename`` (``--base-model-file``) or, for SD base models
    (``whole_repo``), as a whole Diffusers repo. Anything path-like must exist.
    """
    text = text.strip()
    local = Path(text).expanduser()
    if text.startswith(("http://", "https://")):
        return _url_file(key, text, models_dir)
    if local.is_file():
        return _upload_file(key, local, models_dir, sha256 or file_sha256)
    if _looks_like_a_path(text):
        raise UsageError(
            f"{option_name(key)} {text!r}: no such file",
            hint="name an existing file, a URL, or a Hugging Face file as owner/repo/file",
        )
    return _hf_file(key, text.removeprefix("hf://"), models_dir, filename, whole_repo)


def _looks_like_a_path(text: str) -> bool:
    windows = PureWindowsPath(text)
    return (
        text.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in text
        or bool(windows.drive)
        # owner/repo/file is the shortest repo file: a model file with fewer parts is a path
        or (text.count("/") <= 1 and text.lower().endswith(_MODEL_SUFFIXES))
    )


def _url_file(key: str, url: str, models_dir: str) -> FetchFile:
    tail = slug(url.rsplit("/", 1)[-1].split("?")[0], 80) or "model.safetensors"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return FetchFile(key, "url", url, tail, posixpath.join(models_dir, "urls", f"{digest}-{tail}"))


def _upload_file(
    key: str, local: Path, models_dir: str, hasher: Callable[[Path], str]
) -> FetchFile:
    digest = hasher(local)
    name = f"{digest[:16]}-{slug(local.name, 80)}"
    return FetchFile(
        key,
        "upload",
        str(local.resolve()),
        local.name,
        posixpath.join(models_dir, "uploads", name),
        digest,
        size_gb=local.stat().st_size / 1e9,
    )


def _hf_file(
    key: str, text: str, models_dir: str, filename: str | None, whole_repo: bool
) -> FetchFile:
    parts = text.strip("/").split("/")
    repo = "/".join(parts[:2])
    file = "/".join(parts[2:]) if len(parts) > 2 else (filename or "")
    if not _REPO_ID.match(repo) or not _repo_path_ok(file):
        raise UsageError(
            f"{option_name(key)} {text!r} is not a file, a URL or a Hugging Face repo file",
            hint="e.g. comfyanonymous/flux_text_encoders/clip_l.safetensors, "
            "./models/clip_l.safetensors or https://...",
        )
    if not file and not whole_repo:
        raise UsageError(
            f"{option_name(key)} {text!r} names a repo, not a file in it: this script loads "
            "single .safetensors files",
            hint=f"{text}/<file>.safetensors"
            + (" (or --base-model-file <file>)" if key == BASE_KEY else ""),
        )
    name = slug(repo.replace("/", "--"), 120) + (f"--{slug(file, 120)}" if file else "")
    return FetchFile(key, "hf", repo, file, posixpath.join(models_dir, "hf-files", name))


def _repo_path_ok(file: str) -> bool:
    """A path inside a repo: plain names separated by '/', no '..' (nothing escapes the repo)."""
    if not file:
        return True
    parts = file.split("/")
    return all(_HF_PART.match(p) and p not in (".", "..") for p in parts)


# ---------------------------------------------------------------------------------------------
# What the files become: config values, a disk estimate, the host script's inputs


def config_paths(files: Iterable[FetchFile]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(``RunSpec.base_model``, ``RunSpec.companions``): the host paths written into the config."""
    files = tuple(files)
    base = next(f.remote_path for f in files if f.key == BASE_KEY)
    return base, tuple((f.key, f.remote_path) for f in files if f.key != BASE_KEY)


def download_gb(files: Iterable[FetchFile]) -> float:
    """GB to bring to a bare host (unknown sizes count 0: say so where it matters)."""
    return sum(f.size_gb or 0.0 for f in files)


def expected_gb(files: Iterable[FetchFile], model: ModelPreset) -> float:
    """GB ``files`` will take on the host; a file of unknown size (the user's own repo file or
    URL) counts as the preset's default file for the same role (estimate: a fine-tune or
    re-quantisation of the same model is about that size; the base model: ``[vram]
    model_download_gb``)."""
    total = 0.0
    for f in files:
        if f.size_gb is not None:
            total += f.size_gb
        elif f.key == BASE_KEY:
            total += model.vram.model_download_gb
        elif f.key in model.files:
            total += model.files[f.key].size_gb or 0.0
    return total


def needs_token(files: Iterable[FetchFile]) -> bool:
    """Whether a Hugging Face token must travel to the host (a gated default repo)."""
    return any(f.kind == "hf" and f.gated for f in files)


def script_values(
    files: Iterable[FetchFile], *, python: str, hf_home: str, work: str = ""
) -> dict[str, Any]:
    """The values of ``templates/remote/files.sh.j2`` that fetch ``files`` on the host.

    Run the script with the Hugging Face token (if any) as its standard input, one line: it is
    never written to the host. Uploads are sent first by the launcher; the script then only
    checks they arrived. ``work`` (the host's work folder): token files an old kohyawrap may have
    left there are removed.
    """
    return {
        "python": python,
        "hf_home": hf_home,
        "work": work,
        "files": [
            {
                "key": f.key,
                "kind": f.kind,
                "source": f.source,
                "filename": f.filename,
                "dest": f.remote_path,
            }
            for f in files
        ],
    }


# ---------------------------------------------------------------------------------------------
# `config render` / `plan`: paths written as given, defaults expected next to launch.sh


def render_paths(
    model: ModelPreset, given: Mapping[str, str | None]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(base model, companions) for a config rendered on this machine.

    What the user gave is written as given (the CLI re-bases relative paths). A file nobody named
    is written as ``models/<file>`` (relative to the run folder, where launch.sh runs
    sd-scripts), except an SD base model, which sd-scripts can load by repo id.
    """
    keys = [c.key for c in model.family_info.companions]
    stray = sorted(k for k, v in given.items() if v and k != BASE_KEY and k not in keys)
    if stray:
        raise UsageError(
            f"{model.name} ({model.family_info.script}) loads no "
            + ", ".join(option_name(k) for k in stray)
        )
    base = given.get(BASE_KEY) or _default_base(model)
    companions = []
    for key in keys:
        default = model.files.get(key)
        value = given.get(key) or (_local_default(default.file) if default else "")
        if value:
            companions.append((key, value))
    return base, tuple(companions)


def _default_base(model: ModelPreset) -> str:
    default = model.files.get("base")
    if default is None:
        return ""
    return _local_default(default.file) if model.family_info.needs_file else default.repo


def _local_default(file: str) -> str:
    return str(PurePosixPath(LOCAL_FOLDER) / PurePosixPath(file).name)


def render_downloads(model: ModelPreset, given: Mapping[str, str | None]) -> list[dict[str, str]]:
    """The preset files a rendered config expects under ``models/`` and where to get them."""
    out = []
    for key, default in model.files.items():
        option = BASE_KEY if key == "base" else key
        if given.get(option) or (key == "base" and not model.family_info.needs_file):
            continue
        out.append(
            {
                "option": option,
                "path": _local_default(default.file),
                "url": f"https://huggingface.co/{default.repo}/resolve/main/{default.file}",
                "gated": "yes" if default.gated else "no",
            }
        )
    return out
