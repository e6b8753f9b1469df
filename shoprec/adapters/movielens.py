"""MovieLens-style ratings: ``user item rating timestamp`` (epoch seconds).

- ``ratings.dat`` (ML-1M, ML-10M): ``UserID::MovieID::Rating::Timestamp``, no header;
  ``movies.dat``: ``MovieID::Title::Genres`` (``Genres`` is ``a|b|c``; ML-1M is Latin-1).
- ``ratings.csv`` (ML-20M, ML-25M, latest): ``userId,movieId,rating,timestamp``;
  ``movies.csv``: ``movieId,title,genres``.
- ``u.data`` (ML-100K) or any header-less ``user item rating timestamp`` file (tab, comma, ...).

A rating becomes a ``purchase`` (the strongest canonical signal; ``--set event_type=view``
for another); the rating itself is dropped. Catalog: title, the first genre as category, all
genres as attributes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shoprec.adapters._files import events_and_catalog
from shoprec.reading import (
    CatalogReader,
    EventSource,
    InputError,
    Part,
    ReadOptions,
    TableSource,
    catalog_part,
    file_kind,
    head_bytes,
    read_whole,
)

EVENTS = {"user_id": "user", "item_id": "item", "timestamp": "timestamp"}
# '::' is two characters and pyarrow splits on one: ':' gives empty fields between the values
DAT = ReadOptions(delimiter=":", header=False, columns=("user", "_a", "item", "_b", "rating", "_c", "timestamp"),
                  mapping=EVENTS, timestamp_unit="s", constants={"event_type": "purchase"},
                  ignore=("_a", "_b", "_c", "rating"))
CSV = ReadOptions(mapping={"user_id": "userId", "item_id": "movieId", "timestamp": "timestamp"}, timestamp_unit="s",
                  constants={"event_type": "purchase"}, ignore=("rating",))
PLAIN = ReadOptions(header=False, columns=("user", "item", "rating", "timestamp"), mapping=EVENTS, timestamp_unit="s",
                    constants={"event_type": "purchase"}, ignore=("rating",))


def preset_for(path: Path) -> tuple[ReadOptions, str]:
    first = head_bytes(path, file_kind(path), 4096)[0].split(b"\n", 1)[0].decode("latin-1")
    if "::" in first:
        return DAT, "ratings.dat (::)"
    if first[:1].isdigit():
        return PLAIN, "user item rating timestamp, no header"
    return CSV, "ratings.csv"


def read_movies(files: tuple[Path, ...]) -> pd.DataFrame:
    path = files[0]
    first = head_bytes(path, file_kind(path), 4096)[0].split(b"\n", 1)[0]
    if b"::" in first:
        lines = _lines(files)
        parts = pc.split_pattern(pa.array(lines["line"]), pattern="::", max_splits=2).to_pylist()
        bad = [i for i, p in enumerate(parts) if p is None or len(p) != 3]
        if bad:
            raise InputError(f"{path.name} line {bad[0] + 1}: expected MovieID::Title::Genres, got {lines['line'][bad[0]]!r}")
        raw = pd.DataFrame(parts, columns=["movieId", "title", "genres"])
    else:
        raw = read_whole(files, ReadOptions(delimiter=","))
        missing = {"movieId", "title"} - set(raw.columns)
        if missing:
            raise InputError(f"{path.name}: expected movieId,title,genres; missing {', '.join(sorted(missing))}")
    genres = raw.get("genres", pd.Series([None] * len(raw))).map(
        lambda g: [x for x in g.split("|") if x and x != "(no genres listed)"] if isinstance(g, str) else [])
    return pd.DataFrame({"item_id": raw["movieId"], "title": raw["title"],
                         "category": genres.map(lambda g: g[0] if g else None), "attributes": genres})


def _lines(files: tuple[Path, ...]) -> pd.DataFrame:
    """Whole lines (no quoting, no splitting), UTF-8 or else Latin-1 (ML-1M's movies.dat)."""
    options = ReadOptions(delimiter="\x1f", header=False, columns=("line",), quoting=False)
    try:
        return read_whole(files, options)
    except InputError as exc:
        if "not UTF-8" not in str(exc):
            raise
        return read_whole(files, replace(options, encoding="latin-1"))


def open(path, options: ReadOptions, catalog=None, catalog_options=None) -> EventSource:
    found, movies = events_and_catalog(path, ("ratings", "u.data"), ("movies",), "movielens")
    parts, note = [], ""
    if found:
        preset, note = preset_for(found[0])
        parts.append(Part(found, options.over(preset), role="ratings", given=options))
    cat: Part | CatalogReader | None = catalog_part(catalog, catalog_options)
    layout = None
    if cat is None and movies:
        probe = ReadOptions(delimiter="\x1f", header=False, columns=("line",), quoting=False, encoding="latin-1")
        layout = Part(movies[:1], probe if movies[0].suffix == ".dat" else ReadOptions(), role="catalog", given=ReadOptions()).layout({"item_id": "movieId", "title": "title", "category": "genres (first)",
                                              "attributes": "genres"}, (None, "n/a"), "off")
        cat = lambda: read_movies(movies)  # noqa: E731
    return TableSource("movielens", parts, cat, catalog_layout=layout, note=f"{note}; a rating is a purchase")
