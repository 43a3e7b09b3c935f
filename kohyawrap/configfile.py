"""``kohyawrap config check`` on a file: read it (bounded), check its options, and look at the
dataset it names the way sd-scripts will find it.

validate.py checks options alone and stays pure; this module is the part that reads files: the
config, the dataset config it names, and the image folders. sd-scripts resolves relative paths
against the folder it runs in, not the config's (it opens them as given), so a relative path is
looked for in the current folder first; the config's own folder second (kohyawrap's launch.sh
runs sd-scripts from there), and saying so.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kohyawrap.errors import ConfigError, DatasetError
from kohyawrap.fileio import read_user_text
from kohyawrap.models import Finding
from kohyawrap.validate import CheckReport, check_config_text, check_dataset_config

SD_SCRIPTS_CAPTION_EXTENSION = ".caption"  # sd-scripts' default (train_network_args.json)
CAPTION_EXTENSIONS = (".txt", ".caption")


def check_config_file(
    path: Path,
    *,
    family: str | None = None,
    bf16_supported: bool | None = None,
    cwd: Path | None = None,
) -> CheckReport:
    """Check the ``--config_file`` TOML at ``path``: its options, then the dataset it names."""
    text = read_user_text(path, "config", error=ConfigError)
    report = check_config_text(text, family=family, bf16_supported=bf16_supported, where=str(path))
    places = _Places(cwd if cwd is not None else Path.cwd(), path.parent)
    found = tuple(_dataset_findings(report.settings, places))
    rank = {"error": 0, "warning": 1, "note": 2}
    ordered = sorted(report.findings + found, key=lambda f: rank[f.severity])
    return replace(report, findings=tuple(ordered))


@dataclass(frozen=True)
class _Places:
    cwd: Path
    config_dir: Path

    def locate(self, value: str, key: str) -> tuple[Path | None, Finding | None]:
        """Where sd-scripts started here finds ``value`` (a folder or file), and a note when it
        is only found beside the config, or nowhere."""
        given = Path(value).expanduser()
        here = given if given.is_absolute() else self.cwd / given
        if here.exists():
            return here, None
        if given.is_absolute():
            return None, _not_found(key, value)
        beside = self.config_dir / given
        if beside.exists():
            return beside, Finding(
                "note",
                "dataset-relative",
                key,
                f"{key} = {value!r} is not in the current folder but beside the config: sd-scripts "
                "resolves it against the folder it runs in, so start it from "
                f"{self.config_dir} (kohyawrap's launch.sh does); checked there",
            )
        return None, _not_found(key, value)


def _not_found(key: str, value: str) -> Finding:
    return Finding(
        "note",
        "dataset-not-found",
        key,
        f"{key} = {value!r} is not here (nor beside the config): its images and captions were "
        "not checked",
        "run config check where sd-scripts will run, or where the dataset is",
    )


def _dataset_findings(settings: Mapping[str, Any], places: _Places) -> Iterator[Finding]:
    if isinstance(settings.get("dataset_config"), str):
        yield from _dataset_config_findings(settings["dataset_config"], places)
        return
    ext = settings.get("caption_extension", settings.get("caption_extention"))
    ext = ext if isinstance(ext, str) else SD_SCRIPTS_CAPTION_EXTENSION
    for key in ("train_data_dir", "reg_data_dir"):
        value = settings.get(key)
        if not isinstance(value, str):
            continue
        root, note = places.locate(value, key)
        if note is not None:
            yield note
        if root is not None and root.is_dir():
            yield from _folder_captions(root, ext, key, reg=key == "reg_data_dir")


def _folder_captions(root: Path, ext: str, key: str, *, reg: bool) -> Iterator[Finding]:
    from kohyawrap.dataset.scan import read_training_dir

    try:
        # A reg_data_dir is read like a train_data_dir (sd-scripts does the same).
        tdir = read_training_dir(root, ext, reg_dir=None)
    except DatasetError as err:
        if not reg:
            yield Finding("error", "dataset", key, f"{root}: {err.message}", err.hint)
        return
    folders = [(tdir.subset_dir(s), s.images, s.other_files) for s in tdir.subsets]
    yield from _mismatch(folders, ext, key, str(root))


def _mismatch(
    folders: Sequence[tuple[Path, Sequence[Any], Sequence[str]]], ext: str, key: str, where: str
) -> Iterator[Finding]:
    """An error when images have captions only under another extension than the one read."""
    total = sum(len(images) for _, images, _ in folders)
    other: dict[str, int] = {}
    for _, images, others in folders:
        names = set(others)
        for image in images:
            if image.caption is not None:
                continue
            stem = image.name.rsplit(".", 1)[0]
            for candidate in CAPTION_EXTENSIONS:
                if candidate != ext and stem + candidate in names:
                    other[candidate] = other.get(candidate, 0) + 1
                    break
    if not other:
        return
    found, count = max(other.items(), key=lambda item: item[1])
    yield Finding(
        "error",
        "caption-mismatch",
        "caption_extension",
        f"caption_extension is {ext!r} but {count} of {total} images in {where} ({key}) have "
        f"their captions in {found} files: sd-scripts trains them without captions (each with "
        "its folder's class tokens) and says nothing",
        f'caption_extension = "{found}"',
    )


def _dataset_config_findings(value: str, places: _Places) -> Iterator[Finding]:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    path, note = places.locate(value, "dataset_config")
    if note is not None:
        yield note
    if path is None:
        return
    text = read_user_text(path, "dataset config", error=ConfigError)
    try:
        doc = tomlkit.parse(text).unwrap()
    except TOMLKitError as err:
        raise ConfigError(f"not valid TOML: {err}", where=str(path)) from err
    problems = check_dataset_config(doc)
    yield from (replace(f, message=f"{path.name}: {f.message}") for f in problems)
    if any(f.severity == "error" for f in problems):
        return
    yield from _subset_captions(doc, places)


def _subset_captions(doc: Mapping[str, Any], places: _Places) -> Iterator[Finding]:
    """Each subset's image_dir with the caption_extension it inherits (subset > dataset >
    general > sd-scripts' default), checked like a concept folder."""
    from kohyawrap.dataset.scan import read_subset

    general = doc.get("general", {})
    for dataset in doc.get("datasets", []):
        for subset in dataset.get("subsets", []):
            image_dir = subset.get("image_dir")
            if not isinstance(image_dir, str) or "metadata_file" in subset:
                continue
            ext = next(
                (
                    t["caption_extension"]
                    for t in (subset, dataset, general)
                    if isinstance(t.get("caption_extension"), str)
                ),
                SD_SCRIPTS_CAPTION_EXTENSION,
            )
            folder, note = places.locate(image_dir, "image_dir")
            if note is not None:
                yield note
            if folder is None or not folder.is_dir():
                continue
            read = read_subset(folder, 1, "", ext)
            yield from _mismatch(
                [(folder, read.images, read.other_files)], ext, "image_dir", str(folder)
            )
