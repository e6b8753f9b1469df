"""The feature tables as SQL: one text that DuckDB and Spark SQL both run.

The tables' definition for a distributed engine (``offline_store.engine: spark``,
``features.offline_engine``). The default build computes the same rows with pandas and
numpy (``tables.item_stats``, ``tables.snapshot_batches``, fast at 10 M events in one
process); tests run this SQL on DuckDB and on Spark and compare both, row for row, with
those fast forms. Only what both dialects accept is used: ``array_agg`` over a ROWS frame
(its lists keep the frame's order in both), RANGE frames of ``INTERVAL n DAYS`` over a
DATE, ``CAST(timestamp AS DATE)`` under a UTC session time zone.

The input is the view ``events`` with the columns of ``stage_events``: the events
``tables.all_events`` returns, ``seq`` their position (ties of one user's time keep it).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoprec.durable import write_atomically

EVENTS_VIEW = "events"
STAGED_SCHEMA = pa.schema([
    ("seq", pa.int64()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("event_type", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),  # Spark's resolution (it cannot read nanoseconds)
])
STAGED_ROW_GROUP_ROWS = 131_072  # a Spark task reads whole row groups: several per core at 1 M events


def sequence_snapshots_sql(max_len: int) -> str:
    """``user_recent_items``: one row per (user, distinct event time), the user's last ``max_len``
    events as of that time (every event at that time in: the last row at that time), ``is_newest``
    on the user's last row; one window order for all of it (Spark sorts once);
    ordered as ``tables.snapshot_batches`` writes them (older rows, then the newest, by time and user)."""
    return f"""
WITH windows AS (
  SELECT user_id, timestamp,
         array_agg(item_id) OVER recent AS item_ids,
         array_agg(event_type) OVER recent AS event_types,
         array_agg(timestamp) OVER recent AS timestamps,
         LEAD(timestamp) OVER history AS next_time
  FROM {EVENTS_VIEW}
  WINDOW history AS (PARTITION BY user_id ORDER BY timestamp, seq),
         recent AS (PARTITION BY user_id ORDER BY timestamp, seq ROWS BETWEEN {max_len - 1} PRECEDING AND CURRENT ROW)
)
SELECT user_id, item_ids, event_types, timestamps, timestamp AS event_timestamp, next_time IS NULL AS is_newest
FROM windows
WHERE next_time IS NULL OR next_time <> timestamp
ORDER BY is_newest, event_timestamp, user_id
"""


def item_daily_stats_sql(windows_days: tuple[int, ...]) -> str:
    """``item_stats`` before the catalog state: per item and active day (UTC), the events over the
    last 1/7/30 days (``popularity_<d>d``), the 30-day cart and purchase shares; stamped with the
    day's newest event. The catalog's price and availability are joined by ``tables.with_catalog_state``."""
    frames = {d: f"PARTITION BY item_id ORDER BY day RANGE BETWEEN INTERVAL {d - 1} DAYS PRECEDING AND CURRENT ROW"
              for d in windows_days}
    longest = max(windows_days)
    popularity = ",\n       ".join(f"SUM(n) OVER ({frames[d]}) AS popularity_{d}d" for d in windows_days)
    return f"""
WITH daily AS (
  SELECT item_id, CAST(timestamp AS DATE) AS day, COUNT(*) AS n,
         SUM(CASE WHEN event_type = 'add_to_cart' THEN 1 ELSE 0 END) AS carts,
         SUM(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS purchases,
         MAX(timestamp) AS event_timestamp
  FROM {EVENTS_VIEW}
  GROUP BY item_id, CAST(timestamp AS DATE)
)
SELECT item_id, event_timestamp,
       {popularity},
       CAST(SUM(carts) OVER ({frames[longest]}) AS DOUBLE) / GREATEST(SUM(n) OVER ({frames[longest]}), 1) AS add_to_cart_rate,
       CAST(SUM(purchases) OVER ({frames[longest]}) AS DOUBLE) / GREATEST(SUM(n) OVER ({frames[longest]}), 1) AS purchase_rate
FROM daily
ORDER BY item_id, event_timestamp
"""


def stage_events(events: pd.DataFrame, path: Path) -> Path:
    """``events`` (``tables.all_events``) as the Parquet file the SQL reads as ``events``."""
    times = pd.DatetimeIndex(events["timestamp"]).tz_convert("UTC").asi8 // 1_000
    table = pa.table({
        "seq": pa.array(np.arange(len(events), dtype=np.int64)),
        "user_id": pa.array(events["user_id"].astype(str).to_numpy(object), pa.string()),
        "item_id": pa.array(events["item_id"].astype(str).to_numpy(object), pa.string()),
        "event_type": pa.array(events["event_type"].astype(str).to_numpy(object), pa.string()),
        "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
    }, schema=STAGED_SCHEMA)
    write_atomically(path, lambda tmp: pq.write_table(table, tmp, row_group_size=STAGED_ROW_GROUP_ROWS))
    return path


def run_on_duckdb(sql: str, staged: Path, threads: int = 2) -> pa.Table:
    """``sql`` run by DuckDB over the staged events (UTC, as the Spark session)."""
    with duckdb.connect(config={"threads": threads}) as con:
        con.execute("SET TimeZone = 'UTC'")
        literal = str(staged).replace("'", "''")
        con.execute(f"CREATE VIEW {EVENTS_VIEW} AS SELECT * FROM read_parquet('{literal}')")
        return con.execute(sql).to_arrow_table()
