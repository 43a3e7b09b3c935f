"""The WD14 tagger adapter: fetch the ONNX model from the Hugging Face Hub and run it here, on
the CPU, with onnxruntime (``pip install 'kohyawrap[caption]'``).

What the SmilingWolf taggers expect, as their model cards and kohya-ss/sd-scripts'
``finetune/tag_images_by_wd14_tagger.py`` describe it: one NHWC float32 tensor
``(batch, size, size, 3)`` in **BGR** order with values 0..255 (no normalisation); the picture
padded to a square with **white**, centred, then resized to ``size`` (448 for every v2/v3
tagger; we read it from the model's input shape). The output is one probability per row of
``selected_tags.csv``. Since v2.1/v3 the batch dimension is free; older exports fixed it, and a
fixed batch is honoured by padding the last batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from kohyawrap.dataset import imaging
from kohyawrap.dataset.caption import (
    Progress,
    RawCaption,
    TagOptions,
    TagVocabulary,
    parse_selected_tags,
    select_tags,
)
from kohyawrap.errors import DatasetError, HostError, UsageError

if TYPE_CHECKING:
    import numpy as np

# The v3 SwinV2 tagger: the newest tag vocabulary of SmilingWolf's ONNX taggers (Danbooru up to
# 2024-02, 10,861 tags), a free batch dimension, and the repo kohya's own tagger docs use in
# their example. 467 MB, downloaded once into the Hugging Face cache.
DEFAULT_REPO = "SmilingWolf/wd-swinv2-tagger-v3"
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
DEFAULT_BATCH = 8
_INSTALL_HINT = "install the captioning extra: pip install 'kohyawrap[caption]'"
_PAD = (255, 255, 255)


@dataclass(frozen=True)
class TaggerFiles:
    """A tagger's two files, wherever they are cached."""

    repo: str
    model: Path
    tags: Path


def require_onnxruntime() -> Any:
    """The onnxruntime module, or a UsageError saying how to install it."""
    try:
        import numpy  # noqa: F401 - onnxruntime needs it; say so here rather than mid-run
        import onnxruntime
    except ImportError as err:
        raise UsageError(
            f"the WD14 tagger needs onnxruntime, which is not installed ({err.name} is missing)",
            hint=_INSTALL_HINT,
        ) from None
    return onnxruntime


def fetch_tagger(
    repo: str = DEFAULT_REPO,
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
) -> TaggerFiles:
    """Download (or find in the Hugging Face cache) ``model.onnx`` and ``selected_tags.csv``.

    ``endpoint`` and ``cache_dir`` default to huggingface_hub's own (``HF_ENDPOINT``,
    ``HF_HOME``); a second call finds both files in the cache without downloading.
    """
    paths = [
        _download(repo, name, revision, token, cache_dir, endpoint)
        for name in (TAGS_FILE, MODEL_FILE)
    ]
    return TaggerFiles(repo, model=paths[1], tags=paths[0])


def _download(
    repo: str,
    filename: str,
    revision: str | None,
    token: str | None,
    cache_dir: Path | None,
    endpoint: str | None,
) -> Path:
    from huggingface_hub import hf_hub_download

    # huggingface_hub.utils holds these in every version we support (>= 0.23); newer releases
    # re-export them from huggingface_hub.errors and no longer declare them here for mypy.
    from huggingface_hub.utils import (  # type: ignore[attr-defined]
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hint = "--tagger-repo names a Hugging Face repo holding model.onnx and selected_tags.csv"
    try:
        path = hf_hub_download(
            repo,
            filename,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            endpoint=endpoint,
        )
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as err:
        raise UsageError(f"cannot use the tagger repo {repo}: {_first(err)}", hint=hint) from None
    except LocalEntryNotFoundError as err:
        if _http_status(err) in (401, 403, 404):  # the hub answered: there is no such file
            raise UsageError(f"{repo}/{filename} is not on the hub", hint=hint) from None
        raise HostError(
            f"cannot reach the Hugging Face Hub for {repo}/{filename}, and it is not cached",
            evidence=[_first(err)],
            hint="check the network (or HF_ENDPOINT); once downloaded it works offline",
        ) from None
    except EntryNotFoundError:
        raise UsageError(f"the repo {repo} has no {filename}", hint=hint) from None
    except (HfHubHTTPError, OSError) as err:
        raise HostError(
            f"downloading {repo}/{filename} failed: {_first(err)}",
            hint="check the network; a download that stopped resumes on the next run",
        ) from None
    except ValueError as err:  # an invalid repo id
        raise UsageError(f"--tagger-repo {repo!r}: {_first(err)}", hint=hint) from None
    return Path(path)


def _http_status(err: BaseException) -> int | None:
    """The HTTP status behind a huggingface_hub error, if the hub answered at all."""
    seen: BaseException | None = err
    while seen is not None:
        status = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        seen = seen.__cause__ or seen.__context__
    return None


def _first(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Running the model


def prepare(path: Path, size: int) -> np.ndarray:
    """One image as the tagger's input row: (size, size, 3) float32 BGR, 0..255, white padding."""
    import numpy as np

    image = imaging.upright_rgb(path, size)
    width, height = image.size
    side = max(width, height)
    if (width, height) != (side, side):
        square = Image.new("RGB", (side, side), _PAD)
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(image, dtype=np.float32)[:, :, ::-1])


class WdTagger:
    """A loaded WD14 tagger; :meth:`caption` yields tags per image (implements ``Captioner``)."""

    def __init__(
        self,
        files: TaggerFiles,
        options: TagOptions,
        *,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        ort = require_onnxruntime()
        self.label = f"wd14 {files.repo}"
        self.options = options
        self.vocab = _read_vocab(files.tags)
        try:
            self.session = ort.InferenceSession(
                str(files.model), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types for a bad file
            raise DatasetError(
                f"onnxruntime cannot load {files.model.name}: {_first(err)}",
                where=str(files.model),
                hint="delete it from the Hugging Face cache to download it again",
            ) from None
        self.input_name, self.size, fixed = _input_facts(self.session, files.model)
        self.batch_size = fixed or max(1, batch_size)
        self.fixed_batch = fixed is not None

    def caption(
        self, images: Sequence[Path], progress: Progress | None = None
    ) -> Iterator[RawCaption]:
        """Tags for each image, in order; an unreadable image gets a RawCaption with an error.

        Decoding the next batch overlaps the model run of this one (onnxruntime releases the GIL).
        """
        batches = [
            list(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)
        ]
        done = 0
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._load, batches[0]) if batches else None
            for index in range(len(batches)):
                assert pending is not None
                loaded = pending.result()
                if index + 1 < len(batches):
                    pending = pool.submit(self._load, batches[index + 1])
                yield from self._run(loaded)
                done += len(loaded)
                if progress is not None:
                    progress(done, len(images))

    def _load(self, paths: list[Path]) -> list[np.ndarray | str]:
        rows: list[np.ndarray | str] = []
        for path in paths:
            try:
                rows.append(prepare(path, self.size))
            except imaging.ImageProblem as err:
                rows.append(str(err))
            except (OSError, ValueError, SyntaxError) as err:  # Pillow's decode errors
                rows.append(f"damaged image data ({err})")
        return rows

    def _run(self, rows: list[np.ndarray | str]) -> Iterator[RawCaption]:
        import numpy as np

        good = [r for r in rows if not isinstance(r, str)]
        scores: list[Any] = []
        if good:
            batch = np.stack(good)
            if self.fixed_batch and len(good) < self.batch_size:
                filler = np.zeros((self.batch_size - len(good), *batch.shape[1:]), np.float32)
                batch = np.concatenate([batch, filler])
            out = self.session.run(None, {self.input_name: batch})[0]
            scores = list(np.asarray(out, dtype=np.float64)[: len(good)])
        taken = iter(scores)
        for row in rows:
            if isinstance(row, str):
                yield RawCaption(error=row)
            else:
                yield RawCaption(tags=select_tags(next(taken), self.vocab, self.options))


def open_tagger(
    repo: str = DEFAULT_REPO, options: TagOptions | None = None, batch_size: int = DEFAULT_BATCH
) -> WdTagger:
    """The WD14 tagger from ``repo``, ready to run: onnxruntime checked before the download."""
    require_onnxruntime()
    return WdTagger(fetch_tagger(repo), options or TagOptions(), batch_size=batch_size)


def _read_vocab(path: Path) -> TagVocabulary:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read the tag list: {err}", where=str(path)) from None
    return parse_selected_tags(text, str(path))


def _input_facts(session: Any, model: Path) -> tuple[str, int, int | None]:
    """(input name, square size, fixed batch or None), checked against the WD14 layout."""
    inputs = session.get_inputs()
    shape = list(inputs[0].shape) if inputs else []
    ok = len(shape) == 4 and shape[3] == 3 and isinstance(shape[1], int) and shape[1] == shape[2]
    if not ok:
        raise DatasetError(
            f"not a WD14 tagger: its input is {shape}, expected (batch, size, size, 3) NHWC",
            where=str(model),
        )
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return str(inputs[0].name), int(shape[1]), batch
