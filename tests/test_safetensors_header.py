"""kohyawrap.safetensors_header against the real ``safetensors`` package."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save, save_file

from kohyawrap.errors import KohyawrapError
from kohyawrap.safetensors_header import encode_safetensors, read_header, write_safetensors

DTYPES = {np.float32: "F32", np.float16: "F16", np.int64: "I64", np.uint8: "U8"}
ARRAYS: dict[str, np.ndarray] = {
    "lora_unet_a.lora_down.weight": np.arange(12, dtype=np.float32).reshape(4, 3),
    "lora_unet_a.alpha": np.array(4.0, dtype=np.float32),
    "lora_te_b.lora_up.weight": np.ones((3, 2), dtype=np.float16),
    "steps": np.arange(5, dtype=np.int64),
    "mask": np.array([1, 0, 1], dtype=np.uint8),
}
METADATA = {"ss_output_name": "demo", "ss_epoch": "1", "ss_tag_frequency": '{"10_sks thing": {}}'}


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, list[int], bytes]]:
    return {n: (DTYPES[a.dtype.type], list(a.shape), a.tobytes()) for n, a in arrays.items()}


def test_our_file_loads_with_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "demo.safetensors"
    write_safetensors(path, as_tensors(ARRAYS), METADATA)
    loaded = load_file(str(path))
    assert set(loaded) == set(ARRAYS)
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == METADATA


def test_our_bytes_equal_the_libraries_bytes() -> None:
    # The library orders metadata keys by hash (randomly), so compare with at most one key.
    for metadata in ({"ss_note": "naïve ✓"}, {}):
        assert encode_safetensors(as_tensors(ARRAYS), metadata) == save(
            ARRAYS, metadata=metadata or None
        )


def test_reads_a_file_written_by_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "lib.safetensors"
    save_file(ARRAYS, str(path), metadata=METADATA)
    tensors, metadata = read_header(path)
    assert metadata == METADATA
    assert tensors["lora_unet_a.lora_down.weight"]["dtype"] == "F32"
    assert tensors["lora_unet_a.lora_down.weight"]["shape"] == [4, 3]
    assert tensors["lora_unet_a.alpha"]["shape"] == []
    assert set(tensors) == set(ARRAYS)


def test_no_metadata_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(2, dtype=np.float32)}, str(path))
    assert read_header(path)[1] == {}


def broken(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(data)
    return path


def with_header(header: object, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    ("data", "evidence"),
    [
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", 10**12) + b"{}", "impossible"),
        (struct.pack("<Q", 4) + b"{]  ", "not UTF-8 JSON"),
        (with_header([1, 2]), "not a JSON object"),
        (with_header({"__metadata__": {"a": 1}}), "map of strings"),
        (
            with_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
            "outside",
        ),
        (
            with_header({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
            "8 bytes for F32 [3]",
        ),
    ],
)
def test_damaged_files_are_refused(tmp_path: Path, data: bytes, evidence: str) -> None:
    with pytest.raises(KohyawrapError, match=r"not a valid \.safetensors file") as err:
        read_header(broken(tmp_path, data))
    assert evidence in str(err.value)


def test_a_half_written_checkpoint_is_refused(tmp_path: Path) -> None:
    data = save(ARRAYS, metadata=METADATA)
    with pytest.raises(KohyawrapError):
        read_header(broken(tmp_path, data[: len(data) // 2]))


def test_writer_refuses_inconsistent_tensors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not fit"):
        write_safetensors(tmp_path / "x.safetensors", {"w": ("F32", [3], b"\0" * 8)}, {})
    assert list(tmp_path.iterdir()) == []
