"""Ingestion adapters: each opens one source layout as a ``shoprec.reading.EventSource``.

One module per format, each a preset of ``ReadOptions`` (plus, where the layout has one, its
own catalog reader) over ``shoprec.reading``; every format takes the same user options on top
of its preset. ``read_batch`` reads a whole source into one ``Batch`` for small callers.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pandas as pd

from shoprec.adapters.base import Batch
from shoprec.reading import EventSource, InputError, ReadOptions
from shoprec.schema import SchemaError, empty_events

__all__ = ["Batch", "read_batch", "FORMATS", "adapter", "open_source", "options_from"]

# --format name -> module under shoprec.adapters
ADAPTERS = {
    "events": "events",
    "sessions": "sessions",
    "catalog": "catalog",
    "retailrocket": "retailrocket",
    "diginetica": "diginetica",
    "yoochoose": "yoochoose",
    "amazon": "amazon",
    "movielens": "movielens",
    "recbole": "recbole",
    "s3rec": "s3rec",
}
FORMATS = tuple(ADAPTERS)


def adapter(fmt: str) -> ModuleType:
    """The module whose ``open(path, options, catalog=None, catalog_options=None)`` reads ``fmt``."""
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return importlib.import_module(f"shoprec.adapters.{ADAPTERS[fmt]}")


def open_source(fmt: str, path, options: ReadOptions | None = None, catalog: Path | None = None,
                catalog_options: ReadOptions | None = None) -> EventSource:
    """The source ``path`` in layout ``fmt`` (one of FORMATS), read with ``options`` on top of
    the format's preset: the one entry point of ingestion's reading."""
    return adapter(fmt).open(path, options or ReadOptions(), catalog=catalog, catalog_options=catalog_options)


def options_from(options: ReadOptions | None = None, mapping=None, timestamp_unit=None, ignore=(),
                 event_values=None, defaults=None) -> ReadOptions:
    """ReadOptions from the older keyword options of ``read_batch`` (mapping, timestamp_unit, ...)."""
    base = options or ReadOptions()
    legacy = ReadOptions(mapping=dict(mapping or {}), timestamp_unit=timestamp_unit, ignore=tuple(ignore),
                         event_values=dict(event_values or {}),
                         constants={k: str(v) for k, v in (defaults or {}).items()})
    return legacy.over(base)


def read_batch(fmt: str, path, options: ReadOptions | None = None, catalog=None,
               catalog_options: ReadOptions | None = None, rows: int | None = None, **legacy) -> Batch:
    """Read ``path`` with the adapter named ``fmt`` (one of FORMATS): every chunk, concatenated."""
    source = open_source(fmt, path, options_from(options, **legacy), catalog=catalog, catalog_options=catalog_options)
    chunks = list(source.event_chunks(rows) if rows else source.event_chunks())
    events = pd.concat(chunks, ignore_index=True) if chunks else empty_events()
    try:
        return Batch.from_frames(events, source.items(), source=str(path), metadata=dict(source.metadata))
    except SchemaError as exc:
        raise InputError(f"wrong columns: {exc}") from exc
