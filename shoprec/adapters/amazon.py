"""Amazon review data, JSON lines (optionally .gz), in the 2018 and the 2023 layout.

- 2018 (McAuley lab, "Amazon Review Data 2018"): reviews ``<Category>.json.gz`` with
  ``reviewerID, asin, unixReviewTime`` (epoch s), ``overall`` (the rating), ...; metadata
  ``meta_<Category>.json.gz`` with ``asin, title, brand, category`` (a list, broadest first;
  the older ``categories`` list of lists is read too) and ``price`` (text such as ``$12.99``).
- 2023 ("Amazon Reviews 2023"): reviews ``<Category>.jsonl`` with ``user_id, parent_asin,
  timestamp`` (epoch ms), ``rating``, ...; metadata ``meta_<Category>.jsonl`` with
  ``parent_asin, title, store, categories, main_category, price`` (a number or null).

The layout is told by the first record's fields. A review becomes a ``purchase`` (as in the
S3-Rec Amazon sets); the rating and the text are dropped. Catalog: the most specific category
goes to ``category``, the whole path to ``attributes``; a price that is not one number is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from shoprec.adapters._files import events_and_catalog
from shoprec.reading import (
    CatalogReader,
    EventSource,
    InputError,
    Part,
    ReadOptions,
    TableSource,
    catalog_part,
    json_records,
)

LAYOUTS = {
    "2018": ReadOptions(mapping={"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime"},
                        timestamp_unit="s", constants={"event_type": "purchase"}),
    "2023": ReadOptions(mapping={"user_id": "user_id", "item_id": "parent_asin", "timestamp": "timestamp"},
                        timestamp_unit="ms", constants={"event_type": "purchase"}),
}
META = {
    "2018": {"item_id": "asin", "title": "title", "brand": "brand", "price": "price", "categories": "category"},
    "2023": {"item_id": "parent_asin", "title": "title", "brand": "store", "price": "price", "categories": "categories"},
}
PRICE = re.compile(r"^\s*\$?\s*([0-9][0-9,]*(\.[0-9]+)?)\s*$")


def layout_of(part: Part) -> str:
    fields = set(part.columns)
    if "reviewerID" in fields:
        return "2018"
    if "parent_asin" in fields and "user_id" in fields:
        return "2023"
    raise InputError(f"{part.files[0].name}: neither the 2018 (reviewerID, asin, unixReviewTime) nor the 2023 "
                     f"(user_id, parent_asin, timestamp) review layout; fields: {', '.join(sorted(fields))}")


def _category_path(value) -> list[str]:
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        values = list(value)
        if values and isinstance(values[0], (list, tuple)):  # 2014: a list of category paths
            values = list(values[0])
        return [str(v) for v in values if v]
    return []


def _price(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if value == value else None
    match = PRICE.match(value) if isinstance(value, str) else None
    return float(match.group(1).replace(",", "")) if match else None


def read_meta(files: tuple[Path, ...], layout: str) -> pd.DataFrame:
    names = META[layout]
    columns = tuple(dict.fromkeys([*names.values(), "main_category", "categories"]))
    raw = json_records(files, columns)
    paths = raw[names["categories"]].map(_category_path)
    if layout == "2018":  # the 2014 files name it 'categories'
        paths = paths.where(paths.map(len) > 0, raw["categories"].map(_category_path))
    main = raw["main_category"] if "main_category" in raw else pd.Series([None] * len(raw))
    items = pd.DataFrame({
        "item_id": raw[names["item_id"]].astype("string"),
        "title": raw[names["title"]].where(raw[names["title"]].map(lambda t: isinstance(t, str) and bool(t))),
        "brand": raw[names["brand"]].where(raw[names["brand"]].map(lambda t: isinstance(t, str) and bool(t))),
        "price": raw[names["price"]].map(_price),
        "category": [p[-1] if p else (m if isinstance(m, str) else None) for p, m in zip(paths, main)],
        "attributes": paths,
    })
    return items.dropna(subset=["item_id"]).drop_duplicates("item_id", keep="last")


def open(path, options: ReadOptions, catalog=None, catalog_options=None) -> EventSource:
    found, meta = events_and_catalog(path, ("",), ("meta_",), "amazon")
    reviews = tuple(f for f in found if f not in meta)
    if not Path(path).is_dir() and reviews:  # a reviews file: only its own category's metadata
        meta = tuple(m for m in meta if m.name.split(".")[0] in {"meta_" + r.name.split(".")[0] for r in reviews})
    if not reviews and not meta:
        raise InputError(f"{path}: no review file")
    parts, layout = [], "2023"
    if reviews:
        probe = Part(reviews, ReadOptions(), wanted=("reviewerID", "user_id", "parent_asin", "asin"))
        layout = layout_of(probe)
        parts.append(Part(reviews, options.over(LAYOUTS[layout]), role=f"reviews ({layout})", given=options))
    elif meta:
        probe = Part(meta[:1], ReadOptions(), role="catalog", wanted=("parent_asin", "asin"))
        layout = "2023" if "parent_asin" in probe.columns else "2018"
    cat: Part | CatalogReader | None = catalog_part(catalog, catalog_options)
    cat_layout = None
    if cat is None and meta:
        names = META[layout]
        cat_layout = Part(meta[:1], ReadOptions(), role="catalog", wanted=(names["item_id"],)).layout(
            {"item_id": names["item_id"], "title": names["title"], "brand": names["brand"], "price": names["price"],
             "category": f"{names['categories']} (most specific)", "attributes": names["categories"]},
            (None, "n/a"), "off")
        cat = lambda: read_meta(meta, layout)  # noqa: E731
    return TableSource("amazon", parts, cat, catalog_layout=cat_layout, note=f"{layout} layout; a review is a purchase")
