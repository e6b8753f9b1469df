"""Finding a public data set's files in a folder (shared by the adapters)."""

from __future__ import annotations

from pathlib import Path

from shoprec.reading import InputError, expand, is_data_file


def data_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and is_data_file(p)]


def pick(folder: Path, *prefixes: str) -> tuple[Path, ...]:
    """The data files whose name starts with one of the prefixes (case-insensitive)."""
    return tuple(p for p in data_files(folder) if p.name.lower().startswith(tuple(x.lower() for x in prefixes)))


def events_and_catalog(path, events: tuple[str, ...], catalog: tuple[str, ...], fmt: str) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(event files, catalog files): in a folder by name prefix; a file (or glob) is events, with the
    catalog files that sit next to it."""
    where = Path(path)
    if where.is_dir():
        found, items = pick(where, *events), pick(where, *catalog)
        if not found and not items:
            raise InputError(f"{where} holds no {fmt} files (looked for {', '.join(events + catalog)}*)")
        return found, items
    files = expand(path)
    items = tuple(f for f in files if f.name.lower().startswith(catalog))
    found = tuple(f for f in files if f not in items)
    if found and not items:
        items = pick(found[0].parent, *catalog)
    return found, items
