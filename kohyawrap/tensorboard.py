"""Read and write TensorBoard event files (``events.out.tfevents.*``) without TensorFlow.

An event file is a sequence of TFRecords: ``u64 length``, ``masked crc32c(length)``, ``data``,
``masked crc32c(data)``, all little-endian; each ``data`` is a serialized ``Event`` protobuf. We
decode only what a scalar needs: ``Event{wall_time=1, step=2, file_version=3, summary=5}``,
``Summary{value=1}`` and ``Value{tag=1, simple_value=2, tensor=8}`` (a one-element ``TensorProto``).

This module uses only the standard library on purpose: the fake sd-scripts repository used by the
tests ships a verbatim copy of it to write real event files, and it must run without kohyawrap.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

Scalars = dict[str, list[tuple[int, float]]]

_CRC32C_POLY = 0x82F63B78  # Castagnoli, bit-reversed


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc``; table-driven, pure Python."""
    table = _CRC_TABLE
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC as TFRecord stores it: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Reading


def _corrupt(path: Path, offset: int, what: str) -> NoReturn:
    # Imported here so the module stays standard-library-only (see the module docstring).
    from kohyawrap.errors import KohyawrapError

    raise KohyawrapError(
        f"{path.name} is not a valid TensorBoard event file",
        evidence=[f"at byte {offset}: {what}"],
        hint="the file is damaged; fetch it again from the host",
        where=str(path),
    )


def iter_records(data: bytes, path: Path = Path("<bytes>")) -> Iterator[bytes]:
    """Yield each record's payload, checking both CRCs.

    A truncated last record is ignored: sd-scripts may still be writing the file when it is read.
    """
    pos = 0
    while len(data) - pos >= 12:
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        if masked_crc32c(header) != length_crc:
            _corrupt(path, pos, "record length checksum mismatch")
        end = pos + 12 + length + 4
        if end > len(data):
            return
        payload = data[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", data[end - 4 : end])
        if masked_crc32c(payload) != data_crc:
            _corrupt(path, pos, "record data checksum mismatch")
        yield payload
        pos = end


class _BadProto(ValueError):
    """A protobuf message that cannot be decoded."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _BadProto("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field number, wire type, value)``; value is an int (varint) or raw bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise _BadProto(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise _BadProto("truncated field")
        yield field, wire, value


# TensorProto dtype -> (struct format of one element, field holding repeated values)
_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_INT64 = 1, 2, 3, 9
_CONTENT_FORMATS = {_DT_FLOAT: "<f", _DT_DOUBLE: "<d", _DT_INT32: "<i", _DT_INT64: "<q"}


def _tensor_scalar(buf: bytes) -> float | None:
    """The value of a one-element numeric TensorProto (how newer writers store scalars)."""
    dtype = 0
    values: list[float] = []
    content = b""
    for field, wire, value in _fields(buf):
        if field == 1 and isinstance(value, int):
            dtype = value
        elif field == 4 and isinstance(value, bytes):
            content = value
        elif field == 5 and isinstance(value, bytes):  # float_val, packed or not
            values += [v for (v,) in struct.iter_unpack("<f", value[: len(value) // 4 * 4])]
        elif field == 6 and isinstance(value, bytes):  # double_val
            values += [v for (v,) in struct.iter_unpack("<d", value[: len(value) // 8 * 8])]
        elif field in (7, 10) and wire == 0 and isinstance(value, int):  # int_val, int64_val
            values.append(float(value))
    fmt = _CONTENT_FORMATS.get(dtype)
    if content and fmt and len(content) == struct.calcsize(fmt):
        return float(struct.unpack(fmt, content)[0])
    return values[0] if len(values) == 1 else None


def _summary_values(buf: bytes) -> Iterator[tuple[str, float]]:
    for field, _wire, value in _fields(buf):
        if field != 1 or not isinstance(value, bytes):
            continue
        tag, number = "", None
        for vfield, _vwire, vvalue in _fields(value):
            if vfield == 1 and isinstance(vvalue, bytes):
                tag = vvalue.decode("utf-8", errors="replace")
            elif vfield == 2 and isinstance(vvalue, bytes) and len(vvalue) == 4:
                number = struct.unpack("<f", vvalue)[0]
            elif vfield == 8 and isinstance(vvalue, bytes):
                number = _tensor_scalar(vvalue)
        if tag and number is not None:
            yield tag, float(number)


@dataclass(frozen=True)
class ScalarEvent:
    """One scalar as stored: when it was written, its step, tag and value."""

    wall_time: float
    step: int
    tag: str
    value: float


def _event_scalars(buf: bytes) -> Iterator[ScalarEvent]:
    wall_time, step, summary = 0.0, 0, b""
    for field, _wire, value in _fields(buf):
        if field == 1 and isinstance(value, bytes) and len(value) == 8:
            wall_time = struct.unpack("<d", value)[0]
        elif field == 2 and isinstance(value, int):
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 5 and isinstance(value, bytes):
            summary = value
    for tag, number in _summary_values(summary):
        yield ScalarEvent(wall_time, step, tag, number)


def scalar_events(data: bytes, path: Path = Path("<bytes>")) -> Iterator[ScalarEvent]:
    """Every scalar in an event file's bytes, in file order (KohyawrapError when damaged)."""
    offset = 0
    for record in iter_records(data, path):
        try:
            yield from _event_scalars(record)
        except _BadProto as err:
            _corrupt(path, offset, f"undecodable event ({err})")
        offset += len(record) + 16


def scalars_from_bytes(data: bytes, path: Path = Path("<bytes>")) -> Scalars:
    """Every scalar in an event file's bytes: ``{tag: [(step, value), ...]}`` in file order."""
    out: Scalars = {}
    for event in scalar_events(data, path):
        out.setdefault(event.tag, []).append((event.step, event.value))
    return out


def read_scalars(path: Path) -> Scalars:
    """Read every scalar of ``events.out.tfevents.*`` at ``path``: ``{tag: [(step, value)]}``.

    Values are floats (``simple_value`` is float32, widened). Raises KohyawrapError on a damaged
    file; a truncated last record (a file still being written) is skipped.
    """
    return scalars_from_bytes(path.read_bytes(), path)


# ---------------------------------------------------------------------------------------------
# Writing (the fake sd-scripts writes real event files with this)


def _key(field: int, wire: int) -> bytes:
    return _encode_varint(field << 3 | wire)


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _encode_varint(len(payload)) + payload


def frame_record(payload: bytes) -> bytes:
    """Wrap one serialized event in TFRecord framing (length, CRCs)."""
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + payload
        + struct.pack("<I", masked_crc32c(payload))
    )


def file_version_record(wall_time: float) -> bytes:
    """The first record of every event file (``file_version = "brain.Event:2"``)."""
    event = _key(1, 1) + struct.pack("<d", wall_time)
    event += _length_delimited(3, b"brain.Event:2")
    return frame_record(event)


def scalar_record(tag: str, value: float, step: int, wall_time: float) -> bytes:
    """One framed event holding one ``simple_value`` scalar, as torch's SummaryWriter writes it."""
    value_msg = _length_delimited(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", value)
    event = _key(1, 1) + struct.pack("<d", wall_time)
    if step:
        event += _key(2, 0) + _encode_varint(step)
    event += _length_delimited(5, _length_delimited(1, value_msg))
    return frame_record(event)


def encode_scalars(
    scalars: Mapping[str, Sequence[tuple[int, float]]], wall_time: float = 0.0
) -> bytes:
    """A whole event file: the version record, then the scalars ordered by step, then by tag."""
    points = sorted(
        (
            (step, order, tag, value)
            for order, (tag, series) in enumerate(scalars.items())
            for step, value in series
        ),
        key=lambda p: (p[0], p[1]),
    )
    records = [file_version_record(wall_time)]
    records += [scalar_record(tag, value, step, wall_time + step) for step, _, tag, value in points]
    return b"".join(records)


def event_file_name(wall_time: float, hostname: str, pid: int) -> str:
    """A new event file's name as writers make it: ``events.out.tfevents.<time>.<host>.<pid>.0``."""
    return f"events.out.tfevents.{int(wall_time)}.{hostname}.{pid}.0"


def write_scalars(
    path: Path, scalars: Mapping[str, Sequence[tuple[int, float]]], wall_time: float = 0.0
) -> None:
    """Write ``scalars`` as a new event file at ``path`` (atomically: temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(encode_scalars(scalars, wall_time))
    os.replace(tmp, path)
