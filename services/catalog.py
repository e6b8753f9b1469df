"""The catalog as the service sees it, aligned with the served model's item vocabulary.

Built once per model version (before the swap):
- ``Catalog`` from the lake's catalog (``lake.read_items``): category, titles and texts per
  item (the category cap, the reasons, new-item embeddings). Availability and price are
  not in it: they are read online per answer (``services.availability``).
- ``Popularity`` and ``CatalogState`` from the offline ``item_stats`` feature table (one row
  per item and active day, built by the features pipeline), which needs neither the model
  nor the online store:
  - trending = event counts of the last ``days`` before the newest event, by day (recent
    popularity; the clock is the data's, so replayed or synthetic data works);
  - overall popularity = counts over all events;
  - the last-known availability and price, which stand in while the online store is down.
  They are as fresh as the table at load; a model swap (or a restart) refreshes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shoprec.features.online import ItemState
from shoprec.text_embedding import item_text

ITEM_STATS_COLUMNS = ["item_id", "popularity_1d", "available", "price", "event_timestamp"]  # what serving reads offline


@dataclass(frozen=True)
class Catalog:
    item_ids: list[str]  # the model's vocabulary, in score order
    index: dict[str, int]
    categories: np.ndarray  # object per vocabulary item, None when unknown
    titles: dict[str, str]  # every catalog item, also ones the model has not seen
    texts: dict[str, str]  # item text (title | category | brand) for new-item embeddings

    @classmethod
    def build(cls, item_ids: list[str], items: pd.DataFrame) -> "Catalog":
        index = {item: i for i, item in enumerate(item_ids)}
        categories = np.full(len(item_ids), None, dtype=object)
        titles: dict[str, str] = {}
        texts: dict[str, str] = {}
        if len(items):
            texts = dict(zip(items["item_id"], item_text(items).fillna("")))
            for item, title, category in zip(items["item_id"], items["title"], items["category"]):
                if isinstance(title, str) and title.strip():
                    titles[item] = title.strip()
                i = index.get(item)
                if i is not None:
                    categories[i] = category if isinstance(category, str) and category else None
        return cls(list(item_ids), index, categories, titles, texts)

    def title(self, item_id: str) -> str:
        return self.titles.get(item_id, item_id)

    def indices(self, item_ids: list[str]) -> list[int]:
        """Vocabulary indices of the known items, in order; unknown ids are skipped."""
        return [self.index[i] for i in item_ids if i in self.index]


@dataclass(frozen=True)
class Popularity:
    trending: np.ndarray  # float in [0, 1] per vocabulary item
    overall: np.ndarray

    @classmethod
    def from_item_stats(cls, item_stats: pd.DataFrame, index: dict[str, int], days: int) -> "Popularity":
        """From the daily counts (``popularity_1d`` of each item's row per active day)."""
        active = item_stats[item_stats["popularity_1d"] > 0]
        overall = _counts(active, index)
        trending = overall
        if len(active):
            since = active["event_timestamp"].max() - pd.Timedelta(days=days)
            recent = _counts(active[active["event_timestamp"] > since], index)
            trending = recent if recent.any() else overall
        return cls(trending=_normalised(trending), overall=_normalised(overall))


@dataclass(frozen=True)
class CatalogState:
    """Availability and price per vocabulary item, as the offline ``item_stats`` table had them at load."""

    index: dict[str, int]
    available: np.ndarray  # bool; an item the table does not know counts as available
    price: np.ndarray  # float64, NaN when unknown

    @classmethod
    def from_item_stats(cls, item_stats: pd.DataFrame, index: dict[str, int]) -> "CatalogState":
        available = np.ones(len(index), dtype=bool)
        price = np.full(len(index), np.nan)
        latest = item_stats.sort_values("event_timestamp", kind="stable").drop_duplicates("item_id", keep="last")
        latest = latest[latest["item_id"].isin(set(index))]
        rows = latest["item_id"].map(index).to_numpy(dtype=np.int64)
        available[rows] = latest["available"].fillna(True).astype(bool).to_numpy()
        price[rows] = latest["price"].astype("float64").to_numpy()
        return cls(index, available, price)

    def state(self, item_id: str) -> ItemState:
        i = self.index.get(item_id)
        if i is None:
            return ItemState(available=None, price=None)
        return ItemState(bool(self.available[i]), None if np.isnan(self.price[i]) else float(self.price[i]))


def _counts(item_stats: pd.DataFrame, index: dict[str, int]) -> np.ndarray:
    counts = np.zeros(len(index), dtype=np.float64)
    per_item = item_stats.groupby("item_id", observed=True)["popularity_1d"].sum()
    known = per_item[per_item.index.isin(set(index))]
    counts[[index[i] for i in known.index]] = known.to_numpy(dtype=np.float64)
    return counts


def _normalised(counts: np.ndarray) -> np.ndarray:
    top = counts.max() if len(counts) else 0.0
    return (counts / top if top > 0 else counts).astype(np.float32)
