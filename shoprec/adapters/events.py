"""Generic event files: delimited text, JSON lines or Parquet, with a column mapping.

``path`` is one events file, a glob of many, or a folder: one holding ``events.*`` (or
``events-*``/``events_*`` parts) and optionally ``items.*`` (the catalog) - the layout
``shoprec generate`` writes - or else any number of event files, read in name order. A folder
with only a catalog is a catalog update (price, availability) and has no events.
Everything else (delimiter, header, mapping, timestamps) is ``shoprec.reading.ReadOptions``.
"""

from __future__ import annotations

from pathlib import Path

from shoprec.reading import (
    EventSource,
    InputError,
    Part,
    ReadOptions,
    TableSource,
    catalog_part,
    expand,
    is_data_file,
)

__all__ = ["InputError", "open", "find_files"]


def _named(folder: Path, stem: str) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir() if p.is_file() and is_data_file(p)
                        and (p.name.split(".")[0] == stem or p.name.startswith((f"{stem}-", f"{stem}_")))))


def find_files(path) -> tuple[tuple[Path, ...], Path | None]:
    """(event files, catalog file) for a file, a glob or a folder."""
    folder = Path(path)
    if not folder.is_dir():
        return expand(path), None
    events, items = _named(folder, "events"), _named(folder, "items")
    if len(items) > 1:
        raise InputError(f"{folder} holds {', '.join(p.name for p in items)}; keep one catalog file")
    if not events and not items:
        others = tuple(sorted(p for p in folder.iterdir() if p.is_file() and is_data_file(p)))
        if not others:
            raise InputError(f"{folder} holds no events.parquet|csv and no items.parquet|csv (nor any other data file)")
        return others, None
    return events, items[0] if items else None


def open(path, options: ReadOptions, catalog=None, catalog_options: ReadOptions | None = None,
         preset: ReadOptions = ReadOptions(), fmt: str = "events") -> EventSource:
    events, items = find_files(path)
    parts = [Part(events, options.over(preset), given=options)] if events else []
    cat = catalog_part(catalog, catalog_options)
    if cat is None and items is not None:
        cat = Part((items,), catalog_options or ReadOptions(), role="catalog")
    return TableSource(fmt, parts, cat)
