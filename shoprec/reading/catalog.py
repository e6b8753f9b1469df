"""Catalogs: item files read whole (a catalog of 100k items is small) and conformed.

In text files ``available`` is a word (true/false, 1/0, yes/no, t/f, y/n) and ``attributes``
is ``a|b|c``; JSON and Parquet may hold real booleans and lists.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from shoprec.reading.errors import InputError, Place, type_error
from shoprec.reading.layout import PartLayout
from shoprec.reading.mapping import resolve_mapping
from shoprec.reading.options import DEFAULT_CHUNK_ROWS, ReadOptions
from shoprec.reading.part import Part
from shoprec.schema import ITEM_COLUMNS, SchemaError, conform_items

BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False,
                 "t": True, "f": False, "y": True, "n": False}


def plan_items(part: Part) -> tuple[dict[str, str], PartLayout]:
    """canonical -> source for the catalog's columns, and its layout; an item id is required."""
    mapping = resolve_mapping(part, ITEM_COLUMNS, "--catalog-map")
    if "item_id" not in mapping:
        raise InputError(f"wrong columns: {part.files[0].name}: {part.header_note()}items are missing required "
                         f"column(s): item_id (the file has columns: {', '.join(part.columns)})")
    return mapping, part.layout(mapping, (None, "n/a"), "off")


def canonical_items(raw: pd.DataFrame, mapping: dict[str, str], constants: Mapping[str, str], place: Place) -> pd.DataFrame:
    """One raw chunk (source names) as canonical item columns; bad flags or prices name their line."""
    items = pd.DataFrame({canon: raw[src] for canon, src in mapping.items()}, index=raw.index)
    for column, value in constants.items():
        items[column] = items[column].fillna(value) if column in items else value
    if "attributes" in items:
        items["attributes"] = items["attributes"].map(_as_list)
    if "available" in items and not pd.api.types.is_bool_dtype(items["available"]):
        items["available"] = _flags(items["available"], mapping["available"], place)
    if "price" in items:
        numbers = pd.to_numeric(items["price"], errors="coerce")
        bad = (items["price"].notna() & numbers.isna()).reset_index(drop=True)
        if bad.any():
            raise type_error(place, mapping["price"], "price", items["price"], bad, "numbers")
        items["price"] = numbers
    return items


def _flags(values: pd.Series, source: str, place: Place) -> pd.Series:
    """Availability words as nullable booleans; a word that is not one of BOOLEAN_WORDS is refused."""
    words = values.astype("string").str.strip().str.lower()
    flags = words.map(BOOLEAN_WORDS, na_action="ignore")
    bad = (words.notna() & flags.isna()).reset_index(drop=True)
    if bad.any():
        raise type_error(place, source, "available", values, bad, "true/false")
    return flags.astype("boolean")


def _as_list(value) -> list[str]:
    """Attributes as a list: 'a|b' from text, a list or array from JSON/Parquet (a cell may be either)."""
    if isinstance(value, str):
        return [v for v in value.split("|") if v] if value else []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if v is not None]
    return []


def read_catalog(part: Part) -> pd.DataFrame:
    """A whole catalog part, conformed (a catalog of 100k items is small)."""
    mapping, _ = plan_items(part)
    frames = [canonical_items(raw, mapping, part.options.constants, place)
              for place, raw in part.raw_chunks(DEFAULT_CHUNK_ROWS)]
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in mapping})
    try:
        return conform_items(raw)
    except SchemaError as exc:
        raise InputError(f"wrong columns: {part.files[0].name}: {exc}") from exc


def read_whole(files, options: ReadOptions = ReadOptions(), columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Raw rows (source names, text as strings) of small files, e.g. a format's own catalog files;
    ``columns`` that a file lacks come back empty."""
    part = Part(tuple(files), options, role="catalog", wanted=columns or None)
    frames = [raw for _, raw in part.raw_chunks(DEFAULT_CHUNK_ROWS)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in part.columns})
    return frame.reindex(columns=list(columns)) if columns else frame
