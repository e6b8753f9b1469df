"""The catalog as the service sees it, aligned with the served model's item vocabulary.

Built once per model version (before the swap), from the lake's catalog
(``lake.read_items``) and events (``tables.all_events``): availability, category,
titles and texts per item, plus the two fallback rankings that need neither the model
nor the online store:
- trending = event counts over the last ``days`` before the newest event (recent
  popularity; the clock is the data's, so replayed or synthetic data works);
- overall popularity = counts over all events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shoprec.text_embedding import item_text


@dataclass(frozen=True)
class Catalog:
    item_ids: list[str]  # the model's vocabulary, in score order
    index: dict[str, int]
    available: np.ndarray  # bool per vocabulary item (not in the catalog = available)
    categories: np.ndarray  # object per vocabulary item, None when unknown
    titles: dict[str, str]  # every catalog item, also ones the model has not seen
    texts: dict[str, str]  # item text (title | category | brand) for new-item embeddings

    @classmethod
    def build(cls, item_ids: list[str], items: pd.DataFrame) -> "Catalog":
        index = {item: i for i, item in enumerate(item_ids)}
        available = np.ones(len(item_ids), dtype=bool)
        categories = np.full(len(item_ids), None, dtype=object)
        titles: dict[str, str] = {}
        texts: dict[str, str] = {}
        if len(items):
            texts = dict(zip(items["item_id"], item_text(items).fillna("")))
            for item, title, category, is_available in zip(
                items["item_id"], items["title"], items["category"], items["available"]
            ):
                if isinstance(title, str) and title.strip():
                    titles[item] = title.strip()
                i = index.get(item)
                if i is not None:
                    available[i] = bool(is_available) if not pd.isna(is_available) else True
                    categories[i] = category if isinstance(category, str) and category else None
        return cls(list(item_ids), index, available, categories, titles, texts)

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
    def from_events(cls, events: pd.DataFrame, index: dict[str, int], days: int) -> "Popularity":
        overall = _counts(events, index)
        trending = overall
        if len(events):
            since = events["timestamp"].max() - pd.Timedelta(days=days)
            recent = _counts(events[events["timestamp"] > since], index)
            trending = recent if recent.any() else overall
        return cls(trending=_normalised(trending), overall=_normalised(overall))


def _counts(events: pd.DataFrame, index: dict[str, int]) -> np.ndarray:
    counts = np.zeros(len(index), dtype=np.float64)
    per_item = events["item_id"].value_counts()
    known = per_item[per_item.index.isin(list(index))]
    counts[[index[i] for i in known.index]] = known.to_numpy()
    return counts


def _normalised(counts: np.ndarray) -> np.ndarray:
    top = counts.max() if len(counts) else 0.0
    return (counts / top if top > 0 else counts).astype(np.float32)
