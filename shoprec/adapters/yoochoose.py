"""YOOCHOOSE (RecSys Challenge 2015), header-less comma-separated ``.dat`` files.

- ``yoochoose-clicks.dat``: ``session,timestamp,item,category`` (ISO timestamps): views;
  ``category`` (a category number, ``S`` for a special offer, or a brand id) is dropped.
- ``yoochoose-buys.dat``: ``session,timestamp,item,price,quantity``: purchases; a price or
  quantity of 0 means "unknown" in this data set and becomes missing.

There are no users: the session is the user. A file is clicks or buys by its name (``buys``)
or else by its number of fields; a folder holds both.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shoprec.adapters._files import events_and_catalog
from shoprec.reading import (
    EventSource,
    Part,
    Place,
    ReadOptions,
    TableSource,
    catalog_part,
    file_kind,
    head_bytes,
)

MAPPING = {"session_id": "session", "user_id": "session", "item_id": "item", "timestamp": "timestamp"}
CLICKS = ReadOptions(delimiter=",", header=False, columns=("session", "timestamp", "item", "category"),
                     mapping=MAPPING, constants={"event_type": "view"}, ignore=("category",))
BUYS = ReadOptions(delimiter=",", header=False, columns=("session", "timestamp", "item", "price", "quantity"),
                   mapping={**MAPPING, "price": "price", "quantity": "quantity"}, constants={"event_type": "purchase"})


def unknown_as_missing(raw: pd.DataFrame, place: Place) -> pd.DataFrame:
    """Price and quantity 0 are the data set's "not recorded"."""
    return raw.assign(price=raw["price"].mask(raw["price"] == "0"), quantity=raw["quantity"].mask(raw["quantity"] == "0"))


def _is_buys(path: Path) -> bool:
    if "buy" in path.name.lower():
        return True
    if "click" in path.name.lower():
        return False
    first = head_bytes(path, file_kind(path), 4096)[0].split(b"\n", 1)[0]
    return first.count(b",") == 4


def open(path, options: ReadOptions, catalog=None, catalog_options=None) -> EventSource:
    found, _ = events_and_catalog(path, ("yoochoose-clicks", "yoochoose-buys", "clicks", "buys"), ("\0",), "yoochoose")
    buys = tuple(f for f in found if _is_buys(f))
    clicks = tuple(f for f in found if f not in buys)
    parts = []
    if clicks:
        parts.append(Part(clicks, options.over(CLICKS), role="clicks", given=options))
    if buys:
        parts.append(Part(buys, options.over(BUYS), role="buys", transform=unknown_as_missing, given=options))
    return TableSource("yoochoose", parts, catalog_part(catalog, catalog_options), note="the session is the user")
