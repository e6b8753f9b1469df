"""The Feast feature store of the active profile: open, apply, materialize, training sets.

``feature_repo/`` holds one ``feature_store*.yaml`` per store setup; the settings pick
it (sqlite + file registry -> ``feature_store.yaml``, redis + SQL registry ->
``feature_store.production.yaml``) and fill its ``${SHOPREC_*}`` variables from the
settings, so a profile or an environment override never needs a file edited. The
resolved file is written to ``$SHOPREC_HOME/feast/feature_store.yaml`` (usable by the
feast CLI with ``-f``).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from shoprec.config import FEATURE_REPO_DIR, Settings
from shoprec.features.tables import TABLES, table_path

FEATURE_SERVICE = "recommender_v1"
REPO_MODULES = ("entities", "data_sources", "feature_views", "feature_services")
TEMPLATES = {
    ("sqlite", "file"): "feature_store.yaml",
    ("redis", "sql"): "feature_store.production.yaml",
    ("redis", "file"): "feature_store.redis.yaml",
}


def yaml_variables(settings: Settings) -> dict[str, str]:
    return {
        "SHOPREC_HOME": str(Path(settings.home).resolve()),
        "SHOPREC_ONLINE_STORE__REDIS_CONNECTION_STRING": settings.online_store.redis_connection_string,
        "SHOPREC_REGISTRY__SQL_URL": settings.registry.sql_url,
    }


def resolved_yaml(settings: Settings) -> Path:
    """Write the active profile's feature_store.yaml with its variables filled in; returns its path."""
    key = (settings.online_store.type, settings.registry.type)
    if key not in TEMPLATES:
        raise ValueError(
            f"no Feast configuration for online store {key[0]!r} with registry {key[1]!r}; "
            f"supported: {', '.join(f'{o}+{r}' for o, r in TEMPLATES)}"
        )
    text = (FEATURE_REPO_DIR / TEMPLATES[key]).read_text()
    values = yaml_variables(settings)
    unknown = sorted(set(re.findall(r"\$\{(\w+)\}", text)) - set(values))
    if unknown:
        raise ValueError(f"{TEMPLATES[key]} uses variables ShopRec does not set: {', '.join(unknown)}")
    text = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)
    path = settings.feast_dir / "feature_store.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def ensure_registry_database(settings: Settings) -> None:
    """The SQL registry's PostgreSQL database is created if it does not exist yet."""
    if settings.registry.type != "sql":
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(settings.registry.sql_url)
    if not url.drivername.startswith("postgresql") or not url.database:
        return
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    finally:
        admin.dispose()


def feature_store(settings: Settings):
    """The FeatureStore of the active profile (nothing is started: embedded, or the configured servers)."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(FEATURE_REPO_DIR), fs_yaml_file=resolved_yaml(settings))


def feast_cli_env(settings: Settings) -> dict[str, str]:
    """Environment under which ``feast`` run in feature_repo/ sees this ShopRec home and profile."""
    return {**os.environ, **yaml_variables(settings), "FEAST_FS_YAML_FILE_PATH": str(resolved_yaml(settings))}


def repo_objects(settings: Settings) -> list:
    """The Feast objects defined in feature_repo/, their tables pointed at this settings' home.

    The same modules ``feast apply`` reads; imported in-process because a second
    Python with Feast costs seconds, and re-pointed because their paths were read
    from the environment when first imported.
    """
    from feast import Entity, FeatureService, FeatureView, FileSource, PushSource

    if str(FEATURE_REPO_DIR) not in sys.path:
        sys.path.insert(0, str(FEATURE_REPO_DIR))
    modules = [importlib.import_module(name) for name in REPO_MODULES]
    kinds = (Entity, FileSource, PushSource, FeatureView, FeatureService)
    objects = {id(obj): obj for module in modules for obj in vars(module).values() if isinstance(obj, kinds)}
    for obj in objects.values():
        if isinstance(obj, FileSource):
            obj.file_options.uri = str(table_path(settings, obj.name))
        if isinstance(obj, FeatureView) and isinstance(obj.batch_source, FileSource):
            obj.batch_source.file_options.uri = str(table_path(settings, obj.batch_source.name))
    return list(objects.values())


def apply(settings: Settings) -> dict:
    """Register feature_repo/'s entities, sources, views and services (what ``feast apply`` does)."""
    ensure_registry_database(settings)
    store = feature_store(settings)
    store.apply(repo_objects(settings))
    return {
        "feature_views": sorted(fv.name for fv in store.list_feature_views()),
        "feature_services": sorted(fs.name for fs in store.list_feature_services()),
        "registry": store.config.registry.path,
        "online_store": store.config.online_store.type,
    }


def _table_times(settings: Settings, name: str) -> pd.Series:
    path = table_path(settings, name)
    if not path.exists():
        raise FileNotFoundError(f"feature table {name} not built yet ({path}); run `shoprec features build`")
    return pq.read_table(path, columns=["event_timestamp"]).column(0).to_pandas()


def _chunks(start: pd.Timestamp, end: pd.Timestamp, days: int, times: pd.Series) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """[start, end) cut into ``days``-long chunks; chunks holding no row are skipped."""
    edges = list(pd.date_range(start, end, freq=f"{days}D")) + [end]
    pairs = [(a, b) for a, b in zip(edges, edges[1:]) if a < b]
    return [(a, b) for a, b in pairs if ((times >= a) & (times < b)).any()]


def materialize(
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    progress: bool = False,
    since: datetime | None = None,
) -> dict:
    """Offline -> online in bounded chunks (``features.materialize_chunk_days``).

    Without ``start``, each view continues from where its last materialization ended
    (incremental), or from ``since`` when that is earlier: the oldest event of the
    batches just ingested, so events that arrive late (a backfill, a shop's delayed
    export) still reach the online store. Without ``start``, the end never moves back
    before what is already materialized: a backfilled hour must not replace newer online
    rows with older ones. Without ``end``, up to now. Re-running an interval writes the
    same rows again: the online store ends in the same state.
    """
    store = feature_store(settings)
    end_ts = _utc(end) if end is not None else pd.Timestamp.now(tz="UTC")
    report = {"end": end_ts.isoformat(), "views": {}}
    for name in TABLES:
        view = store.get_feature_view(name)
        times = _table_times(settings, name)
        last_end = _utc(view.most_recent_end_time) if view.most_recent_end_time is not None else None
        view_end = end_ts
        if start is not None:
            view_start = _utc(start)
        elif last_end is not None:
            view_start = last_end if since is None else min(last_end, _utc(since))
            view_end = max(end_ts, last_end)
        else:
            view_start = times.min() if len(times) else end_ts
        chunks = _chunks(view_start, view_end, settings.features.materialize_chunk_days, times)
        rows = 0
        for a, b in tqdm(chunks, desc=f"materialize {name}", unit="chunk", disable=not progress):
            store.materialize(start_date=a.to_pydatetime(), end_date=b.to_pydatetime(), feature_views=[name])
            rows += int(((times >= a) & (times < b)).sum())
        report["views"][name] = {"start": view_start.isoformat(), "end": view_end.isoformat(),
                                 "chunks": len(chunks), "rows_read": rows}
    return report


def _utc(ts) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def training_set(entity_df: pd.DataFrame, settings: Settings, features: list[str] | str = FEATURE_SERVICE) -> pd.DataFrame:
    """Point-in-time-correct features for (entity, event_timestamp) rows, via get_historical_features.

    ``features`` is a feature service name (default ``recommender_v1``) or a list of
    ``view:feature`` references. Each row gets the values as of its own timestamp.
    """
    if "event_timestamp" not in entity_df.columns:
        raise ValueError("entity_df needs an event_timestamp column (the time each row is 'as of')")
    store = feature_store(settings)
    refs = store.get_feature_service(features) if isinstance(features, str) else features
    frame = entity_df.copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    for key in ("user_id", "item_id"):
        if key in frame:
            frame[key] = frame[key].astype("string")  # the tables' id type: no dtype-mismatch join
    result = store.get_historical_features(entity_df=frame, features=refs).to_df()
    # The file offline store drops entity rows older than every feature row: merge back so each row is returned
    keys = list(entity_df.columns)
    result["event_timestamp"] = pd.to_datetime(result["event_timestamp"], utc=True)
    return frame.merge(result.drop_duplicates(keys), on=keys, how="left")
