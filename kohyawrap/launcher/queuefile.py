"""The queue file (``jobs.toml``, docs/queue.md): what ``kohyawrap queue run`` trains, job by job.

A TOML file with an optional ``[queue]`` table (how the host is set up, once for every job), an
optional ``[defaults]`` table (any job key, shared by every job) and one ``[[job]]`` table per
LoRA. Each job becomes the :class:`~kohyawrap.launcher.request.TrainRequest` that the same
``kohyawrap train`` options would make, so a job is checked and planned exactly like a run.
Relative paths are read from the queue file's folder. Everything here is refused with the file,
the job and the key before anything is contacted.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kohyawrap.errors import UsageError, suggest
from kohyawrap.evaluate.options import GridOptions
from kohyawrap.launcher.request import TrainRequest
from kohyawrap.launcher.runplan import DEFAULT_TORCH, MoneyOptions, SetupOptions
from kohyawrap.sdscripts import DEFAULT_REPO, PINNED_COMMIT

MAX_JOBS = 500
MAX_QUEUE_FILE_BYTES = 1024 * 1024

# [queue]: the host's set-up, shared by every job (one set-up for the whole queue).
QUEUE_KEYS = {
    "work_dir": str,
    "sd_scripts_repo": str,
    "sd_scripts_ref": str,
    "sd_scripts_path": str,
    "python": str,
    "torch_spec": str,
    "installer": str,
    "xformers": bool,
}
# A job's keys (also allowed in [defaults]), each the `kohyawrap train` option of the same name.
JOB_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "dataset": str,
    "model": str,
    "gpu": str,
    "vram": (int, float),
    "base_model": str,
    "base_model_file": str,
    "clip_l": str,
    "clip_g": str,
    "t5xxl": str,
    "ae": str,
    "set": (dict, list),
    "caption_extension": str,
    "trigger": str,
    "class_word": str,
    "smoke": bool,
    "grid": (str, bool),
    "sample_prompts": str,
    "keep_states": int,
    "pull_state": bool,
    "max_dollars": (int, float),
    "max_hours": (int, float),
    "push_to_hub": str,
    "hub_public": bool,
}
TOP_KEYS = ("queue", "defaults", "job")


@dataclass(frozen=True)
class QueueSettings:
    """``[queue]``: where kohyawrap works on the host and how sd-scripts is set up there."""

    work_dir: str = "~/kohyawrap"
    setup: SetupOptions = field(default_factory=SetupOptions)


@dataclass(frozen=True)
class JobEntry:
    """One ``[[job]]``: its name and the request it makes."""

    name: str
    request: TrainRequest
    where: str  # "jobs.toml: job 2 (柴犬)", for messages
    pull_state_given: bool = False  # pull_state was written (a pool pulls states by default)


@dataclass(frozen=True)
class QueueFile:
    """A parsed queue file."""

    path: Path
    settings: QueueSettings
    jobs: tuple[JobEntry, ...]


def read_queue_file(path: Path) -> QueueFile:
    """Read and check ``path``; UsageError naming the file, the job and the key."""
    from kohyawrap.fileio import read_user_text

    text = read_user_text(path, "queue file", limit=MAX_QUEUE_FILE_BYTES)
    return parse_queue(text, path)


def parse_queue(text: str, path: Path) -> QueueFile:
    """The queue in ``text`` (read from ``path``: relative paths start at its folder)."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        data = tomlkit.parse(text).unwrap()
    except TOMLKitError as err:
        raise UsageError(f"not valid TOML: {err}", where=str(path)) from err
    _known(data, TOP_KEYS, str(path), "table")
    settings = _settings(_table(data.get("queue", {}), f"{path}: [queue]"), path)
    defaults = _table(data.get("defaults", {}), f"{path}: [defaults]")
    _check_keys(defaults, f"{path}: [defaults]")
    raw_jobs = data.get("job")
    if raw_jobs is None or (isinstance(raw_jobs, list) and not raw_jobs):
        raise UsageError(
            "the queue has no job", where=str(path), hint="add one [[job]] table per LoRA"
        )
    if not isinstance(raw_jobs, list):
        raise UsageError("'job' must be an array of tables: write [[job]]", where=str(path))
    if len(raw_jobs) > MAX_JOBS:
        raise UsageError(f"{len(raw_jobs)} jobs: a queue holds at most {MAX_JOBS}", where=str(path))
    jobs = tuple(
        _job(_table(raw, f"{path}: job {i}"), defaults, settings, path, i)
        for i, raw in enumerate(raw_jobs, start=1)
    )
    _no_duplicates(jobs, path)
    return QueueFile(path, settings, jobs)


# ---------------------------------------------------------------------------------------------
# Checks


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a table (key = value lines)")
    return value


def _known(data: Mapping[str, Any], keys: tuple[str, ...] | Mapping[str, Any], where: str,
           what: str) -> None:  # fmt: skip
    for key in data:
        if key not in keys:
            close = suggest(key, keys)
            raise UsageError(
                f"unknown {what} {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
                where=where,
                hint="the keys are: " + ", ".join(keys),
            )


def _check_keys(values: Mapping[str, Any], where: str) -> None:
    _known(values, JOB_KEYS, where, "key")
    for key, value in values.items():
        _typed(value, JOB_KEYS[key], f"{where}: {key}")


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # TOML booleans are not numbers here (true is no epoch count).
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise UsageError(f"{where} must be {names}, not {type(value).__name__} {value!r}")


_TYPE_NAMES = {str: "a string", bool: "true or false", int: "a whole number", float: "a number",
               dict: "a table", list: "a list"}  # fmt: skip


def _no_duplicates(jobs: tuple[JobEntry, ...], path: Path) -> None:
    """Two jobs of one name would be two LoRAs nobody can tell apart in `queue status`."""
    seen: dict[str, str] = {}
    for job in jobs:
        key = unicodedata.normalize("NFC", job.name).casefold()
        if key in seen:
            raise UsageError(
                f"two jobs are named {job.name!r}: {seen[key]} and {job.where}",
                where=str(path),
                hint="give each job its own name",
            )
        seen[key] = job.where


# ---------------------------------------------------------------------------------------------
# [queue]


def _settings(table: dict[str, Any], path: Path) -> QueueSettings:
    where = f"{path}: [queue]"
    _known(table, tuple(QUEUE_KEYS), where, "key")
    for key, value in table.items():
        _typed(value, QUEUE_KEYS[key], f"{where}: {key}")
    installer = table.get("installer", "auto")
    if installer not in ("auto", "uv", "pip"):
        raise UsageError(f"{where}: installer must be auto, uv or pip, not {installer!r}")
    setup = SetupOptions(
        repo=table.get("sd_scripts_repo") or DEFAULT_REPO,
        ref=table.get("sd_scripts_ref") or PINNED_COMMIT,
        sd_scripts_path=table.get("sd_scripts_path", ""),
        python=table.get("python") or "python3",
        torch_spec=table.get("torch_spec") or DEFAULT_TORCH,
        xformers=bool(table.get("xformers", False)),
        installer=installer,
    )
    return QueueSettings(work_dir=table.get("work_dir") or "~/kohyawrap", setup=setup)


# ---------------------------------------------------------------------------------------------
# [[job]]


def _job(
    raw: dict[str, Any], defaults: dict[str, Any], settings: QueueSettings, path: Path, n: int
) -> JobEntry:
    label = f"{path}: job {n}"
    _check_keys(raw, label)
    values = {**defaults, **raw}
    values["set"] = _merged_sets(defaults.get("set"), raw.get("set"), label)
    name = values.get("name")
    if not name:
        raise UsageError(f"{label} has no name", hint='name = "my_lora" (the LoRA\'s file name)')
    where = f"{label} ({name})"
    for key in ("dataset", "model"):
        if not values.get(key):
            raise UsageError(
                f"{where} has no {key}",
                hint=f"give it a {key} = ... line (or one in [defaults] for every job)",
            )
    from kohyawrap.launcher.request import check_request

    try:
        # What `train` refuses before connecting (name, dataset folder, run-managed keys,
        # model files, limits) is refused here, with the job named.
        request = check_request(_request(values, settings, path.parent))
    except UsageError as err:
        raise UsageError(err.message, where=where, hint=err.hint, evidence=err.evidence) from err
    return JobEntry(str(name), request, where, pull_state_given="pull_state" in values)


def _merged_sets(default: Any, own: Any, where: str) -> list[str]:
    """``set`` of [defaults] and of the job as ``key=value`` texts, the job's value winning."""
    merged: dict[str, str] = {}
    for value in (default, own):
        for text in _set_texts(value, where):
            merged[text.partition("=")[0].strip()] = text
    return list(merged.values())


def _set_texts(value: Any, where: str) -> list[str]:
    """A table (``{ network_dim = 16 }``) or a list of ``"key=value"`` strings, as --set texts."""
    import tomlkit

    if value is None:
        return []
    if isinstance(value, dict):
        # Each value written as the TOML literal --set would read back the same way.
        return [f"{k}={tomlkit.item(v).as_string()}" for k, v in value.items()]
    texts = []
    for item in value:
        if not isinstance(item, str) or "=" not in item:
            raise UsageError(f'{where}: set items are "key=value" strings, not {item!r}')
        texts.append(item)
    return texts


def _path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _request(values: dict[str, Any], settings: QueueSettings, base: Path) -> TrainRequest:
    """The TrainRequest of one job, as `kohyawrap train` would make it from the same options."""
    from kohyawrap.dataset.layout import concept_name
    from kohyawrap.models import RunSpec
    from kohyawrap.presets import load_catalog
    from kohyawrap.prompts import parse_sets

    model = str(values["model"])
    sets = [_local_prompts(text, base) for text in values["set"]]
    overrides, prompts = parse_sets(sets, load_catalog().model(model).script)
    trigger, class_word = values.get("trigger"), values.get("class_word") or ""
    subject = concept_name(trigger, class_word) if trigger else class_word
    companions = tuple(
        (key, _model_file(str(values[key]), base))
        for key in ("clip_l", "clip_g", "t5xxl", "ae")
        if values.get(key)
    )
    spec = RunSpec(
        gpu=str(values.get("gpu") or "auto"),
        model=model,
        base_model=_model_file(str(values.get("base_model") or ""), base),
        companions=companions,
        output_name=str(values["name"]),
        caption_extension=str(values.get("caption_extension") or ".txt"),
        overrides=overrides,
        smoke=bool(values.get("smoke", False)),
        vram_gb=float(values["vram"]) if values.get("vram") is not None else None,
        prompt_subjects=(subject,) if subject else (),
        sample_prompts_file=prompts.name if prompts else None,
        sample_prompts_text=prompts.text if prompts else None,
    )
    keep = int(values.get("keep_states", 2))
    if not 0 <= keep <= 100:
        raise UsageError(f"keep_states must be 0 to 100, not {keep}")
    return TrainRequest(
        spec=spec,
        dataset=_path(str(values["dataset"]), base),
        base_model_file=values.get("base_model_file"),
        work_dir=settings.work_dir,
        setup=settings.setup,
        money=MoneyOptions(
            max_dollars=_number(values.get("max_dollars")),
            max_hours=_number(values.get("max_hours")),
            push_to_hub=str(values.get("push_to_hub") or "").strip(),
            hub_private=not values.get("hub_public", False),
        ),
        pull_state=bool(values.get("pull_state", False)),
        keep_states=keep,
        retry_oom=0,  # a queue job runs on the host without the laptop: no OOM retries
        grid=_grid(values, base),
    )


def _number(value: Any) -> float | None:
    return float(value) if value is not None else None


def _model_file(value: str, base: Path) -> str:
    """A model file as --base-model takes it: a local file relative to the queue file (when it
    is there), else as written (a Hub repo, a URL, a path on the host)."""
    if not value or "://" in value:
        return value
    local = _path(value, base)
    return str(local) if local.exists() else value


def _local_prompts(text: str, base: Path) -> str:
    """``sample_prompts=FILE`` in ``set`` names a file beside the queue file."""
    key, _, value = text.partition("=")
    if key.strip() != "sample_prompts":
        return text
    clean = value.strip().strip("\"'")
    return f"{key}={_path(clean, base)}"


def _grid(values: dict[str, Any], base: Path) -> GridOptions:
    """``grid = true | false | "epochs=...,strengths=...,seeds=N"`` and ``sample_prompts``; a
    smoke job draws none unless its grid is given."""
    from kohyawrap.evaluate.options import parse_grid

    given = values.get("grid")
    if isinstance(given, str):
        options = parse_grid(given)
    else:
        on = given if isinstance(given, bool) else not values.get("smoke", False)
        options = GridOptions(enabled=on)
    prompts = values.get("sample_prompts")
    if prompts:
        options = replace(options, prompts=_prompt_lines(_path(str(prompts), base)))
    return options


def _prompt_lines(path: Path) -> tuple[str, ...]:
    from kohyawrap.evaluate.prompts import read_prompt_file
    from kohyawrap.fileio import read_user_text

    return read_prompt_file(read_user_text(path, "sample_prompts file"), str(path))
