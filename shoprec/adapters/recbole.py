"""RecBole atomic files: ``<name>.inter`` (interactions) and ``<name>.item`` (items).

Tab-separated with a typed header (``user_id:token  item_id:token  rating:float
timestamp:float``); the types are stripped, so the columns are ``user_id``, ``item_id``, ...
Interactions map by name: ``user_id``, ``item_id``, ``timestamp`` (epoch seconds, float or
not), ``session_id``; a file without users but with sessions takes the session as the user.
Every other field (``rating``, ``review``, ...) is dropped, and each row is a ``purchase``.
Items: ``item_id``; ``title`` (or ``movie_title``), ``brand``, ``price``, and the first token
of ``categories``/``genre``/``category`` as category (all its tokens as attributes).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shoprec.adapters._files import data_files
from shoprec.reading import (
    CatalogReader,
    EventSource,
    InputError,
    Part,
    ReadOptions,
    TableSource,
    catalog_part,
    expand,
    read_whole,
)

PRESET = ReadOptions(delimiter="\t", typed_header=True, quoting=False, ignore=("*",),
                     constants={"event_type": "purchase"})
TITLE = ("title", "movie_title", "name", "item_name")
CATEGORY = ("categories", "category", "genre", "genres")


def _files(path) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    where = Path(path)
    files = tuple(data_files(where)) if where.is_dir() else expand(path)
    inter = tuple(f for f in files if ".inter" in f.suffixes)
    items = tuple(f for f in files if ".item" in f.suffixes)
    if not where.is_dir() and inter and not items:
        items = tuple(p for p in data_files(inter[0].parent) if ".item" in p.suffixes
                      and p.name.split(".")[0] == inter[0].name.split(".")[0])
    if not inter and not items:
        raise InputError(f"{path}: no RecBole .inter or .item file")
    return inter, items


def _first(raw: pd.DataFrame, names: tuple[str, ...]) -> pd.Series | None:
    return next((raw[n] for n in names if n in raw), None)


def read_items(files: tuple[Path, ...]) -> pd.DataFrame:
    raw = read_whole(files, ReadOptions(delimiter="\t", typed_header=True, quoting=False))
    if "item_id" not in raw:
        raise InputError(f"{files[0].name}: a RecBole .item file needs an item_id field; has {', '.join(raw.columns)}")
    title, cats = _first(raw, TITLE), _first(raw, CATEGORY)
    tokens = cats.map(lambda v: v.split() if isinstance(v, str) else []) if cats is not None else pd.Series([[]] * len(raw))
    items = pd.DataFrame({"item_id": raw["item_id"], "attributes": tokens,
                          "category": tokens.map(lambda t: t[0] if t else None)})
    if title is not None:
        items["title"] = title
    for column in ("brand", "price"):
        if column in raw:
            items[column] = raw[column]
    return items


def open(path, options: ReadOptions, catalog=None, catalog_options=None) -> EventSource:
    inter, items = _files(path)
    parts = [Part(inter, options.over(PRESET), role="interactions", given=options)] if inter else []
    cat: Part | CatalogReader | None = catalog_part(catalog, catalog_options)
    layout = None
    if cat is None and items:
        probe = Part(items, ReadOptions(delimiter="\t", typed_header=True, quoting=False), role="catalog", given=ReadOptions())
        title, category = next((t for t in TITLE if t in probe.columns), None), next((c for c in CATEGORY if c in probe.columns), None)
        mapping = {"item_id": "item_id", **({"title": title} if title else {}),
                   **({"category": f"{category} (first token)", "attributes": category} if category else {})}
        layout = probe.layout(mapping, (None, "n/a"), "off")
        cat = lambda: read_items(items)  # noqa: E731
    return TableSource("recbole", parts, cat, catalog_layout=layout, note="typed header stripped; a row is a purchase")
