"""/similar_items: the nearest items by the served model's item representation.

An item the model knows is looked up by its embedding; a new one (catalog text or the
request's ``text``) is placed with MiniLM and the model's text projection. Only available
items are shown, their state read online like /recommend's (``services.availability``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from services.availability import Candidates, ItemStates, pick_available
from services.bundle import CurrentModel, ServedBundle
from services.guards import Limits, RequestError
from services.recommending import RecommendedItem
from shoprec.config import Settings
from shoprec.text_embedding import EmbeddingCache


@dataclass(frozen=True)
class SimilarItemsAnswer:
    item_id: str
    items: list[RecommendedItem]
    model_version: str
    source: str  # "model": the item's own embedding; "text": placed from its text

    def to_json(self) -> dict:
        return {"item_id": self.item_id, "items": [i.to_json() for i in self.items],
                "model_version": self.model_version, "source": self.source}


class SimilarItems:
    def __init__(self, settings: Settings, model: CurrentModel, item_states: ItemStates, limits: Limits):
        self.model = model
        self.item_states = item_states
        self.limits = limits
        self.hide_unavailable = settings.serving.hide_unavailable
        self._cache_path = settings.cache_dir / "text_embeddings.parquet"
        self._text_lock = threading.Lock()
        self._text_cache: EmbeddingCache | None = None

    def similar_items(self, item_id: str, k: int, text: str | None = None) -> SimilarItemsAnswer:
        item_id = self.limits.check_id(item_id, "item_id")
        k = self.limits.check_k(k)
        if text is not None:
            text = self.limits.check_text(text)
        bundle = self.model.bundle()
        catalog = bundle.catalog
        known = item_id in catalog.index
        if known:
            query = bundle.unit_embeddings[catalog.index[item_id]]
        else:
            item_text = text or catalog.texts.get(item_id)
            if not item_text:
                raise RequestError(f"unknown item {item_id!r}: not in the catalog and no text given", status=404)
            query = self._embed_new_item(bundle, item_text)
        scores = bundle.unit_embeddings @ query
        banned = np.zeros(len(catalog.item_ids), dtype=bool)
        if known:
            banned[catalog.index[item_id]] = True
        (picks,), states = pick_available([Candidates(catalog.item_ids, scores, k, banned)],
                                          self.item_states.reader(bundle.last_known), self.hide_unavailable)
        reason = f"similar to {text or catalog.title(item_id)}"
        items = [RecommendedItem(catalog.item_ids[i], round(float(scores[i]), 6), reason, states[catalog.item_ids[i]].price)
                 for i in picks]
        return SimilarItemsAnswer(item_id, items, bundle.version, "model" if known else "text")

    def _embed_new_item(self, bundle: ServedBundle, text: str) -> np.ndarray:
        with self._text_lock:  # MiniLM and the cache file are shared; one encode at a time
            if self._text_cache is None:
                self._text_cache = EmbeddingCache(self._cache_path)
            text_emb, _ = self._text_cache.embed([text])
        try:
            vector = np.asarray(bundle.recommender.embed_new_item_text(np.asarray(text_emb[0], dtype=np.float32)),
                                dtype=np.float32).reshape(-1)
        except ValueError as exc:  # a model trained without item text
            raise RequestError(f"model {bundle.version} cannot place an item from its text: {exc}", status=404) from exc
        return vector / max(float(np.linalg.norm(vector)), 1e-12)
