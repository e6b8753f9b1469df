"""Parquet through ``ParquetFile.iter_batches``: typed columns, read row group by row group."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from shoprec.reading.errors import InputError
from shoprec.reading.files import FileKind, refuse_empty

_CORRUPT = "is not a readable Parquet file (truncated or corrupt?)"


def parquet_file(path: Path) -> pq.ParquetFile:
    refuse_empty(path, FileKind("parquet", None))
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path.name} {_CORRUPT}: {exc}") from exc


def data_columns(file: pq.ParquetFile) -> tuple[str, ...]:
    """The file's columns without a pandas index that ``DataFrame.to_parquet`` stored as one
    (``__index_level_0__`` ...): it is no data of the shop's."""
    metadata = file.schema_arrow.pandas_metadata or {}
    index = {name for name in metadata.get("index_columns", []) if isinstance(name, str)}
    return tuple(name for name in file.schema_arrow.names if name not in index)


def parquet_batches(path: Path, rows: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    try:
        file = parquet_file(path)
        yield from file.iter_batches(batch_size=rows, columns=columns or list(data_columns(file)))
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path.name} {_CORRUPT}: {exc}") from exc
