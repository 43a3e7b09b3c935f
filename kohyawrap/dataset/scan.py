"""Read folders of images: the user's source photos, or a training folder as sd-scripts sees it.

``read_training_dir`` follows sd-scripts' ``train_data_dir`` rules exactly (docs/sources.md [8],
checked case by case in tests/test_dataset_scan.py): each direct subfolder ``<int>_<class tokens>`` is a subset,
``0_``/negative prefixes are skipped silently, names without a number are ignored with a warning,
files in the root and nested folders are never read, and only ``.png .jpg .jpeg .webp .bmp`` in
all-lower or all-upper case are images (sd-scripts' glob is case-sensitive on Linux and skips
names starting with a dot). Image sizes come from headers; pixels are not decoded.
"""

from __future__ import annotations

import codecs
import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from kohyawrap.dataset.buckets import SubsetSizes
from kohyawrap.dataset.imaging import Header, ImageProblem, read_header
from kohyawrap.errors import DatasetError
from kohyawrap.fileio import MAX_CAPTION_BYTES, FileRefused, read_limited

# sd-scripts' IMAGE_EXTENSIONS (library/train_util.py): exact-case matches only.
SD_IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".PNG",
    ".JPG",
    ".JPEG",
    ".WEBP",
    ".BMP",
)
# What the builder accepts as input, in any case.
SOURCE_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Image files we recognise but cannot build from (reported, not silently dropped).
UNSUPPORTED_IMAGE_EXTENSIONS = (
    ".gif",
    ".tif",
    ".tiff",
    ".heic",
    ".heif",
    ".avif",
    ".jxl",
    ".raw",
    ".cr2",
    ".nef",
    ".dng",
    ".psd",
)
CAPTION_EXTENSIONS = (".txt", ".caption")
REG_FOLDER = "reg"  # OUT/reg/<repeats>_<class>/: the reg_data_dir the builder writes


# ---------------------------------------------------------------------------------------------
# A training folder (train_data_dir), as sd-scripts reads it


@dataclass(frozen=True)
class ImageInfo:
    """One image sd-scripts will train on.

    ``width``/``height`` are upright (EXIF orientation applied); ``stored_size`` is what
    sd-scripts itself reads (it ignores EXIF). ``caption`` is the first line, stripped, of the
    caption file, or None when there is none.
    """

    name: str
    width: int
    height: int
    caption: str | None
    orientation: int = 1
    mode: str = ""
    digest: str = ""  # sha256 of the file bytes
    caption_file: str | None = None
    caption_lines: int = 0  # non-empty lines in the caption file (sd-scripts reads only the first)
    image_error: str | None = None  # sd-scripts would fail on this image
    caption_error: str | None = None  # sd-scripts would fail on this caption file

    @property
    def stored_size(self) -> tuple[int, int]:
        """(width, height) as stored in the file: the size sd-scripts buckets by."""
        if self.orientation in (5, 6, 7, 8):
            return (self.height, self.width)
        return (self.width, self.height)


@dataclass(frozen=True)
class Subset:
    """One ``<repeats>_<class tokens>`` folder."""

    folder: str
    repeats: int
    class_tokens: str
    images: tuple[ImageInfo, ...]
    is_reg: bool = False
    other_files: tuple[str, ...] = ()  # names sd-scripts will not read (sub-folders end in "/")


@dataclass(frozen=True)
class TrainingDir:
    """A train_data_dir (and its reg_data_dir) the way sd-scripts will see it."""

    root: Path
    subsets: tuple[Subset, ...]
    ignored_folders: tuple[str, ...]  # no number prefix: sd-scripts warns and skips them
    stray_files: tuple[str, ...]  # files directly in the root: never read
    skipped_folders: tuple[str, ...] = ()  # prefix 0 or negative: skipped without a word
    reg_root: Path | None = None

    def subset_sizes(self) -> list[SubsetSizes]:
        """Image sizes per subset for the bucket simulation (unreadable images left out)."""
        return [
            SubsetSizes(
                tuple(i.stored_size for i in s.images if i.image_error is None),
                s.repeats,
                s.is_reg,
            )
            for s in self.subsets
        ]

    def subset_dir(self, subset: Subset) -> Path:
        """The folder a subset was read from."""
        base = self.reg_root if subset.is_reg and self.reg_root is not None else self.root
        return base / subset.folder

    def image_files(self) -> dict[str, Path]:
        """Every image by its key (see :func:`image_key`) -> its path."""
        return {
            image_key(s, i): self.subset_dir(s) / i.name for s in self.subsets for i in s.images
        }


def image_key(subset: Subset, image: ImageInfo) -> str:
    """A stable name for an image: ``<folder>/<name>``, with ``reg/`` in front for reg images.

    For a dataset built by kohyawrap this is the path relative to the output folder.
    """
    prefix = f"{REG_FOLDER}/" if subset.is_reg else ""
    return f"{prefix}{subset.folder}/{image.name}"


def parse_concept_folder(name: str) -> tuple[int, str] | None:
    """sd-scripts' reading of a folder name: (repeats, class tokens), or None without a number.

    ``int()`` of the part before the first ``_`` (so ``03``, ``+7`` and `` 5`` count); the rest,
    verbatim, is the class token. A repeat count below 1 is returned as is (sd-scripts skips it).
    """
    head, _, rest = name.partition("_")
    try:
        repeats = int(head)
    except ValueError:
        return None
    return repeats, rest


def read_training_dir(
    path: Path, caption_extension: str = ".txt", reg_dir: Path | None = None
) -> TrainingDir:
    """Read a train_data_dir like sd-scripts does (plus ``reg_dir`` or ``<path>/reg`` as reg).

    Raises DatasetError when the folder is missing or holds no concept folder.
    """
    if not path.is_dir():
        raise DatasetError(
            f"dataset folder {path} does not exist"
            if not path.exists()
            else f"{path} is not a folder",
            hint="build one: kohyawrap dataset build ./photos --trigger ... -o ./training_data",
        )
    auto_reg = reg_dir is None and (path / REG_FOLDER).is_dir()
    reg_root = path / REG_FOLDER if auto_reg else reg_dir
    # <path>/reg is the reg_data_dir itself (found, or given as --reg): not a concept folder.
    inside = reg_root is not None and _same_folder(reg_root, path / REG_FOLDER)
    skip = {REG_FOLDER} if inside else set()
    subsets, ignored, skipped, stray = _read_root(path, caption_extension, False, skip)
    if not subsets:
        raise _no_concepts(path, ignored, skipped, stray)
    if reg_root is not None:
        if not reg_root.is_dir():
            raise DatasetError(f"regularisation folder {reg_root} does not exist")
        reg_subsets, reg_ignored, reg_skipped, _ = _read_root(
            reg_root, caption_extension, True, set()
        )
        subsets += reg_subsets
        ignored += [f"{REG_FOLDER}/{n}" for n in reg_ignored]
        skipped += [f"{REG_FOLDER}/{n}" for n in reg_skipped]
    return TrainingDir(path, tuple(subsets), tuple(ignored), tuple(stray), tuple(skipped), reg_root)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _read_root(
    root: Path, caption_extension: str, is_reg: bool, skip: set[str]
) -> tuple[list[Subset], list[str], list[str], list[str]]:
    subsets: list[Subset] = []
    ignored: list[str] = []
    skipped: list[str] = []
    stray: list[str] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.is_dir():
            stray.append(entry.name)
            continue
        if entry.name in skip:
            continue
        parsed = parse_concept_folder(entry.name)
        if parsed is None:
            ignored.append(entry.name)
        elif parsed[0] < 1:
            skipped.append(entry.name)
        else:
            subsets.append(read_subset(entry, parsed[0], parsed[1], caption_extension, is_reg))
    return subsets, ignored, skipped, stray


def _no_concepts(
    path: Path, ignored: list[str], skipped: list[str], stray: list[str]
) -> DatasetError:
    evidence = [f"folder ignored (no number prefix): {n}" for n in ignored[:5]]
    evidence += [f"folder skipped (repeats below 1): {n}" for n in skipped[:5]]
    if stray:
        evidence.append(
            f"{len(stray)} file(s) directly in the folder (sd-scripts never reads these)"
        )
    return DatasetError(
        f"{path} holds no concept folder (<repeats>_<name>, e.g. '10_sks dog')",
        evidence=evidence,
        hint="sd-scripts needs the PARENT of the concept folders; or build one with "
        "`kohyawrap dataset build ./photos --trigger ... -o ./training_data`",
    )


def read_subset(
    folder: Path, repeats: int, class_tokens: str, caption_extension: str, is_reg: bool = False
) -> Subset:
    """Read one concept folder: its images (headers only), captions and other files."""
    names = sorted(p.name for p in folder.iterdir())
    image_names = [
        n
        for n in names
        if n.endswith(SD_IMAGE_EXTENSIONS) and not n.startswith(".") and (folder / n).is_file()
    ]
    images = [_read_image(folder, n, caption_extension) for n in image_names]
    used = set(image_names) | {i.caption_file for i in images if i.caption_file}
    others = [n + "/" if (folder / n).is_dir() else n for n in names if n not in used]
    return Subset(folder.name, repeats, class_tokens, tuple(images), is_reg, tuple(others))


def _read_image(folder: Path, name: str, caption_extension: str) -> ImageInfo:
    path = folder / name
    digest = _sha256(path)
    header: Header | None = None
    error: str | None = None
    try:
        header = read_header(path)
    except ImageProblem as err:
        error = str(err)
    caption_file = _find_caption(folder, name, caption_extension)
    caption, lines, caption_error = (None, 0, None)
    if caption_file is not None:
        caption, lines, caption_error = _read_caption(folder / caption_file)
    width, height = header.upright_size if header else (0, 0)
    return ImageInfo(
        name=name,
        width=width,
        height=height,
        caption=caption,
        orientation=header.orientation if header else 1,
        mode=header.mode if header else "",
        digest=digest,
        caption_file=caption_file,
        caption_lines=lines,
        image_error=error,
        caption_error=caption_error,
    )


def _sha256(path: Path) -> str:
    """sha256 of a file read in pieces: an image of any size costs a megabyte of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _find_caption(folder: Path, name: str, caption_extension: str) -> str | None:
    stem = name.rsplit(".", 1)[0]
    candidates = [stem + caption_extension]
    tokens = stem.split("_")
    if len(tokens) >= 5:
        # sd-scripts also tries the name without a face-crop suffix ``_<x>_<y>_<w>_<h>``.
        candidates.append("_".join(tokens[:-4]) + caption_extension)
    for candidate in candidates:
        if (folder / candidate).is_file():
            return candidate
    return None


def _read_caption(path: Path) -> tuple[str, int, str | None]:
    """(first line stripped, non-empty lines, fatal problem) as sd-scripts reads the file."""
    try:
        data = read_limited(path, MAX_CAPTION_BYTES)
    except FileRefused as err:
        return "", 0, f"caption file {path.name} refused: {err}"
    if not data:
        return "", 0, "caption file is empty (0 bytes): sd-scripts stops with an assertion error"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        bom = _bom(data)
        found = f"{bom[1]} (byte-order mark)" if bom and bom[1] != "UTF-8" else "not UTF-8"
        why = (
            f"caption file {path.name} is {found}: sd-scripts reads captions as UTF-8 and stops "
            "with a UnicodeDecodeError (save it as UTF-8; `kohyawrap dataset build` converts it)"
        )
        return "", 0, why
    if _control_characters(text):
        return "", 0, f"caption file {path.name} {_CONTROL_PROBLEM}"
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    return first, sum(1 for line in lines if line.strip()), None


# ---------------------------------------------------------------------------------------------
# Source photos for the builder


@dataclass(frozen=True)
class SourceImage:
    """A photo in an input folder, with its sidecar caption (if any)."""

    path: Path
    header: Header | None
    problem: str | None = None
    caption_path: Path | None = None
    caption_text: str | None = None
    caption_note: str | None = None  # e.g. decoded as UTF-16 (byte-order mark)
    caption_problem: str | None = None  # the caption file cannot be used: why (the build stops)


@dataclass(frozen=True)
class SourceFolder:
    """One input folder: its photos (sorted by name) and the files that are not photos."""

    path: Path
    images: tuple[SourceImage, ...]
    others: tuple[
        tuple[str, str], ...
    ] = ()  # (name, what it is): "folder", "unsupported image", "other"


def scan_sources(folder: Path, caption_extension: str = ".txt") -> SourceFolder:
    """Read an input folder's photos (headers only) and their sidecar captions. Non-recursive."""
    if not folder.is_dir():
        raise DatasetError(
            f"input folder {folder} does not exist"
            if not folder.exists()
            else f"{folder} is not a folder",
            hint="give folders of images: kohyawrap dataset build ./photos --trigger ...",
        )
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    images = [_source_image(p, caption_extension) for p in entries if _is_source_image(p)]
    stems = {p.path.stem for p in images}
    used = {p.path.name for p in images}
    used |= {p.name for p in entries if p.suffix in CAPTION_EXTENSIONS and p.stem in stems}
    others = tuple((p.name, _kind(p)) for p in entries if p.name not in used)
    return SourceFolder(folder, tuple(images), others)


def _is_source_image(path: Path) -> bool:
    return path.suffix.lower() in SOURCE_IMAGE_EXTENSIONS and path.is_file()


def _kind(path: Path) -> str:
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
        return "unsupported image"
    if path.suffix.lower() in CAPTION_EXTENSIONS:
        return "caption without image"
    return "other"


def _source_image(path: Path, caption_extension: str) -> SourceImage:
    header: Header | None = None
    problem: str | None = None
    try:
        header = read_header(path)
    except ImageProblem as err:
        problem = str(err)
    except OSError as err:
        problem = f"cannot read ({err.strerror or err})"
    preferred = [caption_extension, *[e for e in CAPTION_EXTENSIONS if e != caption_extension]]
    for ext in preferred:
        candidate = path.with_name(path.stem + ext)
        if candidate.is_file():
            try:
                text, note = decode_caption(read_limited(candidate, MAX_CAPTION_BYTES))
            except (FileRefused, CaptionUndecodable) as err:
                return SourceImage(path, header, problem, candidate, caption_problem=str(err))
            return SourceImage(path, header, problem, candidate, text, note)
    return SourceImage(path, header, problem)


class CaptionUndecodable(ValueError):
    """A caption file's bytes are not text we can read without guessing."""


# Byte-order marks, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32", "utf-32"),
    (codecs.BOM_UTF32_BE, "UTF-32", "utf-32"),
    (codecs.BOM_UTF8, "UTF-8", "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "UTF-16", "utf-16"),
    (codecs.BOM_UTF16_BE, "UTF-16", "utf-16"),
)
_CONTROL_PROBLEM = (
    "holds NUL or other control characters: not a text caption (UTF-16 saved without a "
    "byte-order mark?)"
)


def _bom(data: bytes) -> tuple[bytes, str, str] | None:
    return next((b for b in _BOMS if data.startswith(b[0])), None)


def _control_characters(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" and c not in "\t\n\r\f\v" for c in text)


def decode_caption(data: bytes) -> tuple[str, str | None]:
    """A caption file's text and a note when it was not plain UTF-8 (decoded by its byte-order
    mark), or CaptionUndecodable. Nothing is guessed: editors on Windows save UTF-16 with a
    mark; bytes without one that are not UTF-8 (GBK, cp1252, ...) are refused, not misread."""
    bom = _bom(data)
    try:
        text = data.decode(bom[2] if bom else "utf-8")
    except UnicodeDecodeError as err:
        what = f"not valid {bom[1]} despite its byte-order mark" if bom else "not UTF-8"
        raise CaptionUndecodable(f"{what} (byte {err.start}); save it as UTF-8") from None
    if _control_characters(text):
        raise CaptionUndecodable(_CONTROL_PROBLEM)
    note = f"decoded as {bom[1]} (byte-order mark)" if bom and bom[1] != "UTF-8" else None
    return text, note
