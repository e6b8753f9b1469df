"""Generic event files: CSV or Parquet, with a column mapping onto the canonical model.

``path`` is one events file, or a folder holding ``events.(parquet|csv)`` and optionally
``items.(parquet|csv)`` (the catalog) - the layout ``shoprec generate`` writes.

``mapping`` names canonical columns after source ones (``{"user_id": "visitor"}``);
``timestamp_unit`` (``s``, ``ms``, ``us``, ``ns``) reads epoch numbers, otherwise
timestamps are parsed as date strings (naive ones are taken as UTC).

Every way a file can be malformed ends in ``InputError`` with a message a person can act
on: the ingestion step quarantines the batch with it instead of printing a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoprec.adapters.base import Batch
from shoprec.schema import SchemaError, empty_events, to_utc

SUFFIXES = (".parquet", ".csv")


class InputError(ValueError):
    """Raw input that cannot become a batch: unreadable, empty, wrong columns or types."""


def find_files(path: Path) -> tuple[Path | None, Path | None]:
    """(events file, catalog file) for a file or an ``events.*``/``items.*`` folder; a folder
    with only a catalog is a catalog update (price, availability) and has no events file."""
    path = Path(path)
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise InputError(f"no such file or folder: {path}")
    events, items = _one_of(path, "events"), _one_of(path, "items")
    if events is None and items is None:
        raise InputError(f"{path} holds no events.parquet|csv and no items.parquet|csv")
    return events, items


def _one_of(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{s}" for s in SUFFIXES if (folder / f"{stem}{s}").is_file()]
    if len(found) > 1:
        raise InputError(f"{folder} holds both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def read_table(path: Path) -> pd.DataFrame:
    """A CSV (every column as text, so ids keep leading zeros) or Parquet file as a frame."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path.name} is empty (0 bytes)")
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path.name} is not a readable Parquet file (truncated or corrupt?): {exc}") from exc
    if path.suffix == ".csv":
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{path.name} is not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset {exc.start}"
            ) from exc
        except pd.errors.EmptyDataError as exc:
            raise InputError(f"{path.name} has no header and no rows") from exc
        except pd.errors.ParserError as exc:
            raise InputError(f"{path.name} is not well-formed CSV: {exc}") from exc
    raise InputError(f"{path.name}: unsupported file type {path.suffix!r}; use .csv or .parquet")


def parse_timestamps(values: pd.Series, unit: str | None) -> pd.Series:
    """Timestamps to UTC; epoch numbers need ``unit``. Unparseable values become NaT."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if unit is not None:
        return pd.to_datetime(pd.to_numeric(values, errors="coerce"), unit=unit, utc=True, errors="coerce")
    return to_utc(values)


def check_types(raw: pd.DataFrame, converted: pd.DataFrame) -> None:
    """Refuse values that a cast would silently turn into missing ones."""
    problems = []
    for column, kind in (("timestamp", "timestamps"), ("price", "numbers"), ("quantity", "whole numbers")):
        if column not in raw:
            continue
        bad = raw[column].notna() & converted[column].isna()
        if bad.any():
            examples = ", ".join(repr(v) for v in raw[column][bad].astype(str).unique()[:3])
            problems.append(f"column {column!r}: {int(bad.sum())} value(s) are not {kind}, e.g. {examples}")
    if problems:
        raise InputError("wrong types: " + "; ".join(problems))


def to_canonical_events(
    frame: pd.DataFrame,
    mapping: Mapping[str, str] | None = None,
    timestamp_unit: str | None = None,
    ignore: Iterable[str] = (),
    event_values: Mapping[str, str] | None = None,
    defaults: Mapping[str, object] | None = None,
) -> pd.DataFrame:
    """Rename, drop deliberately ignored columns, translate event names and parse types."""
    mapping = dict(mapping or {})
    absent = [src for src in mapping.values() if src not in frame.columns]
    if absent:
        raise InputError(f"mapped source column(s) not in the file: {', '.join(absent)}")
    raw = frame.drop(columns=[c for c in ignore if c in frame.columns])
    raw = raw.rename(columns={src: canon for canon, src in mapping.items()})
    for column, value in (defaults or {}).items():
        if column not in raw:
            raw[column] = value
    converted = raw.copy()
    if event_values and "event_type" in raw:
        converted["event_type"] = raw["event_type"].replace(dict(event_values))
    if "timestamp" in raw:
        converted["timestamp"] = parse_timestamps(raw["timestamp"], timestamp_unit)
    for column in ("price", "quantity"):
        if column in raw:
            numbers = pd.to_numeric(raw[column], errors="coerce")
            if column == "quantity":
                numbers = numbers.where(numbers == numbers.round())
            converted[column] = numbers
    check_types(raw, converted)
    return converted


BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def read_items_file(path: Path) -> pd.DataFrame:
    """A catalog file; in CSV, ``available`` is a word and ``attributes`` is written ``a|b|c``."""
    items = read_table(path)
    if "attributes" in items and path.suffix == ".csv":
        items["attributes"] = items["attributes"].map(lambda a: a.split("|") if isinstance(a, str) and a else [])
    if "available" in items and items["available"].dtype == object:
        words = items["available"].str.strip().str.lower()
        bad = words.notna() & ~words.isin(list(BOOLEAN_WORDS))
        if bad.any():
            examples = ", ".join(repr(v) for v in items["available"][bad].unique()[:3])
            raise InputError(f"wrong types: catalog column 'available': {int(bad.sum())} value(s) are not true/false, e.g. {examples}")
        items["available"] = words.map(BOOLEAN_WORDS).astype("boolean")
    if "price" in items and items["price"].dtype == object:
        numbers = pd.to_numeric(items["price"], errors="coerce")
        bad = items["price"].notna() & numbers.isna()
        if bad.any():
            examples = ", ".join(repr(v) for v in items["price"][bad].unique()[:3])
            raise InputError(f"wrong types: catalog column 'price': {int(bad.sum())} value(s) are not numbers, e.g. {examples}")
        items["price"] = numbers
    return items


def read(
    path,
    mapping: Mapping[str, str] | None = None,
    timestamp_unit: str | None = None,
    ignore: Iterable[str] = (),
    event_values: Mapping[str, str] | None = None,
    defaults: Mapping[str, object] | None = None,
    fmt: str = "events",
    **_options,
) -> Batch:
    """Read an events file (or folder) into a canonical Batch; raises InputError on bad input."""
    events_path, items_path = find_files(Path(path))
    events = empty_events() if events_path is None else to_canonical_events(
        read_table(events_path), mapping, timestamp_unit, ignore, event_values, defaults
    )
    items = read_items_file(items_path) if items_path else None
    try:
        return Batch.from_frames(
            events,
            items,
            source=str(Path(path)),
            metadata={"format": fmt, "synthetic_timestamps": False, "mapping": dict(mapping or {})},
        )
    except SchemaError as exc:
        raise InputError(f"wrong columns: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise InputError(f"wrong types: {exc}") from exc
