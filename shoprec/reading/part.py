"""A part of a source: files that share one layout and one set of options, read in chunks.

Whatever the file type, a part yields pandas frames of exactly ``rows`` rows with the source's
column names, each with its ``Place``; memory stays at about one chunk whatever the file size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import pyarrow as pa

from shoprec.reading.errors import InputError, Place
from shoprec.reading.files import file_kind
from shoprec.reading.json_lines import json_batches, json_schema
from shoprec.reading.layout import PartLayout
from shoprec.reading.options import ReadOptions
from shoprec.reading.parquet import data_columns, parquet_batches, parquet_file
from shoprec.reading.sniff import header_hint
from shoprec.reading.text import TextSpec, strip_types, text_batches, text_spec
from shoprec.schema import EVENT_COLUMNS, ITEM_COLUMNS

Transform = Callable[[pd.DataFrame, Place], pd.DataFrame]


@dataclass
class Part:
    """Files that share one layout and one set of options, read in order."""

    files: tuple[Path, ...]
    options: ReadOptions = field(default_factory=ReadOptions)
    role: str = "events"
    transform: Transform | None = None  # the format's own step on each raw chunk (source column names)
    derived: tuple[str, ...] = ()  # columns the transform adds (available to the mapping)
    wanted: tuple[str, ...] | None = None  # JSON: the fields to read (default: the mapped and canonical ones)
    given: ReadOptions | None = None  # the user's own options under a format's preset (for the layout's "preset")

    def __post_init__(self) -> None:
        self.files = tuple(Path(f) for f in self.files)
        kinds = {f.name: file_kind(f) for f in self.files}
        types = sorted({k.type for k in kinds.values()})
        if len(types) > 1:
            raise InputError(f"the files of one source must share a layout; found {' and '.join(types)} files "
                             f"({', '.join(kinds)})")
        self.kind = kinds[self.files[0].name]  # the first file's; each file has its own compression
        self._text: TextSpec | None = None
        self._json: pa.Schema | None = None
        self.columns = self._source_columns()

    def _source_columns(self) -> tuple[str, ...]:
        first = self.files[0]
        if self.kind.type == "text":
            self._text = text_spec(first, self.kind, self.options)
            return strip_types(self._text.names, self.options.typed_header)
        if self.kind.type == "json":
            self._json = json_schema(first, self.kind, self.wanted or self._json_wanted())
            return tuple(self._json.names)
        return data_columns(parquet_file(first))

    def _json_wanted(self) -> tuple[str, ...]:
        canon = EVENT_COLUMNS if self.role != "catalog" else ITEM_COLUMNS
        return tuple(dict.fromkeys([self.options.mapping.get(c, c) for c in canon]))

    def check_same_layout(self, path: Path) -> None:
        """Later files must have the first one's columns: the layout was resolved on the first."""
        if self.kind.type == "text" and self._text is not None:
            other = text_spec(path, file_kind(path), replace(self.options, delimiter=self._text.delimiter))
            if other.names != self._text.names:
                raise InputError(f"{path.name} has columns {', '.join(other.names)} but {self.files[0].name} has "
                                 f"{', '.join(self._text.names)}: the files of one source must share a layout")
        elif self.kind.type == "parquet":
            names = data_columns(parquet_file(path))
            if set(names) != set(self.columns):
                raise InputError(f"{path.name} has columns {', '.join(names)} but {self.files[0].name} has "
                                 f"{', '.join(self.columns)}: the files of one source must share a layout")

    def raw_chunks(self, rows: int) -> Iterator[tuple[Place, pd.DataFrame]]:
        """Each file's rows in chunks, with source column names (types stripped)."""
        for number, path in enumerate(self.files):
            if number:
                self.check_same_layout(path)
            yield from self._file_chunks(path, rows)

    def _file_chunks(self, path: Path, rows: int) -> Iterator[tuple[Place, pd.DataFrame]]:
        batches, first, unit = self._batches(path, rows)
        for start, frame in rechunk(batches, rows):
            frame.columns = list(self.columns)
            yield Place(path, first + start, unit), frame

    def _batches(self, path: Path, rows: int) -> tuple[Iterator[pa.RecordBatch], int, str]:
        """(the file's batches, the line or row number of its first data row, 'line' or 'row')."""
        block = int(min(max(rows * 64, 1 << 20), 64 << 20))  # ~64 bytes per row; rechunk evens it out
        kind = file_kind(path)
        if kind.type == "text":
            assert self._text is not None
            return text_batches(path, kind, self._text, block), 2 if self._text.header else 1, "line"
        if kind.type == "json":
            assert self._json is not None
            return json_batches(path, kind, self._json, block), 1, "line"
        return parquet_batches(path, rows, list(self.columns)), 1, "row"  # by name: a later file may order them otherwise

    def header_note(self) -> str:
        """'line 1: ...; ' when the header looks split with the wrong delimiter or looks like data."""
        if self._text is None or not self._text.header:
            return ""
        hint = header_hint(self._text.names, self._text.delimiter.join(self._text.names))
        return "" if "check the header" in hint else f"line 1: {hint}; "

    def layout(self, mapping: dict[str, str], timestamp: tuple[str | None, str], user: str) -> PartLayout:
        text = self._text
        delimiter_source = text.delimiter_source if text else "n/a"
        if text and self.given is not None and delimiter_source == "given" and not self.given.delimiter:
            delimiter_source = "preset"
        return PartLayout(
            role=self.role, files=tuple(str(f) for f in self.files), file_type=self.kind.type,
            compression=self._compression(), delimiter=text.delimiter if text else None,
            delimiter_source=delimiter_source, header=text.header if text else True, columns=self.columns,
            mapping=mapping, constants=dict(self.options.constants), timestamp_unit=timestamp[0],
            timestamp_unit_source=timestamp[1], user_from_session=user)

    def _compression(self) -> str | None:
        found = {file_kind(f).compression for f in self.files}
        return None if found == {None} else ", ".join(sorted(c or "none" for c in found))

    def sample(self, rows: int = 2_000) -> pd.DataFrame:
        """The first rows of the first file, after the format's transform (for detection)."""
        for place, frame in self._file_chunks(self.files[0], rows):
            return self.transform(frame, place) if self.transform else frame
        empty = pd.DataFrame({c: pd.Series(dtype="string") for c in self.columns})
        return self.transform(empty, Place(self.files[0], 1)) if self.transform else empty


def rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
    """(index of the first row, frame) for chunks of exactly ``rows`` rows (the last one shorter):
    pyarrow's blocks follow bytes, not rows, and callers size their memory by rows."""
    pending: list[pa.RecordBatch] = []
    held = start = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield start, table.slice(0, rows).to_pandas()
            rest = table.slice(rows)
            pending, held, start = rest.to_batches(), rest.num_rows, start + rows
    if held:
        yield start, pa.Table.from_batches(pending).to_pandas()
