"""Sources: what ingestion iterates. ``shoprec.adapters.open_source`` picks the format's adapter, which builds one
of these from ``Part``s (or, for formats with their own parser, from frames in memory)."""

from __future__ import annotations

from typing import Callable, Iterator

import pandas as pd

from shoprec.reading.catalog import plan_items, read_catalog
from shoprec.reading.errors import InputError
from shoprec.reading.files import expand
from shoprec.reading.layout import PartLayout, SourceLayout
from shoprec.reading.options import DEFAULT_CHUNK_ROWS, ReadOptions
from shoprec.reading.part import Part
from shoprec.reading.plan import canonical_events, plan_events
from shoprec.schema import REQUIRED_EVENT_COLUMNS, SchemaError, conform_events, conform_items

CatalogReader = Callable[[], pd.DataFrame]


class EventSource:
    """A source of canonical events (in chunks) and optionally a catalog."""

    format: str = ""
    layout: SourceLayout
    metadata: dict

    def event_chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
        raise NotImplementedError

    def items(self) -> pd.DataFrame | None:
        return None

    def preview(self, rows: int = 5) -> pd.DataFrame:
        """The first rows as they would land (canonical), for --dry-run."""
        for chunk in self.event_chunks(rows):
            return chunk
        return conform_events(pd.DataFrame({c: [] for c in REQUIRED_EVENT_COLUMNS}))


class TableSource(EventSource):
    """Event parts read in order, plus a catalog (a Part, or a format's own reader)."""

    def __init__(self, fmt: str, parts: list[Part], catalog: Part | CatalogReader | None = None,
                 catalog_layout: PartLayout | None = None, metadata: dict | None = None, note: str = ""):
        self.format, self.parts, self._catalog = fmt, parts, catalog
        self._plans = [plan_events(p, p.sample()) for p in parts]  # every mapping error before any row lands
        if isinstance(catalog, Part):
            catalog_layout = plan_items(catalog)[1]
        self.layout = SourceLayout(fmt, tuple(layout for _, layout in self._plans), catalog_layout, note)
        mappings = [layout.mapping for layout in self.layout.parts]
        self.metadata = {"format": fmt, "synthetic_timestamps": False,
                         "mapping": mappings[0] if len(mappings) == 1 else mappings, **(metadata or {})}

    def event_chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
        for part, (plan, _) in zip(self.parts, self._plans):
            for place, raw in part.raw_chunks(rows):
                if part.transform is not None:
                    raw = part.transform(raw, place)
                yield canonical_events(raw, plan, place)

    def items(self) -> pd.DataFrame | None:
        if self._catalog is None:
            return None
        if isinstance(self._catalog, Part):
            return read_catalog(self._catalog)
        try:
            return conform_items(self._catalog())
        except SchemaError as exc:
            raise InputError(f"wrong columns in the catalog: {exc}") from exc


class FrameSource(EventSource):
    """Events already in memory (formats with their own parser, e.g. S3-Rec), served in chunks."""

    def __init__(self, fmt: str, events: pd.DataFrame, items: pd.DataFrame | None, layout: SourceLayout, metadata: dict):
        self.format, self._events, self._items, self.layout, self.metadata = fmt, conform_events(events), items, layout, metadata

    def event_chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
        for start in range(0, len(self._events), rows):
            yield self._events.iloc[start:start + rows].reset_index(drop=True)

    def items(self) -> pd.DataFrame | None:
        return None if self._items is None else conform_items(self._items)


def catalog_part(catalog, options: ReadOptions | None) -> Part | None:
    """A catalog given next to the events (``--catalog PATH``), read with its own options."""
    return None if catalog is None else Part(expand(catalog), options or ReadOptions(), role="catalog")
