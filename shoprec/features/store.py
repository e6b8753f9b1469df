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

import gc
import importlib
import sys
import zlib
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, PushSource
from feast.data_source import DataSource
from redis import exceptions as redis_exceptions
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from tqdm.auto import tqdm

from shoprec.config import FEATURE_REPO_DIR, Settings
from shoprec.durable import write_text_atomically
from shoprec.features import offline_engine
from shoprec.features.redis_store import STORE_TYPE as REDIS_STORE_TYPE
from shoprec.features.sqlite_store import STORE_TYPE as SQLITE_STORE_TYPE
from shoprec.features.tables import TABLES, offline_dir, table_path, table_read_at, with_catalog_state, write_table
from shoprec.features.value_bytes import encode_rows
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
# Rows per online_write_batch call (Feast's materialization.online_write_batch_size): one
# pipeline / transaction per batch, bounded memory; 10,000 measured as fast as 50,000.
ONLINE_WRITE_BATCH_ROWS = 10_000
NO_ROW = np.iinfo(np.int64).min  # an entity's online time (ns) when the store has no row


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
    chunks: int  # online write batches
    rows_read: int  # table rows in the window
    entities: int = 0  # entities with a row in the window: their newest row is what goes online
    written: int = 0  # rows written (a user's row is skipped where the online row is newer)


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
        # Feast's SQLite store with a bulk write (``sqlite_store``): same tables, same reads
        online_store: dict[str, Any] = {"type": SQLITE_STORE_TYPE, "path": f"{root}/feast/online_store.db"}
    else:
        # Feast's Redis store with a bulk write (``redis_store``): same keys and hashes, same reads
        online_store = {"type": REDIS_STORE_TYPE, "connection_string": online.redis_connection_string}
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
        "offline_store": offline_engine.feast_offline_store(settings),  # DuckDB, or Spark
        "entity_key_serialization_version": 3,
        "materialization": {"online_write_batch_size": ONLINE_WRITE_BATCH_ROWS},
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
    re-pointed because their paths (and the engine their source type is for: ``offline_engine``)
    come from the settings of the process that first imported them.
    """
    if str(FEATURE_REPO_DIR) not in sys.path:
        sys.path.insert(0, str(FEATURE_REPO_DIR))
    modules = [importlib.import_module(name) for name in REPO_MODULES]
    kinds = (Entity, DataSource, FeatureView, FeatureService)
    objects = {id(obj): obj for module in modules for obj in vars(module).values() if isinstance(obj, kinds)}
    sources: dict[str, DataSource] = {}

    def table(source: DataSource) -> DataSource:
        return sources.setdefault(source.name, offline_engine.table_source(settings, source.name, table_path(settings, source.name)))

    for obj in objects.values():
        if isinstance(obj, (PushSource, FeatureView)) and obj.batch_source is not None:
            obj.batch_source = table(obj.batch_source)
        if isinstance(obj, FeatureView) and not isinstance(obj.data_source, PushSource):
            obj.data_source = obj.batch_source
    return [table(obj) if isinstance(obj, DataSource) and not isinstance(obj, PushSource) else obj
            for obj in objects.values()]


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


@dataclass(frozen=True)
class LatestRows:
    """The newest table row of each entity in a window, and how many table rows the window held."""

    rows: pa.Table
    rows_read: int


def _window(view: FeatureView, path: Path, start, end_ts: pd.Timestamp, since) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[start, end) of one view's run: see ``materialize``."""
    last_end = _utc(view.most_recent_end_time) if view.most_recent_end_time is not None else None
    if start is not None:
        return _utc(start), end_ts
    if last_end is not None:
        return (last_end if since is None else min(last_end, _utc(since))), max(end_ts, last_end)
    oldest = _oldest_time(path)
    return (oldest if oldest is not None else end_ts), end_ts


def materialize(
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    progress: bool = False,
    since: datetime | None = None,
) -> Materialized:
    """Offline -> online: each entity's newest row in the window, through Feast's OnlineStore.

    Without ``start``, each view continues from where its last materialization ended
    (incremental), or from ``since`` when that is earlier: the oldest event of the
    batches just ingested, so events that arrive late (a backfill, a shop's delayed
    export) still reach the online store. Without ``start``, the end never moves back
    before what is already materialized: a backfilled hour must not replace newer online
    rows with older ones. Without ``end``, up to now. Re-running an interval writes the
    same rows again: the online store ends in the same state.

    Only the newest row per entity in the window is written (older ones would be
    overwritten at once), read from the Parquet table with pyarrow (the row groups the
    window can touch), encoded column-wise and written by the configured ShopRec store (Feast's
    SQLite or Redis store with a bulk ``online_write_batch``: ``sqlite_store``, ``redis_store``)
    in batches of ``online_write_batch_size``: what ``feast get-online-features`` and the push
    path read. Feast's own ``store.materialize`` spent its time per row in pandas, protobuf
    conversion and, on SQLite, per chunk of every entity's history (profile: docs/results/
    materialize.md). A view keyed by user (``USER_VIEWS``) is written under the push locks
    and never over a newer online row (``_write_user_rows``), so a push acknowledged
    meanwhile stays. Then the items whose catalog state changed are written online
    (``push_item_state_changes``).
    """
    store = feature_store(settings)
    end_ts = _utc(end) if end is not None else pd.Timestamp.now(tz="UTC")
    views: dict[str, ViewMaterialized] = {}
    with _no_cyclic_gc():
        changes = item_state_changes(settings)
        written: set[str] = set()
        for name in TABLES:
            views[name] = _materialize_view(settings, store, name, start, end_ts, since, progress, changes, written)
        pushed = push_item_state_changes(settings, store, changes, frozenset(written))
    return Materialized(end_ts.isoformat(), views, pushed)


@contextmanager
def _no_cyclic_gc():
    """The cyclic garbage collector paused: the protobuf values of a batch are millions of
    fresh objects and each collection walks them all (converting 20,000 users' timestamp
    lists took 0.22 s with it, 0.05 s without). Nothing here makes cycles; refcounting frees."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _materialize_view(settings: Settings, store: FeatureStore, name: str, start, end_ts: pd.Timestamp, since,
                      progress: bool, changes: ItemStateChanges, pushed: set[str]) -> ViewMaterialized:
    """One view's newest rows in its window, online (``materialize``)."""
    view = store.get_feature_view(name)
    path = table_path(settings, name)
    if not path.exists():
        raise FileNotFoundError(f"feature table {name} not built yet ({path}); run `shoprec features build`")
    view_start, view_end = _window(view, path, start, end_ts, since)
    if offline_engine.is_spark(settings):
        window = offline_engine.latest_rows_on_spark(store, view, view_start, view_end)
        latest = LatestRows(window.rows, window.rows_read)
    else:
        latest = latest_rows(path, _join_key(view), view_start, view_end)
    with tqdm(total=latest.rows.num_rows, desc=f"materialize {name}", unit="row", disable=not progress) as bar:
        if name in USER_VIEWS:
            written, batches = _write_user_rows(settings, store, view, latest.rows, table_read_at(path), bar.update)
        else:
            stamps = _row_times(latest.rows)
            if name == "item_stats":
                stamps, merged = _stamp_item_pushes(latest.rows, stamps, changes)
                pushed |= merged
            written, batches = _write_rows(store, view, latest.rows, stamps, bar.update)
    if view_start < view_end:
        store.registry.apply_materialization(view, store.project, view_start.to_pydatetime(), view_end.to_pydatetime())
    return ViewMaterialized(view_start.isoformat(), view_end.isoformat(), batches, latest.rows_read,
                            latest.rows.num_rows, written)


PUSH_STAMP_RESOLUTION = pd.Timedelta(seconds=1)  # SQLite gives online timestamps in whole seconds


def _write_user_rows(settings: Settings, store: FeatureStore, view: FeatureView, rows: pa.Table,
                     read_at: pd.Timestamp | None, progress=None) -> tuple[int, int]:
    """Write users' newest rows, except over a newer online row; returns (rows sent, write batches).

    Feast's SQLite store overwrites whatever is stored, and Redis compares timestamps
    between a read and a later write: either way a materialize that read before a push and
    wrote after it replaced the push that was just acknowledged. So each user's row is
    written under the same lock as that user's pushes (``push_lock``), and only where the
    online row is not newer (``_sqlite_stamps``, ``_redis_stamps``)."""
    if not rows.num_rows:
        return 0, 0
    users = rows.column("user_id").to_pylist()
    buckets = np.fromiter((push_lock_bucket(u) for u in users), np.int64, len(users))
    times = _row_times(rows)
    read_at_ns = read_at.value if read_at is not None else None
    redis = settings.online_store.type == "redis"
    written = batches = 0
    for group in _bucket_groups(buckets, store.config.materialization_config.online_write_batch_size or ONLINE_WRITE_BATCH_ROWS):
        index = np.flatnonzero(np.isin(buckets, group))
        with ExitStack() as held:
            for bucket in group:  # ascending, as every holder of several takes them: no deadlock
                held.enter_context(push_lock(settings, store, int(bucket)))
            if redis:
                stamps, keep = _redis_stamps(times[index], read_at_ns)
            else:
                online = _online_times(store, view, [users[i] for i in index])
                stamps, keep = _sqlite_stamps(times[index], online, read_at_ns)
            n, b = _write_rows(store, view, rows.take(pa.array(index[keep])), stamps[keep])
            written, batches = written + n, batches + b
        if progress:
            progress(len(index))
    return written, batches


def _bucket_groups(buckets: np.ndarray, rows: int) -> list[list[int]]:
    """Consecutive push-lock buckets holding about ``rows`` users together: one lock round and one
    write per group (an hourly run's 10,000 users took 64 transactions, one per bucket), while a
    group's locks are held for one batch only, so a push waits a fraction of a second."""
    values, counts = np.unique(buckets, return_counts=True)
    groups: list[list[int]] = [[]]
    size = 0
    for bucket, count in zip(values.tolist(), counts.tolist()):
        if groups[-1] and size + count > rows:
            groups.append([])
            size = 0
        groups[-1].append(bucket)
        size += count
    return [g for g in groups if g]


def _sqlite_stamps(event: np.ndarray, online: np.ndarray, read_at: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(stamps, which rows to write) given each user's online time (``NO_ROW``: none).

    A push stamps its row with the wall clock, later than any event time in the table.
    The table's row wins when it is as new as the online one (SQLite returns whole
    seconds; a re-run writes the same row again), or when the online row was pushed
    before the build read its input (the table holds that push's events too, and the
    events of batches backfilled since): that row is stamped with the build's read time.
    A push the build did not see stays."""
    as_new = (online == NO_ROW) | (event >= online)
    if read_at is None:
        return event, as_new
    seen_push = ~as_new & (online + PUSH_STAMP_RESOLUTION.value <= read_at)
    return np.where(seen_push, read_at, event), as_new | seen_push


def _redis_stamps(event: np.ndarray, read_at: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(stamps, which rows to write) for Redis, which itself keeps a row only if it is newer than
    the stored one (``online_write_batch`` reads the stored time): stamped ``max(event time,
    read time - 1 s)``, a row replaces an earlier build's row and a push acknowledged a second
    before the build read its input, and a push the build did not see stays: the rule of
    ``_sqlite_stamps`` without reading the online rows first (that read was 14 µs of the 35 µs
    per user)."""
    if read_at is None:
        return event, np.ones(len(event), bool)
    return np.maximum(event, read_at - PUSH_STAMP_RESOLUTION.value), np.ones(len(event), bool)


def _write_rows(store: FeatureStore, view: FeatureView, rows: pa.Table, stamps: np.ndarray, progress=None) -> tuple[int, int]:
    """``rows`` (a view's table rows) stamped ``stamps`` (ns), encoded column-wise (``value_bytes``) and
    written with the configured ShopRec store's ``write_encoded`` (what its ``online_write_batch`` does with
    Feast's rows) in batches of ``online_write_batch_size``; returns (rows written, batches)."""
    size = store.config.materialization_config.online_write_batch_size or ONLINE_WRITE_BATCH_ROWS
    online_store = store._get_provider().online_store
    features = [(f.name, f.dtype.to_value_type()) for f in view.features]
    batches = 0
    for lo in range(0, rows.num_rows, size):
        batch = rows.slice(lo, size)
        online_store.write_encoded(store.config, view, encode_rows(features, _join_key(view), batch, stamps[lo:lo + size]))
        batches += 1
        if progress:
            progress(batch.num_rows)
    return rows.num_rows, batches


def _online_times(store: FeatureStore, view: FeatureView, user_ids: list[str]) -> np.ndarray:
    """The event time (ns) of each user's online row in ``view`` (``NO_ROW``: none) in the SQLite store,
    in whole seconds: the time ``online_read`` gives, without reading the values (that read was 1.2 s of
    an hourly run's 2 s on SQLite: 10,000 users' sequences parsed to compare one time each)."""
    times = store._get_provider().online_store.online_times(store.config, view, user_ids)
    return np.array([NO_ROW if t is None else t for t in times], np.int64)


def latest_rows(path: Path, key: str, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> LatestRows:
    """Each ``key``'s newest row with ``start <= event_timestamp < end`` in the Parquet table at ``path``.

    Ties keep the row written last. Only row groups whose statistics can hold the window are
    read, and of those only the key and time columns until the rows are known. A table that
    marks each entity's newest row (``is_newest``: ``tables.snapshot_batches``) and ends before
    ``end`` needs no comparison: its marked rows in the window are the answer, and they lie in
    the table's last row groups, the only ones whose lists are decoded."""
    file = pq.ParquetFile(path)
    lo = start.value if start is not None else np.iinfo(np.int64).min
    hi = end.value if end is not None else np.iinfo(np.int64).max
    stats = [_time_range(file, g) for g in range(file.num_row_groups)]
    marked = "is_newest" in file.schema_arrow.names and all(r is not None and r[1] < hi for r in stats)
    offsets = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
    keys, times, rows, rows_read = [], [], [], 0
    for g, bounds in enumerate(stats):
        if bounds is not None and (bounds[1] < lo or bounds[0] >= hi):
            continue
        part = file.read_row_group(g, columns=["event_timestamp", "is_newest" if marked else key])
        t = _times_ns(part.column("event_timestamp"))
        inside = (t >= lo) & (t < hi)
        rows_read += int(inside.sum())
        if marked:
            inside &= part.column("is_newest").to_numpy(zero_copy_only=False).astype(bool)
        inside = np.flatnonzero(inside)
        rows.append(offsets[g] + inside)
        if not marked:
            keys.extend(part.column(key).take(pa.array(inside)).chunks)
            times.append(t[inside])
    chosen = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if not len(chosen):
        return LatestRows(file.schema_arrow.empty_table(), rows_read)
    if not marked:
        chosen = _newest_per_key(pa.concat_arrays(keys), np.concatenate(times), chosen)
    return LatestRows(_take_rows(file, chosen, offsets), rows_read)


def _newest_per_key(keys: pa.Array, times: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Of rows (with their keys and times), each key's newest; among equal times the row written last."""
    codes = pc.dictionary_encode(keys).indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((rows, times))
    newest = np.full(codes.max() + 1, -1, np.int64)
    np.maximum.at(newest, codes[order], np.arange(len(order)))
    return np.sort(rows[order[newest]])


def _take_rows(file: pq.ParquetFile, rows: np.ndarray, offsets: np.ndarray) -> pa.Table:
    """The rows (global row numbers, sorted) of a Parquet file, read one row group at a time."""
    parts = []
    for g in np.unique(np.searchsorted(offsets, rows, side="right") - 1):
        local = rows[(rows >= offsets[g]) & (rows < offsets[g + 1])] - offsets[g]
        parts.append(file.read_row_group(int(g)).take(pa.array(local)))
    return pa.concat_tables(parts).combine_chunks()


def _time_range(file: pq.ParquetFile, group: int) -> tuple[int, int] | None:
    """A row group's (min, max) event time in ns, from its statistics (None: unknown)."""
    column = file.schema_arrow.get_field_index("event_timestamp")
    stats = file.metadata.row_group(group).column(column).statistics
    if stats is None or not stats.has_min_max:
        return None
    return _utc(stats.min).value - 1_000, _utc(stats.max).value + 1_000  # statistics may come back in whole µs


def _oldest_time(path: Path) -> pd.Timestamp | None:
    """The oldest event time in a table, from its row groups' statistics (a bound at most 1 µs early,
    a fine window start), else read (reading the column was a tenth of a 1 M-event shop's first run)."""
    file = pq.ParquetFile(path)
    ranges = [_time_range(file, g) for g in range(file.num_row_groups)]
    if ranges and all(r is not None for r in ranges):
        return pd.Timestamp(min(r[0] for r in ranges), tz="UTC")
    times = pq.read_table(path, columns=["event_timestamp"]).column(0)
    return None if not len(times) or times.null_count == len(times) else _utc(pc.min(times).as_py())


def _times_ns(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return column.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)


def _row_times(rows: pa.Table) -> np.ndarray:
    return _times_ns(rows.column("event_timestamp")) if rows.num_rows else np.zeros(0, np.int64)


def _join_key(view: FeatureView) -> str:
    (column,) = view.entity_columns  # every ShopRec view has one string join key
    return column.name


def push_lock_bucket(user_id: str) -> int:
    """The push lock bucket of a user: their pushes and the materialization of their row share it."""
    return zlib.crc32(user_id.encode()) % PUSH_LOCK_BUCKETS


@contextmanager
def push_lock(settings: Settings, store: FeatureStore, bucket: int):
    """Serialise the online writes of one bucket of users: between the service's pushes (on
    every host, with Redis) and materialization. A flock on the host for SQLite, a Redis lock
    for Redis; ``PushLockTimeout`` when it stays taken (its holder died: it expires)."""
    if settings.online_store.type != "redis":
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


@dataclass(frozen=True)
class ItemStateChanges:
    """The items whose catalog state changed since it was last pushed, as the next push writes them."""

    rows: pd.DataFrame  # each changed item's newest item_stats row, stamped as its push
    newest: dict[str, int]  # item_id -> that row's own event time (ns)
    state: pd.DataFrame  # ``ITEM_STATE_FILE`` once they are pushed


def item_state_changes(settings: Settings) -> ItemStateChanges:
    """What ``push_item_state_changes`` writes: see there."""
    latest = _latest_item_rows(settings)
    state_path = offline_dir(settings) / ITEM_STATE_FILE
    kept = ["item_id", *ITEM_STATE_COLUMNS, "event_timestamp"]
    pushed = pd.read_parquet(state_path) if state_path.exists() else latest[kept].iloc[:0]
    merged = latest.merge(pushed, on="item_id", how="left", suffixes=("", "_pushed"), indicator=True)
    changed = (merged["_merge"] == "left_only").to_numpy()
    for column in ITEM_STATE_COLUMNS:
        now, before = merged[column].astype(object), merged[f"{column}_pushed"].astype(object)
        changed |= ~((now == before) | (now.isna() & before.isna())).to_numpy(dtype=bool)
    rows = merged[changed]
    previous = pd.to_datetime(rows["event_timestamp_pushed"], utc=True)
    newest = rows["event_timestamp"].where(previous.isna() | (rows["event_timestamp"] > previous), previous)
    own_times = dict(zip(rows["item_id"].tolist(), pd.DatetimeIndex(rows["event_timestamp"]).asi8.tolist()))
    rows = rows.assign(event_timestamp=newest + ONE_MICROSECOND)[list(latest.columns)].reset_index(drop=True)
    state = pd.concat([pushed[~pushed["item_id"].isin(rows["item_id"])], rows[kept]], ignore_index=True)
    return ItemStateChanges(rows, own_times, state)


def push_item_state_changes(settings: Settings, store: FeatureStore | None = None,
                            changes: ItemStateChanges | None = None, written: frozenset[str] = frozenset()) -> int:
    """Write the items whose catalog state (availability, price) changed to the online store.

    Materialization alone cannot carry such a change: the item's rows keep their event
    times, an incremental run never reads them again, and Redis keeps a row only if it is
    newer than the stored one. So the item's latest ``item_stats`` row (which carries the
    current catalog state) is written directly, stamped just after both that row and the
    item's previous push; what was pushed is kept in ``ITEM_STATE_FILE`` to find the next
    changes (the first run pushes every item). Nothing changed: nothing is written, so a
    re-run leaves the online store as it was. ``written``: items ``materialize`` has just
    written this very row for, so stamped (``_stamp_item_pushes``). Returns how many items'
    state was pushed.
    """
    changes = changes if changes is not None else item_state_changes(settings)
    if not len(changes.rows):
        return 0
    rest = changes.rows[~changes.rows["item_id"].isin(written)]
    if len(rest):
        store = store or feature_store(settings)
        table = pa.Table.from_pandas(rest.reset_index(drop=True), preserve_index=False)
        _write_rows(store, store.get_feature_view("item_stats"), table, _row_times(table))
    write_table(changes.state, offline_dir(settings) / ITEM_STATE_FILE)
    return int(len(changes.rows))


def _stamp_item_pushes(rows: pa.Table, stamps: np.ndarray, changes: ItemStateChanges) -> tuple[np.ndarray, set[str]]:
    """Item rows about to be materialized, stamped as their state push where a row is the very
    row the push writes (the item's newest): that push is then not written again (on the first
    run it rewrote every item, a fifth of a full materialization at 100,000 items)."""
    if not changes.newest:
        return stamps, set()
    push = dict(zip(changes.rows["item_id"].tolist(), pd.DatetimeIndex(changes.rows["event_timestamp"]).asi8.tolist()))
    out, merged = stamps.copy(), set()
    for k, (item, stamp) in enumerate(zip(rows.column("item_id").to_pylist(), stamps.tolist())):
        if changes.newest.get(item) == stamp:
            out[k] = push[item]
            merged.add(item)
    return out, merged


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
    write_table(with_catalog_state(pd.read_parquet(path), items, settings), path,
                time_unit=offline_engine.time_unit(settings))
    return push_item_state_changes(settings, store)


def _latest_item_rows(settings: Settings) -> pd.DataFrame:
    """The newest ``item_stats`` row of each item: the current catalog state with the latest counts."""
    frame = latest_rows(table_path(settings, "item_stats"), "item_id").rows.to_pandas()
    # nanoseconds whatever the table's unit (Spark's tables: microseconds): the pushes compare them as ns
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
    return frame.sort_values("item_id", kind="stable").reset_index(drop=True)


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
    # floored to microseconds, the offline store's resolution (an earlier "as of" never sees later rows)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).dt.floor("us")
    for key in ("user_id", "item_id"):
        if key in frame:
            frame[key] = frame[key].astype("string")  # the tables' id type: no dtype-mismatch join
    result = store.get_historical_features(entity_df=frame, features=features).to_df()
    # The offline store drops entity rows older than every feature row: merge back so each row is returned
    keys = list(entity_df.columns)
    result["event_timestamp"] = pd.to_datetime(result["event_timestamp"], utc=True)
    return frame.merge(result.drop_duplicates(keys), on=keys, how="left")


def rows_as_of(settings: Settings, name: str, key: str, keys: pa.Array, as_of: pd.Timestamp) -> pa.Table:
    """Each of ``keys``' (column ``key``) newest row of table ``name`` with ``event_timestamp <= as_of``, in ``keys``' order
    (keys without one are absent): ``training_set``'s answer when every entity row is at ``as_of``,
    compared as there at the offline store's resolution (``as_of`` floored to microseconds).

    Read with pyarrow a row group at a time (``latest_rows``), whatever the engine: Feast's
    DuckDB join keeps every row before the time, lists included, for its window (the
    38,090 users of a 1 M-event shop: 1.4 GB peak, against 0.9 GB here, process included;
    the 10 M-event training set went from 9.7 GB to 2.7 GB); this read keeps the key and
    time columns and the chosen rows. A test checks it equals ``training_set`` row for row."""
    path = table_path(settings, name)
    if not path.exists():
        raise FileNotFoundError(f"feature table {name} not built yet ({path}); run `shoprec features build`")
    rows = latest_rows(path, key, end=_utc(as_of).floor("us") + ONE_MICROSECOND).rows
    position = pc.index_in(rows.column(key), value_set=keys)
    rows = rows.append_column("_position", position).filter(pc.is_valid(position))
    return rows.sort_by("_position").drop_columns(["_position"])
