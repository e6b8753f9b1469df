"""The service's work, without the web framework: recommend, similar items, events, erasure.

``services/service.py`` only translates HTTP to these calls. Everything here works
with the real model (``training.compression.variant.load_served_model``: a compressed
variant or a plain artifact), the real online store (``shoprec.features.online``) and
the lake, and is usable in-process.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from services.batching import AsyncBatcher
from services.catalog import Catalog, Popularity
from services.guards import Limits, RequestError
from services.ranking import POPULAR, TRENDING, Rules, excluded_items, explain, top_k, unit_rows
from services.resilience import ModelHolder, StoreGuard
from shoprec.config import Settings

log = logging.getLogger(__name__)
REASON_WINDOW = 20  # history items considered when explaining a pick
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a folder of models_dir, never a path


@dataclass(frozen=True)
class ServedBundle:
    """Everything a request needs from one model version, built before the swap."""

    recommender: object  # the Recommender contract of load_served_model
    catalog: Catalog
    popularity: Popularity
    unit_embeddings: np.ndarray
    known_items: frozenset  # catalog and vocabulary: what /events accepts
    loaded_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def version(self) -> str:
        return self.recommender.version


@dataclass(frozen=True)
class Lookup:
    """A /recommend request's share of the batched step."""

    events: list[tuple[str, str]] | None  # (item_id, event_type), oldest first; None: online store unreachable
    known: list[tuple[int, str]]  # the events whose item the catalog knows, as (catalog index, event_type)
    scores: np.ndarray | None  # model scores over the catalog; None when nothing is known


def load_bundle(version: str, settings: Settings) -> ServedBundle:
    """Load a version of ``settings.models_dir`` and precompute catalog alignment and fallbacks."""
    from shoprec.features.tables import all_events
    from shoprec.lake import read_items
    from training.compression.variant import load_served_model

    if not VERSION_NAME.match(version):
        raise ValueError(f"{version!r} is not a model version name")
    recommender = load_served_model(settings.models_dir / version, settings)
    items = read_items(settings.lake_dir)
    catalog = Catalog.build(list(recommender.item_ids), items)
    popularity = Popularity.from_events(
        all_events(settings)[["item_id", "timestamp"]], catalog.index, settings.serving.trending_days
    )
    embeddings = unit_rows(np.asarray(recommender.item_embeddings(), dtype=np.float32))
    if embeddings.shape[0] != len(catalog.item_ids):
        raise ValueError(f"model {version}: {embeddings.shape[0]} item embeddings for {len(catalog.item_ids)} items")
    known = frozenset(catalog.index) | frozenset(items["item_id"].dropna().astype(str))
    return ServedBundle(recommender, catalog, popularity, embeddings, known)


def _production_holder(settings: Settings) -> ModelHolder:
    from training.registry import production_version

    return ModelHolder(lambda v: load_bundle(v, settings), lambda: production_version(settings))


class RecommendationEngine:
    def __init__(self, settings: Settings, features=None, holder: ModelHolder | None = None,
                 on_batch: Callable[[int], None] | None = None):
        self.settings = settings
        self.limits = Limits.from_settings(settings)
        s = settings.serving
        self.rules = Rules(s.exclude, s.hide_unavailable, s.max_per_category)
        self.features = features  # shoprec.features.online.OnlineFeatures
        self.store = StoreGuard(cooldown_s=s.store_retry_seconds)
        self.holder = holder or _production_holder(settings)
        self._batcher = AsyncBatcher(self._look_up_batch, s.batch_max_size, s.batch_max_wait_ms / 1000, on_batch)
        self._text_lock = threading.Lock()
        self._text_cache = None

    # --- model -----------------------------------------------------------------
    def served(self) -> ServedBundle:
        served = self.holder.current
        if served is None:
            raise RequestError("no model is loaded yet", status=503, detail=self.holder.last_failure)
        return served

    def reload(self, version: str | None = None) -> dict:
        if version is not None and not (isinstance(version, str) and VERSION_NAME.match(version)):
            raise RequestError("version must be a model version name (letters, digits, '.', '_', '-')")
        return self.holder.refresh(version)

    def model_info(self) -> dict:
        served = self.holder.current
        meta = dict(served.recommender.metadata) if served else {}
        return {
            "model_version": served.version if served else None,
            "created_at": meta.get("created_at"),
            "metrics": meta.get("metrics", {}),
            "protocol": meta.get("protocol"),
            "lineage": meta.get("lineage"),
            "loaded_at": served.loaded_at if served else None,
            "n_items": len(served.catalog.item_ids) if served else 0,
            "last_reload_failure": self.holder.last_failure,
            "online_store_error": self.store.last_error,
        }

    # --- recommend ---------------------------------------------------------------
    def recommend(self, user_id: str | None, history: list[str] | None, k: int, exclude_seen: bool = True) -> dict:
        """A /recommend answer, computed in the calling thread (in-process use)."""
        user_id, history, k = self.limits.check_recommend(user_id, history, k)
        served = self.served()
        found = self._look_up_batch([(served, user_id, history)])[0]
        return self._answer(served, user_id, found, k, exclude_seen)

    async def recommend_async(self, user_id: str | None, history: list[str] | None, k: int,
                              exclude_seen: bool = True) -> dict:
        """The same answer on the service's event loop: the online-store read and the model
        call are batched with those of concurrent requests (``AsyncBatcher``)."""
        user_id, history, k = self.limits.check_recommend(user_id, history, k)
        served = self.served()
        found = await self._batcher.submit((served, user_id, history))
        return self._answer(served, user_id, found, k, exclude_seen)

    def _answer(self, served: ServedBundle, user_id: str | None, found: Lookup, k: int, exclude_seen: bool) -> dict:
        if found.events is None:  # the online store is unreachable
            return self._fallback(served, user_id, [], k, exclude_seen, served.popularity.overall, POPULAR)
        if found.scores is None:  # no history, or none of it in the catalog
            return self._fallback(served, user_id, found.events, k, exclude_seen, served.popularity.trending, TRENDING)
        catalog, scores = served.catalog, found.scores
        picks = self._rank(served, scores, found.events, k, exclude_seen)
        reasons = explain(picks, found.known[-REASON_WINDOW:], served.unit_embeddings,
                          lambda i: catalog.title(catalog.item_ids[i]))
        items = [
            {"item_id": catalog.item_ids[i], "score": round(float(scores[i]), 6), "reason": r}
            for i, r in zip(picks, reasons)
        ]
        return {"user_id": user_id, "items": items, "model_version": served.version, "fallback": False}

    def _look_up_batch(self, requests: list[tuple[ServedBundle, str | None, list[str] | None]]) -> list[Lookup]:
        """The shared step of concurrent /recommend calls: one online-store read for all their
        users, then the model; each request is (served bundle, user_id or None, history or None)."""
        users = list(dict.fromkeys(user for _, user, _ in requests if user is not None))
        online = self._user_events(users) if users else {}
        events = [
            [(item, "view") for item in history] if user is None else (None if online is None else online.get(user, []))
            for _, user, history in requests
        ]
        bundles = [served for served, _, _ in requests]
        known = [[(b.catalog.index[i], t) for i, t in e or () if i in b.catalog.index] for b, e in zip(bundles, events)]
        return [Lookup(*found) for found in zip(events, known, self._score_known(bundles, known))]

    def _score_known(self, bundles: list[ServedBundle], known: list[list[tuple[int, str]]]) -> list[np.ndarray | None]:
        """Scores for the rows with known items (None for the others): one model call per served
        bundle, since a model swap may land between two requests of a batch."""
        scores: list[np.ndarray | None] = [None] * len(known)
        length = self.settings.features.sequence_length
        for bundle in {id(b): b for b in bundles}.values():
            rows = [n for n, b in enumerate(bundles) if b is bundle and known[n]]
            if rows:
                histories = [[bundle.catalog.item_ids[i] for i, _ in known[n]][-length:] for n in rows]
                for n, row in zip(rows, bundle.recommender.score(histories)):
                    scores[n] = row
        return scores

    def _user_events(self, user_ids: list[str]) -> dict[str, list[tuple[str, str]]] | None:
        """Each user's (item_id, event_type) sequence from the online store; None when it is unreachable."""
        if self.features is None or not self.store.should_try():
            return None
        try:
            events = self.features.recent_events(user_ids)
        except Exception as exc:  # FeatureStoreUnavailable, or a client error Feast lets through
            self.store.failed(exc)
            return None
        self.store.succeeded()
        return events

    def _rank(self, served: ServedBundle, scores: np.ndarray, events, k: int, exclude_seen: bool) -> list[int]:
        catalog = served.catalog
        banned = self._hidden(catalog)
        banned[catalog.indices(sorted(excluded_items(events, self.rules.exclude, exclude_seen)))] = True
        return top_k(scores, k, banned=banned, categories=catalog.categories, max_per_category=self.rules.max_per_category)

    def _hidden(self, catalog: Catalog) -> np.ndarray:
        """A fresh mask of the items no answer may show (unavailable ones, when the rules say so)."""
        if self.rules.hide_unavailable:
            return ~catalog.available
        return np.zeros(len(catalog.item_ids), dtype=bool)

    def _fallback(self, served, user_id, events, k, exclude_seen, scores, reason) -> dict:
        picks = self._rank(served, scores, events, k, exclude_seen)
        items = [
            {"item_id": served.catalog.item_ids[i], "score": round(float(scores[i]), 6), "reason": reason}
            for i in picks
        ]
        return {"user_id": user_id, "items": items, "model_version": served.version, "fallback": True}

    # --- similar items -------------------------------------------------------------
    def similar_items(self, item_id: str, k: int, text: str | None = None) -> dict:
        item_id = self.limits.check_id(item_id, "item_id")
        k = self.limits.check_k(k)
        if text is not None:
            text = self.limits.check_text(text)
        served = self.served()
        catalog = served.catalog
        if item_id in catalog.index:
            query, source = served.unit_embeddings[catalog.index[item_id]], "model"
        else:
            item_text = text or catalog.texts.get(item_id)
            if not item_text:
                raise RequestError(f"unknown item {item_id!r}: not in the catalog and no text given", status=404)
            query, source = self._embed_new_item(served, item_text), "text"
        scores = served.unit_embeddings @ query
        banned = self._hidden(catalog)
        if item_id in catalog.index:
            banned[catalog.index[item_id]] = True
        title = text or catalog.title(item_id)
        items = [
            {"item_id": catalog.item_ids[i], "score": round(float(scores[i]), 6), "reason": f"similar to {title}"}
            for i in top_k(scores, k, banned=banned)
        ]
        return {"item_id": item_id, "items": items, "model_version": served.version, "source": source}

    def _embed_new_item(self, served: ServedBundle, text: str) -> np.ndarray:
        from shoprec.text_embedding import EmbeddingCache

        with self._text_lock:  # MiniLM and the cache file are shared; one encode at a time
            if self._text_cache is None:
                self._text_cache = EmbeddingCache(self.settings.cache_dir / "text_embeddings.parquet")
            text_emb, _ = self._text_cache.embed([text])
        vector = _project_text(served.recommender, np.asarray(text_emb[0], dtype=np.float32)).reshape(-1)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def warm_up(self) -> None:
        """Run the request paths once on made-up input before traffic does (imports, first-use
        costs); writes nothing. Best effort: a failure here only means a slower first request."""
        from shoprec.validation import validate_event_records

        try:
            served = self.served()
            item = served.catalog.item_ids[0]
            sample = [{"user_id": "warm-up", "item_id": item, "event_type": "view",
                       "timestamp": pd.Timestamp.now(tz="UTC").isoformat()}]
            validate_event_records(sample, self.settings, known_items=served.known_items)
            self.recommend(None, [item], 10)
            if self.features is not None:
                self.features.recent_events(["warm-up"])
                self.features.warm_up(pd.DataFrame(sample))
        except Exception as exc:  # noqa: BLE001 - never fatal
            log.warning("warm-up failed (the first requests will be slower): %s", exc)

    # --- writes ------------------------------------------------------------------------
    def ingest_events(self, records: list) -> dict:
        """Validate every event; all valid -> online store + offline event log (one push), else nothing."""
        from shoprec.features.online import InvalidFeatureRequest
        from shoprec.validation import validate_event_records

        self.limits.check_events(records)
        now = pd.Timestamp.now(tz="UTC").isoformat()
        records = [{**r, "timestamp": now} if isinstance(r, dict) and r.get("timestamp") is None else r for r in records]
        errors = validate_event_records(records, self.settings, known_items=self.served().known_items)
        invalid = [{"index": i, "errors": e} for i, e in enumerate(errors) if e]
        if invalid:
            raise RequestError(f"{len(invalid)} of {len(records)} events are invalid; nothing was written", detail=invalid)
        if self.features is None or not self.store.should_try():
            raise RequestError(f"online store unavailable ({self.store.last_error}); nothing was written", status=503)
        try:
            self.features.push_events(pd.DataFrame(records))  # also appends them to the offline event log
        except InvalidFeatureRequest as exc:
            raise RequestError(f"events refused by the feature store; nothing was written: {exc}") from exc
        except Exception as exc:
            self.store.failed(exc)
            raise RequestError(
                f"online store unavailable: the events are in the offline event log but not online yet: {exc}", status=503
            ) from exc
        self.store.succeeded()
        return {"accepted": len(records)}

    def forget_user(self, user_id: str) -> dict:
        """Right to erasure: online rows, event log and feature tables (OnlineFeatures), then the lake."""
        user_id = self.limits.check_id(user_id, "user_id")
        try:
            self.features.forget_user(user_id)
        except Exception as exc:
            self.store.failed(exc)
            raise RequestError(f"online store unavailable, nothing was erased: {exc}", status=503) from exc
        removed = erase_from_lake(self.settings.lake_dir, user_id)
        return {"user_id": user_id, "online_features": "removed", "event_log": "removed", "lake_events_removed": removed}


def _project_text(recommender, text_embedding: np.ndarray) -> np.ndarray:
    """The model's representation of an item from its MiniLM text (the text projection path)."""
    try:
        return np.asarray(recommender.embed_new_item_text(text_embedding), dtype=np.float32)
    except ValueError as exc:  # a model trained without item text
        raise RequestError(f"model {recommender.version} cannot place an item from its text: {exc}", status=404) from exc


def erase_from_lake(lake_dir: Path, user_id: str) -> int:
    """Delete ``user_id``'s events from every lake event file; returns how many rows went.

    Each affected file is rewritten to a temp name and renamed, so a crash never leaves
    a half-written file and other users' events are never lost.
    """
    from shoprec.lake import event_files

    removed = 0
    for path in event_files(Path(lake_dir)):
        table = pq.read_table(path)
        is_user = pc.fill_null(pc.equal(table["user_id"], user_id), False)
        hits = pc.sum(is_user).as_py() or 0
        if not hits:
            continue
        kept = table.filter(pc.invert(is_user))
        if kept.num_rows == 0:
            path.unlink()
        else:
            tmp = path.with_name(f".{path.name}.tmp")
            pq.write_table(kept, tmp)
            os.replace(tmp, path)
        removed += hits
    return removed
