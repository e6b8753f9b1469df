"""GET /items: the catalog for a storefront (``services/storefront``), paged, searched or by id.

A ``Listing`` is built once per served model version (like the bundle's catalog alignment,
the first /items call after a swap builds it): the lake's catalog, most popular first (the
bundle's all-time popularity; items without events after them, by title), and one
lower-cased search text per item (title, category, brand) as an Arrow array, so a search
over a 100,000-item catalog is one vectorised substring match per word, not a Python loop.
Availability and price are read online for the page's items only, as /recommend reads them
(``services.availability``), with the lake's catalog values where neither the online store
nor the offline ``item_stats`` table has one. Read-only; the read scope (``services.guards``).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from services.availability import ItemStates
from services.bundle import CurrentModel, ServedBundle
from services.guards import Limits, RequestError
from shoprec.config import Settings
from shoprec.lake import read_items

LISTED_COLUMNS = ["item_id", "title", "category", "brand", "description", "price", "available"]
MAX_QUERY_LENGTH = 200


@dataclass(frozen=True)
class ListedItem:
    item_id: str
    title: str
    category: str | None
    brand: str | None
    description: str | None
    price: float | None
    available: bool | None  # None: no state known anywhere (counts as available, as in /recommend)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ItemsPage:
    items: list[ListedItem]
    total: int  # items matching q (the whole catalog without q); with ids: how many were found
    offset: int
    limit: int
    q: str | None
    model_version: str

    def to_json(self) -> dict:
        return {"items": [i.to_json() for i in self.items], "total": self.total, "offset": self.offset,
                "limit": self.limit, "q": self.q, "model_version": self.model_version}


@dataclass(frozen=True)
class Listing:
    """One version's catalog in listing order, with what a search and a lookup need."""

    version: str
    frame: pd.DataFrame  # LISTED_COLUMNS, in listing order, index 0..n-1
    search_text: pa.Array  # lower-cased "title category brand" per row
    rows: pd.Index  # item ids, for bulk lookups (get_indexer)

    @classmethod
    def of_bundle(cls, bundle: ServedBundle, items: pd.DataFrame) -> "Listing":
        return cls.build(bundle.version, bundle.catalog.index, bundle.popularity.overall, items)

    @classmethod
    def build(cls, version: str, index: dict[str, int], popularity: np.ndarray, items: pd.DataFrame) -> "Listing":
        """``items`` (the lake's catalog) ordered by ``popularity`` (per vocabulary ``index``), then title."""
        frame = items.reindex(columns=LISTED_COLUMNS).copy()
        frame["item_id"] = frame["item_id"].astype(str)
        frame["title"] = frame["title"].where(frame["title"].fillna("").str.strip() != "", frame["item_id"])
        vocabulary = frame["item_id"].map(index)
        known = vocabulary.notna().to_numpy()
        rank = np.full(len(frame), -1.0)  # below any popularity: items the model has no events for
        rank[known] = popularity[vocabulary[known].astype(np.int64).to_numpy()]
        order = np.lexsort((frame["title"].str.lower().to_numpy(dtype=str), -rank))
        frame = frame.iloc[order].reset_index(drop=True)
        text = frame["title"] + " " + frame["category"].fillna("") + " " + frame["brand"].fillna("")
        search_text = pc.utf8_lower(pa.array(text.to_numpy(dtype=object), type=pa.string()))
        return cls(version, frame, search_text, pd.Index(frame["item_id"]))

    def matching(self, q: str | None) -> np.ndarray:
        """Row numbers, in listing order, whose text holds every word of ``q``."""
        if not q:
            return np.arange(len(self.frame))
        mask = np.ones(len(self.frame), dtype=bool)
        for word in q.lower().split():
            mask &= pc.match_substring(self.search_text, word).to_numpy(zero_copy_only=False)
        return np.flatnonzero(mask)


class CatalogBrowsing:
    def __init__(self, settings: Settings, model: CurrentModel, item_states: ItemStates, limits: Limits):
        self.lake_dir = settings.lake_dir
        self.model = model
        self.item_states = item_states
        self.limits = limits
        self._lock = threading.Lock()
        self._listing: Listing | None = None

    def items(self, offset: int = 0, limit: int = 24, q: str | None = None,
              ids: list[str] | None = None) -> ItemsPage:
        """A page of the catalog (``offset``/``limit``, optionally only items matching ``q``),
        or, with ``ids``, those items in that order (unknown ids are left out)."""
        limit = self._check_limit(limit)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise RequestError("offset must be a non-negative integer")
        q = self._check_query(q)
        bundle = self.model.bundle()
        listing = self._listing_of(bundle)
        if ids is not None:
            rows = self._rows_of_ids(listing, ids)
            return ItemsPage(self._listed(listing, rows, bundle), len(rows), 0, limit, None, bundle.version)
        matches = listing.matching(q)
        rows = matches[offset:offset + limit]
        return ItemsPage(self._listed(listing, rows, bundle), len(matches), offset, limit, q, bundle.version)

    def _check_limit(self, limit: int) -> int:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= self.limits.max_k:
            raise RequestError(f"limit must be an integer between 1 and {self.limits.max_k}")
        return limit

    @staticmethod
    def _check_query(q: str | None) -> str | None:
        if q is None:
            return None
        if len(q) > MAX_QUERY_LENGTH:
            raise RequestError(f"q is longer than {MAX_QUERY_LENGTH} characters")
        if any(not c.isprintable() for c in q):
            raise RequestError("q contains control characters")
        return q.strip() or None

    def _rows_of_ids(self, listing: Listing, ids: list[str]) -> np.ndarray:
        if len(ids) > self.limits.max_k:
            raise RequestError(f"{len(ids)} ids; at most {self.limits.max_k} are allowed")
        cleaned = [self.limits.check_id(item, f"ids[{i}]") for i, item in enumerate(ids)]
        rows = listing.rows.get_indexer(cleaned)
        return rows[rows >= 0]

    def _listing_of(self, bundle: ServedBundle) -> Listing:
        listing = self._listing
        if listing is not None and listing.version == bundle.version:
            return listing
        with self._lock:  # one build per version, however many requests wait for it
            if self._listing is None or self._listing.version != bundle.version:
                self._listing = Listing.of_bundle(bundle, read_items(self.lake_dir))
            return self._listing

    def _listed(self, listing: Listing, rows: np.ndarray, bundle: ServedBundle) -> list[ListedItem]:
        page = listing.frame.iloc[rows]
        states = self.item_states.reader(bundle.last_known)(page["item_id"].tolist())
        return [_listed_item(record, states[record["item_id"]]) for record in page.to_dict("records")]


def _listed_item(record: dict, state) -> ListedItem:
    price = state.price if state.price is not None else _or_none(record["price"])
    available = state.available if state.available is not None else _or_none(record["available"])
    return ListedItem(record["item_id"], record["title"], _or_none(record["category"]), _or_none(record["brand"]),
                      _or_none(record["description"]), None if price is None else float(price),
                      None if available is None else bool(available))


def _or_none(value):
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value
