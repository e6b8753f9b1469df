"""Feature tables: the lake (plus the real-time event log) -> Parquet tables Feast reads.

Every table is point-in-time: each row carries ``event_timestamp`` = the time of the
newest event it depends on, so a training example at time t only ever sees rows
built from events at or before t (Feast's historical join picks the latest row <= t).

- user_recent_items: a snapshot of the user's sequence after each distinct event time,
  ``sequence.recent_items_over_time`` (the rule of ``recent_items``, vectorised and
  tested against it): the batch table and the push path apply the very same rule.
- item_stats: per item and active day, popularity over 1/7/30 days and 30-day
  cart/purchase shares, with the catalog's price and availability (the service reads
  availability and price online; its fallback rankings read the daily counts offline).

Rows that do not depend on events (items never interacted with) are stamped
``static_time`` (the earliest valid event time) so every training time sees them.
The build also encodes new item texts into the MiniLM cache that training and the
service's new-item path read (``text_embedding.EmbeddingCache``).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoprec import event_log, lake
from shoprec.config import Settings
from shoprec.durable import write_atomically
from shoprec.features import offline_engine
from shoprec.features.sequence import recent_items_over_time
from shoprec.ledger import drop_erased
from shoprec.schema import conform_items, empty_events
from shoprec.text_embedding import embed_items

TABLES = ("user_recent_items", "item_stats")
WINDOWS_DAYS = (1, 7, 30)


def offline_dir(settings: Settings) -> Path:
    return settings.feast_dir / "offline"


def event_log_dir(settings: Settings) -> Path:
    """Events pushed in real time (``shoprec.event_log``: read with ``event_log.read_events``)."""
    return offline_dir(settings) / "event_log"


def table_path(settings: Settings, name: str) -> Path:
    return offline_dir(settings) / f"{name}.parquet"


def static_time(settings: Settings) -> pd.Timestamp:
    return pd.Timestamp(settings.validation.min_timestamp).tz_convert("UTC")


def all_events(settings: Settings) -> pd.DataFrame:
    """Lake events plus the real-time event log, de-duplicated, in time order, without the
    events of erased users (``shoprec.ledger``): a late or re-run batch never brings one back."""
    frames = [lake.read_events(settings.lake_dir), event_log.read_events(event_log_dir(settings))]
    frames = [drop_erased(f, settings) for f in frames]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_events()
    if len(frames) == 1:  # each source comes de-duplicated and in this order: doing it again was a tenth of a 10 M-event build
        return frames[0].reset_index(drop=True)
    events = pd.concat(frames, ignore_index=True)
    events = events.drop_duplicates(subset=["user_id", "item_id", "event_type", "timestamp"])
    return events.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class BuiltTables:
    """What ``build_tables`` built: the input it read and the rows of each table."""

    events: int
    users: int
    items: int
    rows: dict[str, int]  # table name -> rows
    newly_encoded_texts: int
    offline_dir: str

    def to_dict(self) -> dict:
        return asdict(self)


# --- user_recent_items ------------------------------------------------------------
def sequence_snapshots(events: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """One row per (user, distinct event time): the user's sequence as of that time."""
    snapshots = recent_items_over_time(events, max_len)
    snapshots["user_id"] = snapshots["user_id"].astype("string")
    return snapshots.sort_values(["user_id", "event_timestamp"], kind="stable").reset_index(drop=True)


SNAPSHOT_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_ids", pa.list_(pa.string())),
    ("event_types", pa.list_(pa.string())),
    ("timestamps", pa.list_(pa.timestamp("us", tz="UTC"))),
    ("event_timestamp", pa.timestamp("ns", tz="UTC")),
    ("is_newest", pa.bool_()),  # the user's newest row: what a materialization up to now writes online
])
SNAPSHOT_BATCH_ROWS = 262_144  # snapshot rows built and written at a time: bounded memory at 10 M events
# The file holds the older rows, then each user's newest row, each part in time order: a
# materialization up to now decodes only the newest rows' row groups (at 1 M events decoding
# the whole table was 1.2 s of CPU), an hourly one only the last of them.
SNAPSHOT_ROW_GROUP_ROWS = 131_072


def snapshot_batches(events: pd.DataFrame, max_len: int, batch_rows: int = SNAPSHOT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """``sequence_snapshots`` as Arrow record batches (older rows, then each user's newest row;
    each part in event-time order), built in bulk.

    The same windows as ``recent_items_over_time`` (stable order by user and time, every
    event at t in, the last ``max_len``), but each batch's lists are one Arrow ``take`` over
    the ordered events instead of a Python list per row: at 10 M events that loop held
    10 M Python lists. A test checks the rows equal ``sequence_snapshots``."""
    if not len(events):
        return
    users, _ = pd.factorize(events["user_id"], sort=True)  # codes in user-id order
    times = pd.DatetimeIndex(events["timestamp"]).tz_convert("UTC").asi8
    order = np.lexsort((times, users))  # stable: ties keep the input order, as recent_items' stable sort
    u, t = users[order], times[order]
    n = len(order)
    first = np.r_[True, u[1:] != u[:-1]]
    position = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
    ends = np.flatnonzero(np.r_[(u[1:] != u[:-1]) | (t[1:] != t[:-1]), True])
    newest = np.r_[u[ends[:-1]] != u[ends[:-1] + 1], True]
    ends = ends[np.lexsort((t[ends], newest))]
    starts = ends - np.minimum(position[ends], max_len - 1)
    taken = pa.array(order)
    columns = {
        "item_ids": pa.array(events["item_id"].astype(str).to_numpy(object), pa.string()).take(taken),
        "event_types": pa.array(events["event_type"].astype(str).to_numpy(object), pa.string()).take(taken),
        "timestamps": pa.array(t, pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("us", tz="UTC"), safe=False),
    }
    user_ids = pa.array(events["user_id"].astype(str).to_numpy(object), pa.string()).take(taken)
    for lo in range(0, len(ends), batch_rows):
        first_row, last_row = starts[lo:lo + batch_rows], ends[lo:lo + batch_rows]
        lengths = last_row + 1 - first_row
        offsets = np.r_[0, np.cumsum(lengths)]
        flat = pa.array(np.repeat(first_row - offsets[:-1], lengths) + np.arange(offsets[-1]))
        offsets = pa.array(offsets.astype(np.int32))
        lists = [pa.ListArray.from_arrays(offsets, columns[name].take(flat), type=SNAPSHOT_SCHEMA.field(name).type)
                 for name in ("item_ids", "event_types", "timestamps")]
        stamps = pa.array(t[last_row], pa.timestamp("ns", tz="UTC"))
        is_newest = pa.array((last_row == n - 1) | (u[np.minimum(last_row + 1, n - 1)] != u[last_row]))
        yield pa.RecordBatch.from_arrays([user_ids.take(pa.array(last_row)), *lists, stamps, is_newest], schema=SNAPSHOT_SCHEMA)


def write_sequence_snapshots(events: pd.DataFrame, max_len: int, path: Path, read_at: pd.Timestamp | None = None) -> int:
    """The ``user_recent_items`` table, written batch by batch (``snapshot_batches``); returns its rows."""
    return write_snapshot_batches(snapshot_batches(events, max_len), path, read_at)


def write_snapshot_batches(batches: Iterator[pa.RecordBatch], path: Path, read_at: pd.Timestamp | None = None,
                           time_unit: str = "ns") -> int:
    """Snapshot rows (``SNAPSHOT_SCHEMA``'s columns, in the order to keep) as the ``user_recent_items``
    table, times in ``time_unit``; returns its rows."""
    metadata = {READ_AT_KEY: read_at.isoformat().encode()} if read_at is not None else None
    schema = _in_unit(SNAPSHOT_SCHEMA, time_unit).with_metadata(metadata)
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in batches:
                writer.write_table(pa.Table.from_batches([batch]).cast(schema), row_group_size=SNAPSHOT_ROW_GROUP_ROWS)
                rows += batch.num_rows

    write_atomically(path, write)
    return rows


def _in_unit(schema: pa.Schema, unit: str) -> pa.Schema:
    """``schema`` with its top-level timestamp columns in ``unit``."""
    return pa.schema([field.with_type(pa.timestamp(unit, tz=field.type.tz)) if pa.types.is_timestamp(field.type) else field
                      for field in schema], metadata=schema.metadata)


# --- item_stats ------------------------------------------------------------------
def item_stats(events: pd.DataFrame, items: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per item and active day: popularity windows and 30-day cart/purchase shares, with the catalog state."""
    return with_catalog_state(item_daily_stats(events), items, settings)


def item_daily_stats(events: pd.DataFrame) -> pd.DataFrame:
    """``item_stats`` before the catalog state (``table_sql.item_daily_stats_sql`` for Spark)."""
    kinds = events["event_type"].astype(str)
    # counts as columns summed by the group-by: per-group lambdas took 35 % of a 200k-event build
    ev = pd.DataFrame({"item_id": events["item_id"], "day": events["timestamp"].dt.floor("D"), "n": 1,
                       "carts": (kinds == "add_to_cart").to_numpy(np.int64),
                       "purchases": (kinds == "purchase").to_numpy(np.int64), "timestamp": events["timestamp"]})
    daily = ev.groupby(["item_id", "day"], observed=True, sort=True).agg(
        n=("n", "sum"), carts=("carts", "sum"), purchases=("purchases", "sum"), event_timestamp=("timestamp", "max"),
    )
    daily = daily.reset_index()
    rolled = {}
    for days in WINDOWS_DAYS:
        window = daily.set_index("day").groupby("item_id", observed=True, sort=True)[["n", "carts", "purchases"]].rolling(f"{days}D").sum()
        rolled[days] = window.reset_index(drop=True)
    out = daily[["item_id", "event_timestamp"]].reset_index(drop=True)
    for days in WINDOWS_DAYS:
        out[f"popularity_{days}d"] = rolled[days]["n"].astype("int64").to_numpy()
    n30 = rolled[30]["n"].to_numpy()
    out["add_to_cart_rate"] = rolled[30]["carts"].to_numpy() / np.maximum(n30, 1)
    out["purchase_rate"] = rolled[30]["purchases"].to_numpy() / np.maximum(n30, 1)
    return out


def with_catalog_state(stats: pd.DataFrame, items: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """``stats`` (item_stats rows) with the catalog state of ``items`` (price, availability) on
    every row of those items; other items' rows keep theirs. An item without a row gets one,
    stamped ``static_time``, with zero counts. The build and an ingested catalog batch
    (``store.push_catalog_state``) apply this same rule."""
    never_seen = items.loc[~items["item_id"].isin(stats["item_id"]), ["item_id"]].assign(event_timestamp=static_time(settings))
    out = pd.concat([stats, never_seen], ignore_index=True)
    catalog = items.drop_duplicates("item_id", keep="last").set_index("item_id")
    listed = out["item_id"].isin(catalog.index)
    before = {column: out[column] if column in out else pd.Series(np.nan, index=out.index) for column in ("price", "available")}
    out["price"] = out["item_id"].map(catalog["price"]).astype("float64").where(listed, before["price"].astype("float64"))
    available = out["item_id"].map(catalog["available"]).astype(object).where(listed, before["available"].astype(object))
    out["available"] = available.astype("boolean").fillna(True).astype(bool)
    for col in [c for c in out.columns if c.startswith("popularity_")]:
        out[col] = out[col].fillna(0).astype("int64")
    out[["add_to_cart_rate", "purchase_rate"]] = out[["add_to_cart_rate", "purchase_rate"]].fillna(0.0)
    cols = ["item_id", *[f"popularity_{d}d" for d in WINDOWS_DAYS], "add_to_cart_rate", "purchase_rate", "price", "available", "event_timestamp"]
    return with_newest_marked(out[cols].sort_values(["item_id", "event_timestamp"], kind="stable"), "item_id")


def with_newest_marked(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """``frame`` (sorted by key and time) with ``is_newest`` on each key's newest row, ordered as
    ``snapshot_batches`` orders its rows: older rows, then the newest, each part in time order
    (``store.latest_rows`` then reads only the newest rows' row groups)."""
    marked = frame.assign(is_newest=~frame.duplicated(key, keep="last").to_numpy())
    return marked.sort_values(["is_newest", "event_timestamp"], kind="stable").reset_index(drop=True)


# --- item texts ----------------------------------------------------------------------
def encode_item_texts(items: pd.DataFrame, settings: Settings, progress: bool = False) -> int:
    """Encode the texts of catalog items the cache does not hold yet; returns how many were new.

    The cache (by text hash) is what training (``training.pipeline``) and the service's
    new-item path read: encoding here, in the hourly features run, keeps MiniLM off their path."""
    _, encoded = embed_items(items, settings.cache_dir / "text_embeddings.parquet", progress=progress)
    return encoded


# --- writing ------------------------------------------------------------------------
READ_AT_KEY = b"shoprec_read_at"  # when the build started reading its input (Parquet metadata)


def write_table(frame: pd.DataFrame, path: Path, read_at: pd.Timestamp | None = None, time_unit: str | None = None) -> None:
    """Durable Parquet write (``shoprec.durable``): Feast never reads half a table. Row groups of
    ``SNAPSHOT_ROW_GROUP_ROWS``: what ``store.latest_rows`` can skip by their time statistics.
    ``time_unit``: the timestamp columns' unit (None: the frame's)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if time_unit is not None:
        table = table.cast(_in_unit(table.schema, time_unit))
    if read_at is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), READ_AT_KEY: read_at.isoformat().encode()})
    write_atomically(path, lambda tmp: pq.write_table(table, tmp, row_group_size=SNAPSHOT_ROW_GROUP_ROWS))


def table_read_at(path: Path) -> pd.Timestamp | None:
    """When the build of the table at ``path`` started reading the lake and the event log."""
    value = (pq.read_schema(path).metadata or {}).get(READ_AT_KEY)
    return pd.Timestamp(value.decode()) if value else None


def _build_on_spark(settings: Settings, events: pd.DataFrame, items: pd.DataFrame,
                    read_at: pd.Timestamp) -> tuple[pd.DataFrame, int]:
    """The tables' SQL on Spark (``offline_engine.build_on_spark``), written as the default build
    writes them, in microseconds; returns (item_stats rows, user_recent_items rows)."""
    staging = offline_dir(settings) / "spark-staging"
    unit = offline_engine.time_unit(settings)
    try:
        built = offline_engine.build_on_spark(settings, events, staging, WINDOWS_DAYS)
        snapshots = write_snapshot_batches(offline_engine.batches_of(built.snapshot_files, SNAPSHOT_BATCH_ROWS),
                                           table_path(settings, "user_recent_items"), read_at, unit)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stats = with_catalog_state(built.item_daily, items, settings)
    write_table(stats, table_path(settings, "item_stats"), read_at, unit)
    return stats, snapshots


def build_tables(settings: Settings, progress: bool = False, encode_texts: bool = True) -> BuiltTables:
    """Build the feature tables (``TABLES``) from the lake and the event log.

    ``encode_texts=False`` skips the MiniLM cache of item texts (benchmarks of the tables)."""
    read_at = pd.Timestamp.now(tz="UTC")  # every push acknowledged before this is in the input
    events = all_events(settings)
    items = lake.read_items(settings.lake_dir)
    known_items = set(items["item_id"]) | set(events["item_id"])
    if len(items) < len(known_items):  # items seen in events but missing from the catalog still get stats
        missing = pd.DataFrame({"item_id": sorted(known_items - set(items["item_id"]))})
        items = pd.concat([items, conform_items(missing)], ignore_index=True)
    encoded = encode_item_texts(items, settings, progress=progress) if encode_texts else 0
    if offline_engine.is_spark(settings):
        stats, snapshots = _build_on_spark(settings, events, items, read_at)
    else:
        stats = item_stats(events, items, settings)
        snapshots = write_sequence_snapshots(events, settings.features.sequence_length,
                                             table_path(settings, "user_recent_items"), read_at)
        write_table(stats, table_path(settings, "item_stats"), read_at)
    return BuiltTables(
        events=int(len(events)),
        users=int(events["user_id"].nunique()),
        items=int(len(items)),
        rows={"user_recent_items": snapshots, "item_stats": int(len(stats))},
        newly_encoded_texts=int(encoded),
        offline_dir=str(offline_dir(settings)),
    )
