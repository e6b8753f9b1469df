"""The public RetailRocket data set (Kaggle "retailrocket/ecommerce-dataset").

- ``events.csv``: timestamp (epoch ms), visitorid, event, itemid, transactionid. Events
  ``view``/``addtocart``/``transaction`` become view/add_to_cart/purchase; ``transactionid``
  only groups purchases into orders, which the canonical model does not keep.
- ``item_properties_part1.csv``/``_part2.csv``: timestamp, itemid, property, value - a log of
  property snapshots. The catalog takes each item's latest ``categoryid`` (-> category) and
  ``available`` (1/0); the other properties are hashed and are dropped.

``path`` is ``events.csv``, an ``item_properties*.csv`` file (a catalog-only update), or the
folder holding them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shoprec.reading import (
    CatalogReader,
    DEFAULT_CHUNK_ROWS,
    EventSource,
    InputError,
    Part,
    ReadOptions,
    TableSource,
    catalog_part,
    expand,
    is_data_file,
)

MAPPING = {"timestamp": "timestamp", "user_id": "visitorid", "event_type": "event", "item_id": "itemid"}
EVENT_VALUES = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
PRESET = ReadOptions(mapping=MAPPING, timestamp_unit="ms", event_values=EVENT_VALUES, ignore=("transactionid",))
PROPERTIES = ReadOptions(timestamp_unit="ms")
PROPERTY_COLUMNS = ("timestamp", "itemid", "property", "value")
KEPT = {"categoryid": "category", "available": "available"}


def _files(path) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(events files, item property files)."""
    folder = Path(path)
    if folder.is_dir():
        data = [p for p in sorted(folder.iterdir()) if p.is_file() and is_data_file(p)]
        props = tuple(p for p in data if p.name.startswith("item_properties"))
        events = tuple(p for p in data if p.name.startswith("events"))
        if not events and not props:
            raise InputError(f"{folder} holds no events.csv and no item_properties*.csv")
        return events, props
    files = expand(path)
    props = tuple(f for f in files if f.name.startswith("item_properties"))
    return tuple(f for f in files if f not in props), props


def read_properties(part: Part) -> pd.DataFrame:
    """Each item's latest category and availability from the property log, streamed: only the
    two kept properties are held (about a tenth of the 20 M rows of the public files)."""
    missing = [c for c in PROPERTY_COLUMNS if c not in part.columns]
    if missing:
        raise InputError(f"{part.files[0].name}: item properties need columns {', '.join(PROPERTY_COLUMNS)}; "
                         f"missing {', '.join(missing)}")
    kept = [raw.loc[raw["property"].isin(list(KEPT)), list(PROPERTY_COLUMNS)]
            for _, raw in part.raw_chunks(DEFAULT_CHUNK_ROWS)]
    rows = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=list(PROPERTY_COLUMNS))
    rows["timestamp"] = pd.to_numeric(rows["timestamp"], errors="coerce")
    latest = rows.sort_values("timestamp", kind="stable").drop_duplicates(["itemid", "property"], keep="last")
    items = latest.pivot(index="itemid", columns="property", values="value").rename(columns=KEPT)
    items = items.reindex(columns=list(KEPT.values())).rename_axis(None, axis=1).reset_index()
    items = items.rename(columns={"itemid": "item_id"})
    flags = items["available"].map({"1": True, "0": False})
    bad = items["available"].notna() & flags.isna()
    if bad.any():
        raise InputError(f"{part.files[0].name}: property 'available' is not 1/0 for {int(bad.sum())} item(s), "
                         f"e.g. {items['available'][bad].iloc[0]!r}")
    items["available"] = flags.fillna(True).astype(bool)
    return items


def open(path, options: ReadOptions, catalog=None, catalog_options=None) -> EventSource:
    events, props = _files(path)
    parts = [Part(events, options.over(PRESET), given=options)] if events else []
    cat: Part | CatalogReader | None = catalog_part(catalog, catalog_options)
    layout = None
    if cat is None and props:
        prop_part = Part(props, (catalog_options or ReadOptions()).over(PROPERTIES), role="catalog")
        layout = prop_part.layout({"item_id": "itemid", "category": "value of property categoryid",
                                   "available": "value of property available"}, ("ms", "preset"), "off")
        cat = lambda: read_properties(prop_part)  # noqa: E731
    return TableSource("retailrocket", parts, cat, catalog_layout=layout)
