"""Reading any event or catalog layout in bounded chunks, through pyarrow's readers.

``shoprec.adapters.open_source(fmt, path, options)`` (the formats are presets over this package)
returns an ``EventSource``: its ``layout`` says what was
found (files, file type, compression, delimiter given or detected, header, columns, the
canonical <- source mapping, the timestamp unit), ``event_chunks(rows)`` yields canonical
event frames (``shoprec.schema.conform_events`` dtypes) in file order, never holding more
than one chunk of a file, and ``items()`` returns the catalog (read whole).

One module per concept, read top to bottom in the order data flows:

- ``options``: ``ReadOptions``, what a user says about their files; ``errors``: ``InputError``
  (names file, line and column) and ``Place``, where a chunk came from.
- ``files``: which files a path names, their kind (text, JSON lines, Parquet; .gz/.zst/.bz2
  decompressed on the fly) and first bytes; ``sniff``: delimiter detection and header hints.
- ``text``, ``json_lines``, ``parquet``: one reader per file type, yielding pyarrow batches
  (text columns as strings, so ids keep their leading zeros).
- ``part``: files sharing one layout, read as pandas chunks of exactly ``rows`` rows.
- ``mapping``, ``timestamps``, ``plan``: how a part's columns become canonical events.
- ``catalog``: item files; ``layout``: what was found, typed, for ``--dry-run``;
  ``sources``: ``EventSource``, what an adapter builds and ingestion iterates.
"""

from shoprec.reading.catalog import read_catalog, read_whole
from shoprec.reading.errors import InputError, Place, type_error
from shoprec.reading.files import expand, file_kind, head_bytes, is_data_file
from shoprec.reading.json_lines import json_records
from shoprec.reading.layout import PartLayout, SourceLayout
from shoprec.reading.options import DEFAULT_CHUNK_ROWS, ReadOptions
from shoprec.reading.part import Part
from shoprec.reading.sniff import detect_delimiter
from shoprec.reading.sources import CatalogReader, EventSource, FrameSource, TableSource, catalog_part
from shoprec.reading.timestamps import guess_timestamp_unit

__all__ = [
    "DEFAULT_CHUNK_ROWS", "CatalogReader", "EventSource", "FrameSource", "InputError", "Part", "PartLayout", "Place",
    "ReadOptions", "SourceLayout", "TableSource", "catalog_part", "detect_delimiter", "expand", "file_kind",
    "guess_timestamp_unit", "head_bytes", "is_data_file", "json_records", "read_catalog", "read_whole",
    "type_error",
]
