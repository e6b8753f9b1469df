"""DIGINETICA (CIKM Cup 2016), semicolon-separated.

- ``train-item-views.csv``: ``sessionId;userId;itemId;timeframe;eventdate`` - ``userId`` is
  mostly ``NA``, ``eventdate`` the session's day and ``timeframe`` milliseconds since the
  session began: the timestamp is ``eventdate + timeframe ms`` (UTC). Each row is a view.
- ``train-purchases.csv``: ``sessionId;userId;timeframe;eventdate;ordernumber;itemId`` - purchases.
- ``products.csv``: ``itemId;pricelog2;product.name.tokens`` (hashed name tokens -> attributes;
  ``pricelog2`` is a log-scale price bucket, not a price, and is dropped) and
  ``product-categories.csv``: ``itemId;categoryId`` -> category.

The session is the user (``--map user_id=userId --user-from-session`` keeps the few known users).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shoprec.adapters._files import events_and_catalog
from shoprec.reading import (
    CatalogReader,
    EventSource,
    InputError,
    Part,
    Place,
    ReadOptions,
    TableSource,
    catalog_part,
    read_whole,
    type_error,
)

COMMON = {"session_id": "sessionId", "user_id": "sessionId", "item_id": "itemId", "timestamp": "timestamp"}
VIEWS = ReadOptions(delimiter=";", mapping=COMMON, constants={"event_type": "view"},
                    ignore=("userId", "timeframe", "eventdate"))
PURCHASES = ReadOptions(delimiter=";", mapping=COMMON, constants={"event_type": "purchase"},
                        ignore=("userId", "timeframe", "eventdate", "ordernumber"))


def session_time(raw: pd.DataFrame, place: Place) -> pd.DataFrame:
    """timestamp = eventdate + timeframe milliseconds; a value that is neither names its line."""
    day = pd.to_datetime(raw["eventdate"], format="ISO8601", utc=True, errors="coerce")
    offset = pd.to_numeric(raw["timeframe"], errors="coerce")
    for column, parsed in (("eventdate", day), ("timeframe", offset)):
        bad = (raw[column].notna() & parsed.isna()).reset_index(drop=True)
        if bad.any():
            raise type_error(place, column, "timestamp", raw[column], bad, "dates" if column == "eventdate" else "milliseconds")
    return raw.assign(timestamp=day + pd.to_timedelta(offset, unit="ms"))


def read_products(files: tuple[Path, ...]) -> pd.DataFrame:
    products = [f for f in files if f.name.lower().startswith("products")]
    categories = [f for f in files if f.name.lower().startswith("product-categories")]
    options = ReadOptions(delimiter=";")
    frame = None
    if products:
        raw = read_whole(products, options)
        if "itemId" not in raw:
            raise InputError(f"{products[0].name}: expected itemId;pricelog2;product.name.tokens")
        tokens = raw.get("product.name.tokens", pd.Series([None] * len(raw)))
        frame = pd.DataFrame({"item_id": raw["itemId"],
                              "attributes": [t.split(",") if isinstance(t, str) and t else [] for t in tokens]})
    if categories:
        raw = read_whole(categories, options)
        cats = pd.DataFrame({"item_id": raw["itemId"], "category": raw["categoryId"]}).drop_duplicates("item_id", keep="last")
        frame = cats if frame is None else frame.merge(cats, on="item_id", how="outer")
    if frame is not None and "attributes" in frame:
        frame["attributes"] = frame["attributes"].map(lambda a: a if isinstance(a, list) else [])
    return frame


def open(path, options: ReadOptions, catalog=None, catalog_options=None) -> EventSource:
    found, items = events_and_catalog(path, ("train-item-views", "train-purchases", "item-views", "purchases"),
                                      ("products", "product-categories"), "diginetica")
    purchases = tuple(f for f in found if "purchases" in f.name.lower())
    views = tuple(f for f in found if f not in purchases)
    parts = [Part(files, options.over(preset), role=role, transform=session_time, derived=("timestamp",),
                  given=options)
             for files, preset, role in ((views, VIEWS, "views"), (purchases, PURCHASES, "purchases")) if files]
    cat: Part | CatalogReader | None = catalog_part(catalog, catalog_options)
    layout = None
    if cat is None and items:
        layout = Part(items[:1], ReadOptions(delimiter=";"), role="catalog", given=ReadOptions()).layout(
            {"item_id": "itemId", "category": "categoryId", "attributes": "product.name.tokens"}, (None, "n/a"), "off")
        cat = lambda: read_products(items)  # noqa: E731
    return TableSource("diginetica", parts, cat, catalog_layout=layout,
                       note="timestamp = eventdate + timeframe ms; the session is the user")
