"""The offline engine of the settings (``offline_store.engine``): DuckDB in this process, or Spark.

With ``spark`` the feature tables' SQL (``table_sql``) runs on a Spark session (local mode
by default, ``offline_store.spark_master``), Feast's Spark offline store answers the
point-in-time training sets and the reads of materialization (each entity's newest row in
a window: ``pull_latest_from_table_or_query``, the query of Feast's Spark compute engine),
and the views' batch sources are ``SparkSource``s over the same Parquet tables. The online
writes stay ShopRec's (``store._materialize_view``: push locks, catalog state). Why Spark and
not Ray: docs/scaling.md, "Offline engine".

pyspark is imported only here and only for the ``spark`` engine: the default needs no JVM.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FileSource

from shoprec.config import Settings
from shoprec.features import table_sql

TIME_FIELD = "event_timestamp"
ONE_MICROSECOND = pd.Timedelta(microseconds=1)


def is_spark(settings: Settings) -> bool:
    return settings.offline_store.engine == "spark"


def time_unit(settings: Settings) -> str:
    """The unit the feature tables' timestamps are written in: Spark cannot read nanoseconds."""
    return "us" if is_spark(settings) else "ns"


def spark_conf(settings: Settings) -> dict[str, str]:
    """The Spark session's configuration (Feast's ``spark_conf``; ``spark_session`` starts the same one)."""
    section = settings.offline_store
    conf = {
        "spark.master": section.spark_master,
        "spark.app.name": "shoprec-offline",
        "spark.driver.memory": section.spark_driver_memory,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.sql.session.timeZone": "UTC",  # table times are UTC; Feast's query literals are UTC
        "spark.sql.shuffle.partitions": str(section.spark_shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",  # toPandas / createDataFrame in bulk
        "spark.sql.catalogImplementation": "in-memory",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # not INT96: what pyarrow reads as UTC times  # no Hive metastore (Derby) in the working folder
        "spark.pyspark.python": sys.executable,
        "spark.ui.enabled": "false" if section.spark_ui_port is None else "true",
        "spark.ui.showConsoleProgress": "false",
    }
    if section.spark_ui_port is not None:
        conf["spark.ui.port"] = str(section.spark_ui_port)
    return conf


def feast_offline_store(settings: Settings) -> dict[str, Any]:
    """The ``offline_store`` entry of feature_store.yaml."""
    if is_spark(settings):
        return {"type": "spark", "spark_conf": spark_conf(settings)}
    # Feast's DuckDB offline store (feast[duckdb]) reads the same Parquet tables as the file
    # (dask) store: a point-in-time training set for 38,090 users took 12 s and 1.5 GB there,
    # against more than 10 minutes and 3.9 GB (unfinished) for the dask one (1 M-event shop)
    return {"type": "duckdb"}


def table_source(settings: Settings, name: str, path: Path):
    """The Feast batch source of the feature table ``name`` at ``path``, for the settings' engine."""
    if is_spark(settings):
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=name, path=str(path), file_format="parquet", timestamp_field=TIME_FIELD)
    return FileSource(name=name, path=str(path), timestamp_field=TIME_FIELD)


def spark_session(settings: Settings):
    """The process's Spark session with ``spark_conf`` (the one Feast's Spark store then finds active).

    A JVM holds one session: a second settings' static options (master, memory) do not apply."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is None:
        session = SparkSession.builder.config(conf=SparkConf().setAll(list(spark_conf(settings).items()))).getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
    return session


@dataclass(frozen=True)
class SparkTables:
    """The feature tables' rows as Spark computed them (``tables.build_tables`` adds the catalog state)."""

    snapshot_files: list[Path]  # user_recent_items as Spark wrote it, in order: read with ``batches_of``
    item_daily: pd.DataFrame  # item_stats before the catalog state (items x active days: small)


def build_on_spark(settings: Settings, events: pd.DataFrame, staging: Path, windows_days: tuple[int, ...]) -> SparkTables:
    """``table_sql``'s two queries on Spark over ``events`` staged as Parquet under ``staging``.

    Spark's executors write the snapshots (one list per row and event: the big table) as
    Parquet parts under ``staging``; the caller streams them into the default build's layout
    (one file, the row groups ``store.latest_rows`` skips) and removes ``staging``."""
    session = spark_session(settings)
    staged = table_sql.stage_events(events, staging / "events.parquet")
    parts = staging / "user_recent_items"
    try:
        session.read.parquet(str(staged)).createOrReplaceTempView(table_sql.EVENTS_VIEW)
        snapshots = session.sql(table_sql.sequence_snapshots_sql(settings.features.sequence_length))
        snapshots.write.mode("overwrite").parquet(str(parts))  # ordered: part files in the sort's range order
        daily = session.sql(table_sql.item_daily_stats_sql(windows_days)).toArrow().to_pandas()
    finally:
        session.catalog.dropTempView(table_sql.EVENTS_VIEW)
        staged.unlink(missing_ok=True)
    daily = daily.assign(event_timestamp=pd.to_datetime(daily[TIME_FIELD], utc=True))
    return SparkTables(sorted(parts.glob("part-*.parquet")), daily)


def batches_of(files: list[Path], rows: int) -> Iterator[pa.RecordBatch]:
    """The record batches of Parquet files, in order, ``rows`` at most each (bounded memory)."""
    for file in files:
        yield from pq.ParquetFile(file).iter_batches(batch_size=rows)


@dataclass(frozen=True)
class WindowRows:
    """Each entity's newest row in a window, and how many table rows the window held."""

    rows: pa.Table
    rows_read: int


def latest_rows_on_spark(store, view, start: pd.Timestamp, end: pd.Timestamp) -> WindowRows:
    """Each entity's newest row of ``view``'s table with ``start <= event_timestamp < end``, by
    Feast's Spark offline store (its ``BETWEEN`` holds the end: one microsecond less)."""
    (key,) = [column.name for column in view.entity_columns]
    offline = store._get_provider().offline_store
    job = offline.pull_latest_from_table_or_query(
        config=store.config, data_source=view.batch_source, join_key_columns=[key],
        feature_name_columns=[f.name for f in view.features], timestamp_field=TIME_FIELD,
        created_timestamp_column=None, start_date=start.to_pydatetime(), end_date=(end - ONE_MICROSECOND).to_pydatetime(),
    )
    latest = job.to_spark_df()
    rows, session = latest.toArrow(), latest.sparkSession
    window = (f"{TIME_FIELD} >= TIMESTAMP '{start.tz_convert('UTC'):%Y-%m-%d %H:%M:%S.%f}' "
              f"AND {TIME_FIELD} < TIMESTAMP '{end.tz_convert('UTC'):%Y-%m-%d %H:%M:%S.%f}'")
    read = session.sql(f"SELECT COUNT(*) FROM {view.batch_source.get_table_query_string()} WHERE {window}").collect()[0][0]
    return WindowRows(rows.sort_by(TIME_FIELD), int(read))
