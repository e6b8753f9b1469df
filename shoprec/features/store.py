"""The Feast feature store of the active profile: configure, open, apply, materialize, training sets.

The Feast configuration is built from the settings in one place (``feast_config``): the
online store (SQLite under ``$SHOPREC_HOME/feast`` or Redis), the registry (a file under
``$SHOPREC_HOME/feast`` or SQL) and the file offline store. ``write_feast_yaml`` writes it to
``$SHOPREC_HOME/feast/feature_store.yaml``, which every ``FeatureStore`` here opens and the
feast CLI can use (``FEAST_FS_YAML_FILE_PATH``). ``feature_repo/feature_store.yaml`` is the same
generator's output for the default settings with ``${SHOPREC_HOME}`` left for Feast to expand,
so ``feast apply`` works in ``feature_repo/`` as a plain Feast repo (a test keeps them equal).

The catalog state in ``item_stats`` (availability, price) is current state, not history.
An ingested catalog batch brings it online at once (``push_catalog_state``, called by
``shoprec.ingest``), and ``materialize`` ends by writing the items whose state changed
(``push_item_state_changes``, the same rule), so a catalog change reaches serving within
seconds, without waiting for new events of the item or the next features run.
"""

from __future__ import annotations

import importlib
import sys
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource, PushSource
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from redis import exceptions as redis_exceptions
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from tqdm.auto import tqdm

from shoprec.config import FEATURE_REPO_DIR, Settings
from shoprec.durable import write_text_atomically
from shoprec.features.tables import TABLES, offline_dir, table_path, table_read_at, with_catalog_state, write_table
from shoprec.locks import exclusive_lock

PROJECT = "shoprec"
REPO_MODULES = ("entities", "data_sources", "feature_views")
HOME_VARIABLE = "${SHOPREC_HOME}"  # what feature_repo/feature_store.yaml leaves for Feast to expand
ITEM_STATE_COLUMNS = ["available", "price"]  # item_stats' catalog state: current, pushed when it changes
ITEM_STATE_FILE = "item_state_online.parquet"  # the item state last pushed online, per item
ONE_MICROSECOND = pd.Timedelta(microseconds=1)
USER_VIEWS = ("user_recent_items",)  # keyed by user, written by pushes too: materialized under the push locks
PUSH_LOCK_BUCKETS = 64  # users share push locks: a bounded number of locks, rare contention
PUSH_LOCK_TIMEOUT_S = 10
STORED_STATUSES = (FieldStatus.PRESENT, FieldStatus.NULL_VALUE, FieldStatus.OUTSIDE_MAX_AGE)  # the store has a row


@dataclass(frozen=True)
class Applied:
    """What ``apply`` left registered, and what it deleted."""

    feature_views: list[str]
    feature_services: list[str]  # none are defined any more: a stale one is listed in ``deleted``
    deleted: list[str]
    registry: str
    online_store: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ViewMaterialized:
    start: str
    end: str
    chunks: int
    rows_read: int


@dataclass(frozen=True)
class Materialized:
    """What ``materialize`` copied online: per view, the interval and rows read; then the item states pushed."""

    end: str
    views: dict[str, ViewMaterialized] = field(default_factory=dict)
    item_state_pushed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# --- configuration ----------------------------------------------------------------------
def feast_config(settings: Settings, home: str | None = None) -> dict[str, Any]:
    """The Feast repo configuration (feature_store.yaml as a dict) for these settings.

    Paths are under ``home`` (default: the settings' home, resolved)."""
    root = home if home is not None else str(Path(settings.home).resolve())
    online = settings.online_store
    if online.type == "sqlite":
        online_store: dict[str, Any] = {"type": "sqlite", "path": f"{root}/feast/online_store.db"}
    else:
        online_store = {"type": "redis", "connection_string": online.redis_connection_string}
        if online.key_ttl_seconds is not None:
            online_store["key_ttl_seconds"] = online.key_ttl_seconds
    if settings.registry.type == "file":
        registry: Any = f"{root}/feast/registry.db"
    else:
        registry = {"registry_type": "sql", "path": settings.registry.sql_url, "cache_ttl_seconds": 60,
                    "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True}}
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": registry,
        "online_store": online_store,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }


def feast_yaml(settings: Settings, home: str | None = None) -> str:
    """``feast_config`` as the text of a feature_store.yaml."""
    header = (
        "# Generated by shoprec.features.store.feast_yaml from the settings: do not edit.\n"
        "# feature_repo/: the default settings, the home left for Feast to expand from the environment;\n"
        "# every shoprec command writes the active settings' file to $SHOPREC_HOME/feast/feature_store.yaml.\n"
    )
    return header + yaml.safe_dump(feast_config(settings, home), sort_keys=False, width=1000)


def write_feast_yaml(settings: Settings) -> Path:
    """Write the settings' feature_store.yaml to ``$SHOPREC_HOME/feast/`` (only when it changed); returns its path."""
    content = feast_yaml(settings)
    path = settings.feast_dir / "feature_store.yaml"
    if not path.exists() or path.read_text() != content:
        write_text_atomically(path, content)
    return path


def ensure_registry_database(settings: Settings) -> None:
    """The SQL registry's PostgreSQL database is created if it does not exist yet."""
    if settings.registry.type != "sql":
        return
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


def feature_store(settings: Settings) -> FeatureStore:
    """The FeatureStore of the active profile (nothing is started: embedded, or the configured servers)."""
    return FeatureStore(repo_path=str(FEATURE_REPO_DIR), fs_yaml_file=write_feast_yaml(settings))


# --- the repo ---------------------------------------------------------------------------------
def repo_objects(settings: Settings) -> list:
    """The Feast objects defined in feature_repo/, their tables pointed at this settings' home.

    The same modules ``feast apply`` reads, imported by name from feature_repo/ (a Feast repo,
    not a package); in-process because a second Python with Feast costs seconds, and
    re-pointed because their paths come from the settings of the process that first imported them.
    """
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


def apply(settings: Settings) -> Applied:
    """Register feature_repo/'s entities, sources and views, and delete the registered views and
    feature services the repo no longer defines (as ``feast apply`` does)."""
    ensure_registry_database(settings)
    store = feature_store(settings)
    objects = repo_objects(settings)
    defined = {(type(o).__name__, o.name) for o in objects}
    stale = [o for o in [*store.list_feature_views(), *store.list_feature_services()]
             if (type(o).__name__, o.name) not in defined]
    store.apply(objects, objects_to_delete=stale, partial=not stale)
    return Applied(
        feature_views=sorted(fv.name for fv in store.list_feature_views()),
        feature_services=sorted(fs.name for fs in store.list_feature_services()),
        deleted=sorted(o.name for o in stale),
        registry=store.config.registry.path,
        online_store=store.config.online_store.type,
    )


# --- materialization ----------------------------------------------------------------------
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
) -> Materialized:
    """Offline -> online in bounded chunks (``features.materialize_chunk_days``).

    Without ``start``, each view continues from where its last materialization ended
    (incremental), or from ``since`` when that is earlier: the oldest event of the
    batches just ingested, so events that arrive late (a backfill, a shop's delayed
    export) still reach the online store. Without ``start``, the end never moves back
    before what is already materialized: a backfilled hour must not replace newer online
    rows with older ones. Without ``end``, up to now. Re-running an interval writes the
    same rows again: the online store ends in the same state. A view keyed by user
    (``USER_VIEWS``) is written under the push locks and never over a newer online row
    (``_materialize_user_rows``), so a push acknowledged meanwhile stays. Then the items
    whose catalog state changed are written online (``push_item_state_changes``).
    """
    store = feature_store(settings)
    end_ts = _utc(end) if end is not None else pd.Timestamp.now(tz="UTC")
    views: dict[str, ViewMaterialized] = {}
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
        table = pd.read_parquet(table_path(settings, name)) if name in USER_VIEWS and chunks else None
        read_at = table_read_at(table_path(settings, name)) if table is not None else None
        for a, b in tqdm(chunks, desc=f"materialize {name}", unit="chunk", disable=not progress):
            if table is None:
                store.materialize(start_date=a.to_pydatetime(), end_date=b.to_pydatetime(), feature_views=[name])
            else:
                _materialize_user_rows(settings, store, view, table, a, b, read_at)
            rows += int(((times >= a) & (times < b)).sum())
        views[name] = ViewMaterialized(view_start.isoformat(), view_end.isoformat(), len(chunks), rows)
    return Materialized(end_ts.isoformat(), views, push_item_state_changes(settings, store))


PUSH_STAMP_RESOLUTION = pd.Timedelta(seconds=1)  # SQLite gives online timestamps in whole seconds


def _materialize_user_rows(settings: Settings, store: FeatureStore, view: FeatureView, table: pd.DataFrame,
                           start: pd.Timestamp, end: pd.Timestamp, read_at: pd.Timestamp | None = None) -> int:
    """Feast's materialize for a view keyed by user, except that it never overwrites a newer online row.

    Feast's SQLite store overwrites whatever is stored, and Redis compares timestamps
    between a read and a later write: either way a materialize that read before a push and
    wrote after it replaced the push that was just acknowledged. So each user's latest row
    in [start, end) is written under the same lock as that user's pushes
    (``push_lock``), and only where the online row is not newer. Returns the rows written."""
    times = pd.to_datetime(table["event_timestamp"], utc=True)
    latest = (table[(times >= start) & (times < end)].assign(event_timestamp=times)
              .sort_values("event_timestamp", kind="stable").drop_duplicates("user_id", keep="last"))
    written = 0
    for bucket, rows in latest.groupby(latest["user_id"].map(push_lock_bucket), sort=True):
        with push_lock(settings, store, bucket):
            online = online_row_times(store, view.name, rows["user_id"].tolist())
            # A push stamps its row with the wall clock, later than any event time in the table.
            # The table's row wins when it is as new as the online one (SQLite returns whole
            # seconds; a re-run writes the same row again), or when the online row was pushed
            # before the build read its input (the table holds that push's events too, and the
            # events of batches backfilled since). A push the build did not see stays.
            as_new = [online[u] is None or t >= online[u] for u, t in zip(rows["user_id"], rows["event_timestamp"])]
            seen_push = [not fresh and read_at is not None and online[u] + PUSH_STAMP_RESOLUTION <= read_at
                         for fresh, u in zip(as_new, rows["user_id"])]
            # a row replacing a push is stamped with the build's read time: Redis keeps only newer rows
            rows = rows.assign(event_timestamp=[read_at if replaces else t
                                                for replaces, t in zip(seen_push, rows["event_timestamp"])])
            newer = rows[[a or b for a, b in zip(as_new, seen_push)]]
            if len(newer):
                store.write_to_online_store(view.name, newer.reset_index(drop=True))
                written += len(newer)
    store.registry.apply_materialization(view, store.project, start.to_pydatetime(), end.to_pydatetime())
    return written


def online_row_times(store: FeatureStore, view: str, user_ids: list[str]) -> dict[str, pd.Timestamp | None]:
    """The event timestamp of each user's online row in ``view`` (None: no row); whole seconds
    from SQLite, finer from Redis."""
    feature = next(f.name for f in store.get_feature_view(view).features)
    response = store.get_online_features(features=[f"{view}:{feature}"], entity_rows=[{"user_id": u} for u in user_ids])
    names = list(response.proto.metadata.feature_names.val)
    stamps = response.proto.results[names.index(feature)].event_timestamps
    statuses = response.proto.results[names.index(feature)].statuses
    out: dict[str, pd.Timestamp | None] = {}
    for user, stamp, status in zip(user_ids, stamps, statuses):
        stored = status in STORED_STATUSES and (stamp.seconds or stamp.nanos)
        out[user] = pd.Timestamp(stamp.seconds * 1_000_000_000 + stamp.nanos, tz="UTC") if stored else None
    return out


def push_lock_bucket(user_id: str) -> int:
    """The push lock bucket of a user: their pushes and the materialization of their row share it."""
    return zlib.crc32(user_id.encode()) % PUSH_LOCK_BUCKETS


@contextmanager
def push_lock(settings: Settings, store: FeatureStore, bucket: int):
    """Serialise the online writes of one bucket of users: between the service's pushes (on
    every host, with Redis) and materialization. A flock on the host for SQLite, a Redis lock
    for Redis; ``PushLockTimeout`` when it stays taken (its holder died: it expires)."""
    if store.config.online_store.type != "redis":
        with exclusive_lock(settings.home / "locks" / f"push-{bucket}.lock"):
            yield
        return
    client = store._get_provider().online_store._get_client(store.config.online_store)
    lock = client.lock(f"shoprec:push-lock:{bucket}", timeout=PUSH_LOCK_TIMEOUT_S,
                       blocking_timeout=PUSH_LOCK_TIMEOUT_S + 1, sleep=0.005)
    if not lock.acquire():
        raise PushLockTimeout(f"push lock {bucket} still held after {PUSH_LOCK_TIMEOUT_S + 1} s")
    try:
        yield
    finally:
        try:
            lock.release()
        except redis_exceptions.LockError:  # it expired (a write longer than the timeout): nothing to free
            pass


class PushLockTimeout(RuntimeError):
    """A push lock stayed taken; the store itself answers (no outage): retry."""


def push_item_state_changes(settings: Settings, store: FeatureStore | None = None) -> int:
    """Write the items whose catalog state (availability, price) changed to the online store.

    Materialization alone cannot carry such a change: the item's rows keep their event
    times, an incremental run never reads them again, and Redis keeps a row only if it is
    newer than the stored one. So the item's latest ``item_stats`` row (which carries the
    current catalog state) is written directly, stamped just after both that row and the
    item's previous push; what was pushed is kept in ``ITEM_STATE_FILE`` to find the next
    changes (the first run pushes every item). Nothing changed: nothing is written, so a
    re-run leaves the online store as it was. Returns how many items were written.
    """
    latest = _latest_item_rows(settings)
    state_path = offline_dir(settings) / ITEM_STATE_FILE
    kept = ["item_id", *ITEM_STATE_COLUMNS, "event_timestamp"]
    pushed = pd.read_parquet(state_path) if state_path.exists() else latest[kept].iloc[:0]
    merged = latest.merge(pushed, on="item_id", how="left", suffixes=("", "_pushed"), indicator=True)
    changed = (merged["_merge"] == "left_only").to_numpy()
    for column in ITEM_STATE_COLUMNS:
        now, before = merged[column].astype(object), merged[f"{column}_pushed"].astype(object)
        changed |= ~((now == before) | (now.isna() & before.isna())).to_numpy(dtype=bool)
    if not changed.any():
        return 0
    rows = merged[changed]
    previous = pd.to_datetime(rows["event_timestamp_pushed"], utc=True)
    newest = rows["event_timestamp"].where(previous.isna() | (rows["event_timestamp"] > previous), previous)
    rows = rows.assign(event_timestamp=newest + ONE_MICROSECOND)[list(latest.columns)].reset_index(drop=True)
    (store or feature_store(settings)).write_to_online_store("item_stats", rows)
    state = pd.concat([pushed[~pushed["item_id"].isin(rows["item_id"])], rows[kept]], ignore_index=True)
    write_table(state, state_path)
    return int(len(rows))


def push_catalog_state(settings: Settings, items: pd.DataFrame) -> int | None:
    """An ingested catalog batch's availability and price, online now; returns how many items
    were written (0: nothing changed).

    The batch's state goes into the offline ``item_stats`` table first (the rule the build
    applies, ``tables.with_catalog_state``), then ``push_item_state_changes`` writes what
    changed: the next build finds the same state and the next materialize has nothing to
    change or roll back. None when the table is not built or the views are not applied yet:
    the features run's build and materialize bring the state online then.
    """
    path = table_path(settings, "item_stats")
    if not len(items) or not path.exists():
        return None
    store = feature_store(settings)
    if "item_stats" not in {view.name for view in store.list_feature_views(allow_cache=False)}:
        return None
    write_table(with_catalog_state(pd.read_parquet(path), items, settings), path)
    return push_item_state_changes(settings, store)


def _latest_item_rows(settings: Settings) -> pd.DataFrame:
    """The newest ``item_stats`` row of each item: the current catalog state with the latest counts."""
    frame = pd.read_parquet(table_path(settings, "item_stats"))
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame = frame.sort_values(["item_id", "event_timestamp"], kind="stable")
    return frame.drop_duplicates("item_id", keep="last").reset_index(drop=True)


def _utc(ts) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def training_set(entity_df: pd.DataFrame, settings: Settings, features: list[str]) -> pd.DataFrame:
    """Point-in-time-correct features for (entity, event_timestamp) rows, via get_historical_features.

    ``features`` is a list of ``view:feature`` references; each row gets the values as of
    its own timestamp.
    """
    if "event_timestamp" not in entity_df.columns:
        raise ValueError("entity_df needs an event_timestamp column (the time each row is 'as of')")
    store = feature_store(settings)
    frame = entity_df.copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    for key in ("user_id", "item_id"):
        if key in frame:
            frame[key] = frame[key].astype("string")  # the tables' id type: no dtype-mismatch join
    result = store.get_historical_features(entity_df=frame, features=features).to_df()
    # The file offline store drops entity rows older than every feature row: merge back so each row is returned
    keys = list(entity_df.columns)
    result["event_timestamp"] = pd.to_datetime(result["event_timestamp"], utc=True)
    return frame.merge(result.drop_duplicates(keys), on=keys, how="left")
