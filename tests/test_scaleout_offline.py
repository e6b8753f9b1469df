"""The offline engine behind ``offline_store.engine``: the same shop on DuckDB and on Spark.

The feature tables' SQL (``features.table_sql``) is checked row for row against the default
build's pandas/numpy tables on DuckDB (fast, no JVM). Then one shop goes through the
features steps (build, apply, materialize) once with the default engine and once with Spark
in local mode (a real JVM, Feast's Spark offline store), and both homes must hold the same
online rows (every row of the SQLite online store) and give the same point-in-time training set.
"""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from entrypoints import steps
from shoprec import lake
from shoprec.config import load_settings
from shoprec.features import store as feast_store
from shoprec.features import table_sql, tables
from shoprec.features.offline_engine import spark_session
from simulator.shop import generate

SEQ_LEN = 5
END = pd.Timestamp("2026-03-01", tz="UTC")
USER_REFS = ["user_recent_items:item_ids", "user_recent_items:event_types", "user_recent_items:timestamps"]
ITEM_REFS = [f"item_stats:{c}" for c in ("popularity_1d", "popularity_7d", "popularity_30d", "add_to_cart_rate",
                                          "purchase_rate", "price", "available")]


def shop_batch(n_events: int = 6_000):
    """A simulated shop over 40 days, with ties: some users' events share a timestamp."""
    batch = generate(n_events, seed=3, start="2026-01-10", days=40)
    events = batch.events.copy()
    twins = events.iloc[::50].copy()
    twins["item_id"] = np.roll(twins["item_id"].to_numpy(), 1)  # same user and time, another item
    events = pd.concat([events, twins], ignore_index=True).sort_values("timestamp", kind="stable", ignore_index=True)
    return type(batch).from_frames(events, batch.items)


def engine_settings(home, engine: str):
    return load_settings(home=home, features={"sequence_length": SEQ_LEN}, offline_store={"engine": engine})


# --- the SQL, on DuckDB, against the fast build ------------------------------------------------
def test_table_sql_on_duckdb_gives_the_default_builds_rows(tmp_path):
    settings = engine_settings(tmp_path / "home", "duckdb")
    lake.write_batch(settings.lake_dir, shop_batch())
    events = tables.all_events(settings)
    assert events.duplicated(["user_id", "timestamp"]).any()  # ties inside a user's history are exercised
    staged = table_sql.stage_events(events, tmp_path / "events.parquet")

    snapshots = table_sql.run_on_duckdb(table_sql.sequence_snapshots_sql(SEQ_LEN), staged).to_pandas()
    expected = pd.concat([b.to_pandas() for b in tables.snapshot_batches(events, SEQ_LEN, batch_rows=997)], ignore_index=True)
    assert len(snapshots) == len(expected) > len(events["user_id"].unique())
    for column in ("user_id", "event_timestamp", "is_newest"):
        assert snapshots[column].tolist() == expected[column].tolist(), column
    for column in ("item_ids", "event_types", "timestamps"):
        assert [list(v) for v in snapshots[column]] == [list(v) for v in expected[column]], column

    daily = table_sql.run_on_duckdb(table_sql.item_daily_stats_sql(tables.WINDOWS_DAYS), staged).to_pandas()
    fast = tables.item_daily_stats(events).sort_values(["item_id", "event_timestamp"], ignore_index=True)
    assert fast["popularity_30d"].gt(fast["popularity_7d"]).any()  # the windows differ on this shop
    pd.testing.assert_frame_equal(daily[list(fast.columns)], fast, check_dtype=False)


# --- the whole features run, on both engines ---------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{engine: settings} of one shop built, applied and materialized by the features steps."""
    batch = shop_batch(8_000)
    out = {}
    for engine in ("duckdb", "spark"):
        settings = engine_settings(tmp_path_factory.mktemp(f"offline-{engine}"), engine)
        lake.write_batch(settings.lake_dir, batch)
        if out:  # the item texts' embeddings (engine-independent, a minute of CPU) encoded once
            shutil.copytree(out["duckdb"].cache_dir, settings.cache_dir)
        steps.build_features(settings)
        steps.feast_apply(settings)
        first = pd.Timestamp(batch.events["timestamp"].min()).to_pydatetime()
        steps.materialize(settings, steps.Ingested(["b"], len(batch.events), first), END.to_pydatetime())
        out[engine] = settings
    yield out
    spark_session(out["spark"]).stop()
    for settings in out.values():
        shutil.rmtree(settings.home, ignore_errors=True)


def online_rows(settings) -> dict[str, list[tuple]]:
    """Every row of every view's table in the SQLite online store (not the write time)."""
    with sqlite3.connect(settings.feast_dir / "online_store.db") as con:
        names = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        return {name: sorted(con.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "{name}"').fetchall())
                for name in names}


@pytest.mark.scaleout
def test_spark_engine_writes_the_same_online_rows(built):
    duck, spark = online_rows(built["duckdb"]), online_rows(built["spark"])
    assert sorted(duck) == sorted(spark) and len(duck) == 2
    for name in duck:
        assert len(duck[name]) > 100, name
        assert spark[name] == duck[name], name
    assert feast_store.feature_store(built["spark"]).config.offline_store.type == "spark"


@pytest.mark.scaleout
def test_spark_engine_builds_the_same_tables(built):
    for name in tables.TABLES:
        duck, spark = (pq.read_table(tables.table_path(built[engine], name)) for engine in ("duckdb", "spark"))
        # each home's tables come from its engine: Spark's are written in microseconds
        assert (duck.schema.field("event_timestamp").type.unit, spark.schema.field("event_timestamp").type.unit) == ("ns", "us")
        assert spark.num_rows == duck.num_rows > 100
        assert in_microseconds(spark).equals(in_microseconds(duck)), name  # same rows, same order


def in_microseconds(table: pa.Table) -> pa.Table:
    schema = pa.schema([f.with_type(pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f for f in table.schema])
    return table.replace_schema_metadata(None).cast(schema)


@pytest.mark.scaleout
def test_spark_engine_gives_the_same_point_in_time_training_set(built):
    events = tables.all_events(built["duckdb"])
    sample = events.iloc[::7]
    users = pd.DataFrame({"user_id": sample["user_id"].to_numpy(),
                          "event_timestamp": sample["timestamp"].to_numpy() + pd.Timedelta(minutes=1)})
    items = pd.DataFrame({"item_id": sample["item_id"].to_numpy(), "event_timestamp": sample["timestamp"].to_numpy()})
    for entity_df, refs in ((users, USER_REFS), (items, ITEM_REFS)):
        duck = feast_store.training_set(entity_df, built["duckdb"], refs)
        spark = feast_store.training_set(entity_df, built["spark"], refs)
        assert len(duck) == len(entity_df) and duck[refs[0].split(":")[1]].notna().mean() > 0.9
        pd.testing.assert_frame_equal(normalized(spark), normalized(duck))


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """A training set sorted by its entity rows, list features as lists."""
    keys = [c for c in ("user_id", "item_id", "event_timestamp") if c in frame]
    out = frame.sort_values(keys, ignore_index=True)
    for column in out.columns:
        if out[column].map(lambda v: isinstance(v, np.ndarray)).any():
            out[column] = out[column].map(lambda v: list(v) if isinstance(v, np.ndarray) else v)
    return out
