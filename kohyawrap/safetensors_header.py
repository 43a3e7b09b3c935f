"""Read a ``.safetensors`` header (tensor table and ``__metadata__``) without loading tensors.

Layout: an 8-byte little-endian header length ``N``, ``N`` bytes of UTF-8 JSON, then the tensor
bytes. The JSON maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the byte buffer) and may hold ``"__metadata__"``, a string-to-string map where
sd-scripts keeps its ``ss_*`` training record.

Standard library only, on purpose: the fake sd-scripts used by the tests ships a verbatim copy of
this module to write its LoRA files, and must run without kohyawrap.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

# The safetensors library refuses headers over 100 MB; a LoRA header is a few hundred KB at most.
MAX_HEADER_BYTES = 100_000_000

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def _bad(path: Path, what: str) -> NoReturn:
    # Imported here so the module stays standard-library-only (see the module docstring).
    from kohyawrap.errors import KohyawrapError

    raise KohyawrapError(
        f"{path.name} is not a valid .safetensors file",
        evidence=[what],
        hint="the file is damaged or incomplete (still being written?); fetch it again",
        where=str(path),
    )


def _check_tensor(path: Path, name: str, info: Any, buffer_size: int) -> None:
    if not isinstance(info, dict):
        _bad(path, f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        _bad(path, f"tensor {name!r}: bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= buffer_size
    ):
        _bad(path, f"tensor {name!r}: data_offsets {offsets!r} outside the {buffer_size}-byte data")
    size = DTYPE_SIZES.get(str(dtype))
    # Newer sub-byte dtypes (F4, F6_*) are not in the table; their size is not checked.
    if size is not None and offsets[1] - offsets[0] != math.prod(shape) * size:
        _bad(path, f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for {dtype} {shape}")


def parse_header(
    prefix: bytes, file_size: int, path: Path = Path("<bytes>")
) -> tuple[dict[str, Any], dict[str, str]]:
    """Decode a header from the file's first bytes (``prefix`` must cover the whole header)."""
    if file_size < 8 or len(prefix) < 8:
        _bad(path, f"only {file_size} bytes: too short for the 8-byte header length")
    (size,) = struct.unpack("<Q", prefix[:8])
    if size > MAX_HEADER_BYTES or size > file_size - 8:
        _bad(path, f"header length {size} is impossible for a {file_size}-byte file")
    try:
        header = json.loads(prefix[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        _bad(path, f"header is not UTF-8 JSON: {err}")
    if not isinstance(header, dict):
        _bad(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        _bad(path, "__metadata__ is not a map of strings to strings")
    for name, info in header.items():
        _check_tensor(path, name, info, file_size - 8 - size)
    return header, metadata


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read ``(tensors, metadata)`` from a .safetensors file without loading tensor data.

    ``tensors`` maps each name to ``{"dtype", "shape", "data_offsets"}``; ``metadata`` is the
    ``__metadata__`` map ({} when absent). Raises KohyawrapError on a damaged file.
    """
    with path.open("rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) == 8:
            (size,) = struct.unpack("<Q", head)
            if size <= min(MAX_HEADER_BYTES, file_size - 8):
                head += f.read(size)
    return parse_header(head, file_size, path)


def encode_safetensors(
    tensors: Mapping[str, tuple[str, Sequence[int], bytes]], metadata: Mapping[str, str]
) -> bytes:
    """Serialize ``{name: (dtype, shape, raw little-endian bytes)}`` plus metadata as safetensors.

    Tensors are laid out largest element size first, then by name (as the safetensors library
    does, so every tensor stays aligned), and the header is padded with spaces to 8 bytes.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    order = sorted(tensors, key=lambda n: (-DTYPE_SIZES.get(tensors[n][0], 1), n))
    offset, blobs = 0, []
    for name in order:
        dtype, shape, data = tensors[name]
        if name == "__metadata__" or dtype not in DTYPE_SIZES:
            raise ValueError(f"cannot write tensor {name!r} of dtype {dtype!r}")
        if len(data) != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise ValueError(f"tensor {name!r}: {len(data)} bytes do not fit {dtype} {list(shape)}")
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def write_safetensors(
    path: Path,
    tensors: Mapping[str, tuple[str, Sequence[int], bytes]],
    metadata: Mapping[str, str],
) -> None:
    """Write a .safetensors file at ``path`` atomically (temp file in the same folder, rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(encode_safetensors(tensors, metadata))
    os.replace(tmp, path)
