"""kohyawrap.tensorboard against the event file of the real sample run (tests/data/sdscripts)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from kohyawrap.errors import KohyawrapError
from kohyawrap.tensorboard import (
    crc32c,
    frame_record,
    iter_records,
    read_scalars,
    scalar_events,
    scalar_record,
    scalars_from_bytes,
    write_scalars,
)

DATA = Path(__file__).parent / "data" / "sdscripts"
EVENTS = DATA / "events.out.tfevents.1795819978.vm.29038.0"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sd-scripts"
SHARED_EVENTS = SHARED / "sample_run/tensorboard/logs/20261127225238/network_train" / EVENTS.name


def test_copy_equals_the_shared_original() -> None:
    if not SHARED_EVENTS.is_file():
        pytest.skip(f"{SHARED_EVENTS} is absent (no ../shared checkout): the copy is used alone")
    assert EVENTS.read_bytes() == SHARED_EVENTS.read_bytes()


def test_crc32c_check_values() -> None:
    # The CRC catalogue's check value for CRC-32C (Castagnoli, as used by iSCSI).
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


def test_reads_the_real_sample_run_scalars() -> None:
    expected = json.loads((DATA / "sample_run_tensorboard_scalars.json").read_text())["scalars"]
    scalars = read_scalars(EVENTS)
    assert set(scalars) == {
        "loss/current",
        "loss/average",
        "lr/unet",
        "lr/textencoder",
        "lr/group1",
        "loss/epoch_average",
    }
    for tag, points in expected.items():
        assert scalars[tag] == [tuple(p) for p in points]


def test_writer_reproduces_the_real_records_byte_for_byte() -> None:
    data = EVENTS.read_bytes()
    records = list(iter_records(data))
    events = list(scalar_events(data))
    assert len(records) == len(events) + 1  # the first record is the file version
    for record, event in zip(records[1:], events, strict=True):
        assert scalar_record(event.tag, event.value, event.step, event.wall_time) == frame_record(
            record
        )


def test_write_then_read(tmp_path: Path) -> None:
    scalars = {"loss/current": [(1, 1.5), (2, 0.25)], "loss/epoch_average": [(1, 0.875)]}
    path = tmp_path / "logs" / "run" / "events.out.tfevents.1.host.1.0"
    write_scalars(path, scalars, wall_time=1795819978.0)
    assert read_scalars(path) == scalars
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_damaged_record_is_an_error(tmp_path: Path) -> None:
    data = bytearray(EVENTS.read_bytes())
    data[200] ^= 0xFF
    path = tmp_path / EVENTS.name
    path.write_bytes(bytes(data))
    with pytest.raises(KohyawrapError, match="not a valid TensorBoard event file") as err:
        read_scalars(path)
    assert "checksum mismatch" in str(err.value)


def test_a_file_still_being_written_reads_up_to_its_last_whole_record() -> None:
    data = EVENTS.read_bytes()
    cut = scalars_from_bytes(data[:-10])
    full = scalars_from_bytes(data)
    assert cut["loss/current"] == full["loss/current"]
    assert cut["loss/epoch_average"] == full["loss/epoch_average"][:-1]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (payloads here are shorter than 128 bytes)."""
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_reads_scalars_stored_as_tensors() -> None:
    # Newer writers store a scalar as Value.tensor (field 8): a DT_FLOAT TensorProto.
    packed_float = _field(5, struct.pack("<f", 2.5))
    tensor = bytes([1 << 3, 1]) + packed_float  # dtype = DT_FLOAT, float_val = [2.5]
    content = bytes([1 << 3, 2]) + _field(4, struct.pack("<d", 0.125))  # DT_DOUBLE content
    values = _field(1, _field(1, b"a/b") + _field(8, tensor))
    values += _field(1, _field(1, b"c") + _field(8, content))
    event = b"\x09" + struct.pack("<d", 1.0) + bytes([2 << 3, 7]) + _field(5, values)
    assert scalars_from_bytes(frame_record(event)) == {"a/b": [(7, 2.5)], "c": [(7, 0.125)]}
