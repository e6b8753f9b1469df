"""What the service serves from one model version, and the version that serves now.

``load_bundle(version, settings)`` builds a ``ServedBundle`` before any swap: the model
(``training.artifact.load_recommender``, any format), its vocabulary aligned with the
catalog (``services.catalog``), the fallback rankings and last-known item state from the
offline ``item_stats`` table, and unit item embeddings for reasons and similar items. The
release step verifies a version with it before promoting.

``CurrentModel`` holds the bundle that serves (``ModelHolder``: background load, atomic
swap, a failed version keeps the old one) and answers /model and /admin/reload.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from services.catalog import ITEM_STATS_COLUMNS, Catalog, CatalogState, Popularity
from services.guards import RequestError
from services.ranking import unit_rows
from services.resilience import ModelHolder, Refresh
from shoprec.config import Settings
from shoprec.features.tables import table_path
from shoprec.lake import read_items
from training.artifact import ArtifactError, Recommender, check_version_name, load_recommender
from training.registry import production_version

log = logging.getLogger(__name__)


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class ServedBundle:
    """Everything a request needs from one model version, built before the swap."""

    recommender: Recommender
    catalog: Catalog
    popularity: Popularity
    last_known: CatalogState  # availability and price at load: stand-ins while the online store is down
    unit_embeddings: np.ndarray
    known_items: frozenset[str]  # catalog and vocabulary: what /events accepts
    loaded_at: str = field(default_factory=_utc_now)

    @property
    def version(self) -> str:
        return self.recommender.version


def load_bundle(version: str, settings: Settings) -> ServedBundle:
    """Load a version of ``settings.models_dir`` (a name, never a path: ArtifactError) and
    precompute catalog alignment and fallbacks."""
    recommender = load_recommender(check_version_name(version), settings)
    items = read_items(settings.lake_dir)
    catalog = Catalog.build(list(recommender.item_ids), items)
    item_stats = read_item_stats(settings)
    embeddings = unit_rows(np.asarray(recommender.item_embeddings(), dtype=np.float32))
    if embeddings.shape[0] != len(catalog.item_ids):
        raise ValueError(f"model {version}: {embeddings.shape[0]} item embeddings for {len(catalog.item_ids)} items")
    return ServedBundle(
        recommender=recommender,
        catalog=catalog,
        popularity=Popularity.from_item_stats(item_stats, catalog.index, settings.serving.trending_days),
        last_known=CatalogState.from_item_stats(item_stats, catalog.index),
        unit_embeddings=embeddings,
        known_items=frozenset(catalog.index) | frozenset(items["item_id"].dropna().astype(str)),
    )


def read_item_stats(settings: Settings) -> pd.DataFrame:
    """The columns of the offline ``item_stats`` table serving reads; empty (no fallback
    popularity, every item available) before the features pipeline first ran."""
    path = table_path(settings, "item_stats")
    if not path.exists():
        log.warning("no item_stats table at %s yet: fallbacks have no popularity", path)
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ITEM_STATS_COLUMNS})
    frame = pd.read_parquet(path, columns=ITEM_STATS_COLUMNS)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame


@dataclass(frozen=True)
class ModelInfo:
    """GET /model: what serves, never where (no paths, no host names: errors by their kind
    only; /admin/reload and the log carry the whole message)."""

    model_version: str | None
    created_at: str | None
    metrics: dict
    protocol: str | None
    lineage: dict | None  # a variant's manifest lineage: parent_version, method, parameters
    loaded_at: str | None
    n_items: int
    last_reload_failure: dict | None  # version, error (its kind, e.g. "ArtifactError"), at
    online_store_error: str | None  # its kind, e.g. "ConnectionError"
    worker: int  # the answering worker's process id: each worker loads and swaps on its own

    def to_json(self) -> dict:
        return asdict(self)


class CurrentModel:
    """The bundle that serves now; loads the production version (or a named one) on request."""

    def __init__(self, settings: Settings, holder: ModelHolder[ServedBundle] | None = None):
        self.holder = holder or ModelHolder(lambda v: load_bundle(v, settings), lambda: production_version(settings))

    def bundle(self) -> ServedBundle:
        served = self.holder.current
        if served is None:
            raise RequestError("no model is loaded yet", status=503, detail=_failure_kind(self.holder.last_failure))
        return served

    def reload(self, version: str | None = None) -> Refresh:
        if version is not None:
            _check_requested_version(version)
        return self.holder.refresh(version)

    def info(self, online_store_error: str | None) -> ModelInfo:
        served = self.holder.current
        meta = dict(served.recommender.metadata) if served else {}
        return ModelInfo(
            model_version=served.version if served else None,
            created_at=meta.get("created_at"),
            metrics=_without_locations(meta.get("metrics", {})),
            protocol=meta.get("protocol"),
            lineage=_without_locations(meta.get("lineage")),
            loaded_at=served.loaded_at if served else None,
            n_items=len(served.catalog.item_ids) if served else 0,
            last_reload_failure=_failure_kind(self.holder.last_failure),
            online_store_error=_error_kind(online_store_error),
            worker=os.getpid(),
        )


def _error_kind(error: str | None) -> str | None:
    """``"ConnectionError: Error 111 connecting to redis:6379"`` -> ``"ConnectionError"``: the
    message may name hosts and paths."""
    return error.split(":", 1)[0].strip() if error else None


def _failure_kind(failure: dict | None) -> dict | None:
    if failure is None:
        return None
    return {"version": _without_locations(failure.get("version")), "error": _error_kind(failure.get("error")),
            "at": failure.get("at")}


def _without_locations(value: object) -> object:
    """``value`` (manifest JSON) with every string that could be a path or a URL redacted."""
    if isinstance(value, dict):
        return {_without_locations(k): _without_locations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_locations(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return "<redacted>"
    return value


def _check_requested_version(version: object) -> None:
    try:
        check_version_name(version)
    except ArtifactError as exc:
        raise RequestError("version must be a model version name (letters, digits, '.', '_', '-')") from exc
