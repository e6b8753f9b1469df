"""Feature rows as the bytes the online stores keep: serialized entity keys and ``ValueProto`` values.

Both ShopRec online stores (``sqlite_store``, ``redis_store``) write ``EncodedRows``. Feast's
``online_write_batch`` tuples become them through ``from_feast`` (one ``SerializeToString`` per
value: the push path); materialization makes them from the table's Arrow columns at once
(``encode_rows``), the protobuf wire format written with numpy, without a ``ValueProto`` per
value: building, serializing and freeing those was 23 of 45 µs of CPU per user (cProfile,
1 M-event shop). Tests keep every byte equal to ``SerializeToString`` of Feast's conversion.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType

STRING = int(ValueType.STRING.value)
TEXT_KINDS = ("int64_val", "int32_val", "double_val", "float_val", "bool_val")  # SQLite's value_text: str(value)
_KEY_PREFIXES: dict[str, bytes] = {}
_LIST_FIELDS = {ValueType.STRING_LIST: "string_list_val", ValueType.UNIX_TIMESTAMP_LIST: "unix_timestamp_list_val"}
_SCALAR_FIELDS = {ValueType.INT64: "int64_val", ValueType.DOUBLE: "double_val", ValueType.BOOL: "bool_val"}


@dataclass(frozen=True)
class EncodedRows:
    """Rows of one view as a store writes them, in row order."""

    keys: list[bytes]  # serialize_entity_key of each row's entity key
    values: dict[str, list[bytes]]  # feature -> each row's serialized ValueProto (b"": no value)
    texts: dict[str, list[str | None]]  # feature -> SQLite's value_text (scalars; None for lists)
    nanos: list[int]  # each row's event time, ns since the epoch (UTC) in whole µs, as a datetime holds it
    created: list[datetime | None]  # each row's created time (materialization: None)

    def __len__(self) -> int:
        return len(self.keys)


def entity_key_bytes(entity_key, version: int) -> bytes:
    """``serialize_entity_key`` (a test checks they are equal), without its per-call Python for
    the one case ShopRec has, a single string join key: 27 % of the write's CPU time."""
    if version != 3 or len(entity_key.join_keys) != 1 or entity_key.entity_values[0].WhichOneof("val") != "string_val":
        return serialize_entity_key(entity_key, entity_key_serialization_version=version)
    return string_key_bytes(entity_key.join_keys[0], [entity_key.entity_values[0].string_val])[0]


def string_key_bytes(join_key: str, ids: list[str]) -> list[bytes]:
    """``serialize_entity_key`` (version 3) of single string join keys ``join_key=id``."""
    prefix = _KEY_PREFIXES.get(join_key)
    if prefix is None:
        encoded = join_key.encode("utf8")
        prefix = _KEY_PREFIXES[join_key] = struct.pack("<III", 1, STRING, len(encoded)) + encoded
    head = prefix + struct.pack("<I", STRING)
    out = []
    for value in ids:
        raw = value.encode("utf8")
        out.append(head + struct.pack("<I", len(raw)) + raw)
    return out


def from_feast(data: list[tuple], version: int) -> EncodedRows:
    """Feast's ``online_write_batch`` tuples (entity key, values, event time, created time) as ``EncodedRows``."""
    names = list(data[0][1]) if data else []
    values: dict[str, list[bytes]] = {n: [] for n in names}
    texts: dict[str, list[str | None]] = {n: [] for n in names}
    for _, row, _, _ in data:
        for name in names:
            value = row[name]
            values[name].append(value.SerializeToString())
            texts[name].append(_value_text(value))
    return EncodedRows([entity_key_bytes(k, version) for k, _, _, _ in data], values, texts,
                       _nanos([t for _, _, t, _ in data]), [c for _, _, _, c in data])


def _nanos(times: list[datetime]) -> list[int]:
    """ns since the epoch of datetimes (naive: UTC, as Feast's ``to_naive_utc`` and ``make_tzaware`` take them)."""
    return (pd.to_datetime(times, utc=True).as_unit("ns").asi8 // 1_000 * 1_000).tolist() if times else []


def encode_rows(features: list[tuple[str, ValueType]], join_key: str, rows: pa.Table, stamps: np.ndarray) -> EncodedRows:
    """A view's table rows (``features``: its (name, value type)s), stamped ``stamps`` (ns), as the
    bytes ``from_feast`` makes of what Feast's ``_convert_arrow_to_proto`` gives for the same rows."""
    ids = rows.column(join_key).to_pylist()
    values, texts = {}, {}
    for name, value_type in features:
        values[name], texts[name] = encode_column(rows.column(name), value_type)
    nanos = (np.asarray(stamps, np.int64) // 1_000 * 1_000).tolist()  # Feast takes datetimes: whole µs
    return EncodedRows(string_key_bytes(join_key, ids), values, texts, nanos, [None] * len(ids))


def encode_column(column: pa.ChunkedArray | pa.Array, value_type: ValueType) -> tuple[list[bytes], list[str | None]]:
    """(serialized values, value_text) of a column: nulls (and NaN) an empty value, lists whole."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if value_type in _LIST_FIELDS and (n == 0 or array.flatten().null_count == 0):
        encode = _string_lists if value_type == ValueType.STRING_LIST else _timestamp_lists
        return encode(array, _tag(_LIST_FIELDS[value_type], 2)), [None] * n
    if value_type in _SCALAR_FIELDS:
        return _scalars(array, value_type)
    protos = _feasts_values(array, value_type)
    return [v.SerializeToString() for v in protos], [_value_text(v) for v in protos]


def _value_text(value: ValueProto) -> str | None:
    """Feast's SQLite ``value_text`` of a value: the string, a number's ``str``, else none."""
    kind = value.WhichOneof("val")
    return value.string_val if kind == "string_val" else str(getattr(value, kind)) if kind in TEXT_KINDS else None


def _feasts_values(array: pa.Array, value_type: ValueType) -> list[ValueProto]:
    if value_type == ValueType.STRING:
        return [ValueProto() if v is None else ValueProto(string_val=v) for v in array.to_pylist()]
    return python_values_to_proto_values(array.to_numpy(zero_copy_only=False), value_type)


# --- the wire format --------------------------------------------------------------------------
def _tag(field_name: str, wire_type: int) -> bytes:
    number = ValueProto.DESCRIPTOR.fields_by_name[field_name].number
    return _varint_bytes((number << 3) | wire_type)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes of each value's varint (uint64: negative int64 in two's complement, 10 bytes)."""
    v = values.astype(np.uint64, copy=True)
    sizes = np.ones(len(v), np.int64)
    v >>= np.uint64(7)
    while v.any():
        sizes += v > 0
        v >>= np.uint64(7)
    return sizes


def _put_varints(out: np.ndarray, at: np.ndarray, values: np.ndarray) -> None:
    v, at = values.astype(np.uint64, copy=True), at.astype(np.int64, copy=True)
    while len(v):
        more = v >= 0x80
        out[at] = ((v & np.uint64(0x7F)) | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8)
        v, at = v[more] >> np.uint64(7), at[more] + 1


def _put_constant(out: np.ndarray, at: np.ndarray, constant: bytes) -> None:
    for k, byte in enumerate(constant):
        out[at + k] = byte


def _split(out: np.ndarray, starts: np.ndarray) -> list[bytes]:
    """The buffer cut at ``starts`` (n + 1 offsets) into n bytes objects."""
    kind = pa.binary() if starts[-1] < 2**31 else pa.large_binary()
    offsets = starts.astype(np.int32 if kind == pa.binary() else np.int64)
    array = pa.Array.from_buffers(kind, len(starts) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(out)])
    return array.to_pylist()


def _lists(array: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(elements per row (nulls: 0), which rows are null, each element's row)."""
    counts = array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    return counts, nulls, np.repeat(np.arange(len(array)), counts)


def _framed(payload: np.ndarray, nulls: np.ndarray, tag: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Each row's size and where its payload starts, for a Value ``tag | varint(len) | payload``
    (a null row: nothing at all)."""
    sizes = np.where(nulls, 0, len(tag) + _varint_sizes(payload) + payload)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return starts, starts[:-1] + len(tag) + _varint_sizes(payload)


def _string_lists(array: pa.Array, tag: bytes) -> list[bytes]:
    """Value{field: StringList{repeated string val = 1}} of each row."""
    counts, nulls, row_of = _lists(array)
    flat = array.flatten()
    wide = pa.types.is_large_string(flat.type) or pa.types.is_large_binary(flat.type)
    if len(flat):
        offsets = np.frombuffer(flat.buffers()[1], np.int64 if wide else np.int32)[flat.offset:flat.offset + len(flat) + 1].astype(np.int64)
        data = np.frombuffer(flat.buffers()[2], np.uint8)
    else:
        offsets, data = np.zeros(1, np.int64), np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    element = 1 + _varint_sizes(lengths) + lengths  # 0x0A, varint(len), the string
    before = np.concatenate([[0], np.cumsum(element)])
    first = np.concatenate([[0], np.cumsum(counts)])
    payload = before[first[1:]] - before[first[:-1]]
    starts, body = _framed(payload, nulls, tag)
    out = np.empty(int(starts[-1]), np.uint8)
    live = ~nulls
    _put_constant(out, starts[:-1][live], tag)
    _put_varints(out, starts[:-1][live] + len(tag), payload[live])
    at = body[row_of] + before[:-1] - before[first[:-1]][row_of]
    out[at] = 0x0A
    _put_varints(out, at + 1, lengths)
    text_at = at + 1 + _varint_sizes(lengths)
    if len(data) and lengths.sum():
        shift = np.repeat(text_at - offsets[:-1], lengths)
        out[np.arange(offsets[0], offsets[-1]) + shift] = data[offsets[0]:offsets[-1]]
    return _split(out, starts)


def _timestamp_lists(array: pa.Array, tag: bytes) -> list[bytes]:
    """Value{field: Int64List{repeated int64 val = 1 (packed)}} of each row, whole seconds as Feast stores them."""
    counts, nulls, row_of = _lists(array)
    flat = array.flatten()
    seconds = (flat.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False) // 1_000_000_000
               if len(flat) else np.zeros(0, np.int64))
    element = _varint_sizes(seconds.view(np.uint64))
    before = np.concatenate([[0], np.cumsum(element)])
    first = np.concatenate([[0], np.cumsum(counts)])
    packed = before[first[1:]] - before[first[:-1]]
    inner = np.where(packed > 0, 1 + _varint_sizes(packed) + packed, 0)  # an empty Int64List is no bytes
    starts, body = _framed(inner, nulls, tag)
    out = np.empty(int(starts[-1]), np.uint8)
    live = ~nulls
    _put_constant(out, starts[:-1][live], tag)
    _put_varints(out, starts[:-1][live] + len(tag), inner[live])
    some = live & (packed > 0)
    out[body[some]] = 0x0A
    _put_varints(out, body[some] + 1, packed[some])
    values_at = body + 1 + _varint_sizes(packed)
    _put_varints(out, values_at[row_of] + before[:-1] - before[first[:-1]][row_of], seconds.view(np.uint64))
    return _split(out, starts)


def _scalars(array: pa.Array, value_type: ValueType) -> tuple[list[bytes], list[str | None]]:
    """Value{int64_val | double_val | bool_val} of each row; null and NaN: no value."""
    tag = _tag(_SCALAR_FIELDS[value_type], 1 if value_type == ValueType.DOUBLE else 0)
    present = array.is_valid().to_numpy(zero_copy_only=False)
    if value_type == ValueType.DOUBLE:
        numbers = array.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        present &= ~np.isnan(numbers)
        size = np.full(len(array), len(tag) + 8)
    else:
        numbers = array.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        size = len(tag) + _varint_sizes(numbers.view(np.uint64))
    starts = np.concatenate([[0], np.cumsum(np.where(present, size, 0))])
    out = np.empty(int(starts[-1]), np.uint8)
    at = starts[:-1][present]
    _put_constant(out, at, tag)
    if value_type == ValueType.DOUBLE:
        raw = numbers[present].astype("<f8").view(np.uint8).reshape(-1, 8)
        out[(at + len(tag))[:, None] + np.arange(8)] = raw
    else:
        _put_varints(out, at + len(tag), numbers[present].view(np.uint64))
    texts = [str(v) if p else None for v, p in zip(array.to_pylist(), present.tolist())]
    return _split(out, starts), texts
