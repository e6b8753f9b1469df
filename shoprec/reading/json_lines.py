"""JSON lines (one object per line) through ``pyarrow.json``, one block at a time.

The field types come from the first block and are then fixed (an explicit schema), so every
block of a file yields the same columns and a type that changes later is reported, not guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.json as pjson

from shoprec.reading.errors import InputError
from shoprec.reading.files import FileKind, file_kind, head_bytes, open_stream, refuse_empty


def json_schema(path: Path, kind: FileKind, wanted: tuple[str, ...] | None) -> pa.Schema:
    """Field types from the first block of a JSON-lines file (null-only fields read as strings)."""
    refuse_empty(path, kind)
    data, _ = head_bytes(path, kind, 1 << 20)
    try:
        table = pjson.read_json(pa.py_buffer(data))
    except pa.ArrowInvalid as exc:
        raise InputError(f"{path.name} is not JSON lines (one object per line): {exc}") from exc
    names = table.schema.names if wanted is None else [n for n in wanted if n in table.schema.names]
    return pa.schema([(n, pa.string() if pa.types.is_null(table.schema.field(n).type) else table.schema.field(n).type)
                      for n in names])


def json_batches(path: Path, kind: FileKind, schema: pa.Schema, block_size: int) -> Iterator[pa.RecordBatch]:
    """The schema's fields of every record (others ignored), one pyarrow block at a time."""
    parse = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        with open_stream(path, kind) as stream:
            yield from pjson.open_json(stream, read_options=pjson.ReadOptions(block_size=block_size), parse_options=parse)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path.name} is not well-formed JSON lines: {exc} (a field's type changed from the "
                         f"first records': {', '.join(f'{f.name}: {f.type}' for f in schema)})") from exc


def json_records(files, columns: tuple[str, ...], rows: int = 50_000) -> pd.DataFrame:
    """Selected fields of JSON-lines files whose fields change type from record to record (catalog
    metadata: a price that is a number here and text there), read with pandas in chunks."""
    frames = []
    for path in files:
        kind = file_kind(path)
        refuse_empty(path, kind)
        try:
            with open_stream(path, kind) as stream:
                for chunk in pd.read_json(stream, lines=True, chunksize=rows, dtype=False, convert_dates=False):
                    frames.append(chunk.reindex(columns=list(columns)))
        except ValueError as exc:
            raise InputError(f"{path.name} is not JSON lines (one object per line): {exc}") from exc
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in columns})
