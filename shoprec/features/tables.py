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

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoprec import lake
from shoprec.config import Settings
from shoprec.durable import write_parquet_atomically
from shoprec.features.sequence import recent_items_over_time
from shoprec.ledger import drop_erased
from shoprec.schema import conform_items, empty_events
from shoprec.text_embedding import embed_items

TABLES = ("user_recent_items", "item_stats")
WINDOWS_DAYS = (1, 7, 30)


def offline_dir(settings: Settings) -> Path:
    return settings.feast_dir / "offline"


def event_log_dir(settings: Settings) -> Path:
    """Events pushed in real time, laid out like the lake (read with ``lake.read_events``)."""
    return offline_dir(settings) / "event_log"


def table_path(settings: Settings, name: str) -> Path:
    return offline_dir(settings) / f"{name}.parquet"


def static_time(settings: Settings) -> pd.Timestamp:
    return pd.Timestamp(settings.validation.min_timestamp).tz_convert("UTC")


def all_events(settings: Settings) -> pd.DataFrame:
    """Lake events plus the real-time event log, de-duplicated, in time order, without the
    events of erased users (``shoprec.ledger``): a late or re-run batch never brings one back."""
    frames = [lake.read_events(settings.lake_dir), lake.read_events(event_log_dir(settings))]
    frames = [drop_erased(f, settings) for f in frames]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_events()
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


# --- item_stats ------------------------------------------------------------------
def item_stats(events: pd.DataFrame, items: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per item and active day: popularity windows and 30-day cart/purchase shares."""
    ev = events.assign(day=events["timestamp"].dt.floor("D"))
    daily = ev.groupby(["item_id", "day"], observed=True).agg(
        n=("event_type", "size"),
        carts=("event_type", lambda s: int((s == "add_to_cart").sum())),
        purchases=("event_type", lambda s: int((s == "purchase").sum())),
        event_timestamp=("timestamp", "max"),
    )
    daily = daily.reset_index().sort_values(["item_id", "day"])
    rolled = {}
    for days in WINDOWS_DAYS:
        window = daily.set_index("day").groupby("item_id", observed=True)[["n", "carts", "purchases"]].rolling(f"{days}D").sum()
        rolled[days] = window.reset_index(drop=True)
    out = daily[["item_id", "event_timestamp"]].reset_index(drop=True)
    for days in WINDOWS_DAYS:
        out[f"popularity_{days}d"] = rolled[days]["n"].astype("int64").to_numpy()
    n30 = rolled[30]["n"].to_numpy()
    out["add_to_cart_rate"] = rolled[30]["carts"].to_numpy() / np.maximum(n30, 1)
    out["purchase_rate"] = rolled[30]["purchases"].to_numpy() / np.maximum(n30, 1)
    return with_catalog_state(out, items, settings)


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
    return out[cols].sort_values(["item_id", "event_timestamp"]).reset_index(drop=True)


# --- item texts ----------------------------------------------------------------------
def encode_item_texts(items: pd.DataFrame, settings: Settings, progress: bool = False) -> int:
    """Encode the texts of catalog items the cache does not hold yet; returns how many were new.

    The cache (by text hash) is what training (``training.pipeline``) and the service's
    new-item path read: encoding here, in the hourly features run, keeps MiniLM off their path."""
    _, encoded = embed_items(items, settings.cache_dir / "text_embeddings.parquet", progress=progress)
    return encoded


# --- writing ------------------------------------------------------------------------
READ_AT_KEY = b"shoprec_read_at"  # when the build started reading its input (Parquet metadata)


def write_table(frame: pd.DataFrame, path: Path, read_at: pd.Timestamp | None = None) -> None:
    """Durable Parquet write (``shoprec.durable``): Feast never reads half a table."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if read_at is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), READ_AT_KEY: read_at.isoformat().encode()})
    write_parquet_atomically(table, path)


def table_read_at(path: Path) -> pd.Timestamp | None:
    """When the build of the table at ``path`` started reading the lake and the event log."""
    value = (pq.read_schema(path).metadata or {}).get(READ_AT_KEY)
    return pd.Timestamp(value.decode()) if value else None


def build_tables(settings: Settings, progress: bool = False) -> BuiltTables:
    """Build the feature tables (``TABLES``) from the lake and the event log."""
    read_at = pd.Timestamp.now(tz="UTC")  # every push acknowledged before this is in the input
    events = all_events(settings)
    items = lake.read_items(settings.lake_dir)
    known_items = set(items["item_id"]) | set(events["item_id"])
    if len(items) < len(known_items):  # items seen in events but missing from the catalog still get stats
        missing = pd.DataFrame({"item_id": sorted(known_items - set(items["item_id"]))})
        items = pd.concat([items, conform_items(missing)], ignore_index=True)
    tables = {
        "user_recent_items": sequence_snapshots(events, settings.features.sequence_length),
        "item_stats": item_stats(events, items, settings),
    }
    encoded = encode_item_texts(items, settings, progress=progress)
    for name, frame in tables.items():
        write_table(frame, table_path(settings, name), read_at)
    return BuiltTables(
        events=int(len(events)),
        users=int(events["user_id"].nunique()),
        items=int(len(items)),
        rows={name: int(len(frame)) for name, frame in tables.items()},
        newly_encoded_texts=int(encoded),
        offline_dir=str(offline_dir(settings)),
    )
