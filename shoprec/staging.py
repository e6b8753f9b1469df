"""A batch on its way to the lake, staged on disk and cleaned out of core by DuckDB.

Ingestion reads a source in bounded chunks (``shoprec.reading``); each chunk, once the gate
has seen it, is normalised row by row (``shoprec.cleaning.normalise_ids`` and
``normalise_timestamps``: they need no other row) and appended to a staging folder as
Parquet, with its position in the batch (``_row``). What needs the whole batch - duplicates,
bots, the k-core, the time order - runs here as SQL over the staged files, with DuckDB's
memory limit and spill folder, so a batch larger than memory is cleaned with the same result
as ``shoprec.cleaning.clean_events`` on the whole frame (the definition; tests compare the
two row for row). The cleaned batch leaves as ordered Arrow record batches for the lake
writer (``shoprec.lake.write_batch``).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoprec.cleaning import DUPLICATE_KEY, CleaningReport, normalise_ids, normalise_timestamps
from shoprec.config import CleaningSettings, IngestSettings
from shoprec.schema import EVENT_ARROW_SCHEMA, EVENT_COLUMNS

ROW = "_row"  # position in the batch as delivered: keeps "first" and ties exactly as pandas would
STAGED_SCHEMA = pa.schema([*(f if f.name != "timestamp" else pa.field("timestamp", pa.int64()) for f in EVENT_ARROW_SCHEMA),
                           pa.field(ROW, pa.int64())])  # timestamp as epoch ms: exact once floored to ms
KEY = ", ".join(DUPLICATE_KEY)
COLUMNS = ", ".join(EVENT_COLUMNS)
# DuckDB's partitioned write holds a buffer per bucket: 3,420 buckets ran out of 512 MB on a
# 3,420-row batch; 64 buckets of the default 4 M rows cover 256 M rows
MAX_KEY_BUCKETS = 64


class Staging:
    """The staged chunks of one batch and the DuckDB session that cleans them.

    Use as a context manager: the folder (staged Parquet, DuckDB's spill files) is removed on exit."""

    def __init__(self, folder: Path, settings: IngestSettings):
        self.folder = Path(folder)
        self.settings = settings
        self.rows = 0
        self.report = CleaningReport()
        self._parts = 0
        self._db: duckdb.DuckDBPyConnection | None = None
        self._buckets: list[str] | None = None

    def __enter__(self) -> "Staging":
        (self.folder / "parts").mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._db is not None:
            self._db.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- chunks in -------------------------------------------------------------------
    def append(self, events: pd.DataFrame) -> None:
        """Normalise one conformed chunk (the row-local cleaning rules) and stage it."""
        events = normalise_timestamps(normalise_ids(events, self.report), self.report)
        staged = events.assign(timestamp=_epoch_ms(events["timestamp"]),
                               **{ROW: pd.RangeIndex(self.rows, self.rows + len(events))})
        table = pa.Table.from_pandas(staged, schema=STAGED_SCHEMA, preserve_index=False)
        pq.write_table(table, self.folder / "parts" / f"part-{self._parts:06d}.parquet")
        self._parts += 1
        self.rows += len(events)

    # --- batch-wide checks and cleaning ---------------------------------------------------
    @property
    def db(self) -> duckdb.DuckDBPyConnection:
        if self._db is None:
            self._db = duckdb.connect(config={
                "memory_limit": self.settings.staging_memory_limit,
                "threads": self.settings.staging_threads,
                "temp_directory": str(self.folder / "spill"),
            })
            parts = str(self.folder / "parts" / "*.parquet")
            if self._parts:
                self._db.execute(f"CREATE VIEW staged AS SELECT * FROM read_parquet('{parts}')")
            else:
                self._db.execute(f"CREATE TABLE staged AS SELECT * FROM {_empty_select()}")
        return self._db

    def key_buckets(self) -> list[str]:
        """The staged rows as relations that each hold every copy of their duplicate keys: the
        staged view itself, or, above ``staging_bucket_rows``, Parquet buckets by a hash of the key."""
        if self._buckets is None:
            count = min(math.ceil(self.rows / self.settings.staging_bucket_rows), MAX_KEY_BUCKETS)
            if count <= 1:
                self._buckets = ["staged"]
            else:
                folder = self.folder / "buckets"
                with self._memory_explained():
                    self.db.execute(f"COPY (SELECT *, hash({KEY}) % {count} AS _bucket FROM staged) "
                                    f"TO '{folder}' (FORMAT parquet, PARTITION_BY (_bucket))")
                self._buckets = [f"read_parquet('{path}/*.parquet', hive_partitioning = false)" for path in sorted(folder.glob("_bucket=*"))]
        return self._buckets

    def _drop_buckets(self) -> None:
        """The buckets are a second copy of the batch, needed only until the repeats are known."""
        shutil.rmtree(self.folder / "buckets", ignore_errors=True)
        self._buckets = None

    def duplicate_rows(self) -> int:
        """Rows that share their duplicate key with another row (all copies, as Great Expectations'
        compound-uniqueness check counts them), over the normalised rows."""
        buckets = self.key_buckets()
        with self._memory_explained():
            return sum(int(self.db.execute(f"SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM {bucket} "
                                           f"GROUP BY {KEY} HAVING n > 1)").fetchall()[0][0]) for bucket in buckets)

    def clean(self, settings: CleaningSettings) -> CleaningReport:
        """Duplicates, bots, k-core and order over the staged batch (``shoprec.cleaning``'s rules,
        in that order); the result is the view ``kcored``. Returns the whole batch's counts."""
        buckets = self.key_buckets()
        with self._memory_explained():
            return self._clean(settings, buckets)

    def _clean(self, settings: CleaningSettings, buckets: list[str]) -> CleaningReport:
        """Each rule is a view over the one before; only what is small (the repeated rows, the
        bots) or iterated (the k-core) is a table: three temp-table copies of a 61 M-row batch
        spilled 11 GB and took minutes."""
        report = self.report
        report.rows_in = self.rows
        db = self.db
        db.execute(f"CREATE OR REPLACE TEMP TABLE repeats ({ROW} BIGINT NOT NULL)")
        for bucket in buckets:  # every copy of a key but its first, as drop_duplicates(keep="first")
            db.execute(f"INSERT INTO repeats SELECT {ROW} FROM {bucket} "
                       f"WHERE {ROW} NOT IN (SELECT min({ROW}) FROM {bucket} GROUP BY {KEY})")
        self._drop_buckets()
        report.duplicates_removed = _count(db, "repeats")
        db.execute(f"CREATE OR REPLACE TEMP VIEW deduped AS SELECT staged.* FROM staged ANTI JOIN repeats USING ({ROW})")
        self._remove_bots(settings, report)
        self._k_core(settings.k_core, report)
        report.rows_out_of_order = self._rows_out_of_order()
        report.rows_out = _count(db, "kcored")
        return report

    def _rows_out_of_order(self) -> int:
        """Rows earlier in time than the row before them in delivery order (``cleaning.order``'s
        count), streamed in batches: DuckDB's ``lag()`` over one window of 61 M rows ran out of 512 MB."""
        reader = self.db.sql("SELECT timestamp FROM kcored ORDER BY _loose, _row").to_arrow_reader(self.settings.chunk_rows)
        count, previous = 0, np.array([np.nan])
        for batch in reader:
            times = np.concatenate([previous, batch.column(0).to_numpy(zero_copy_only=False).astype(np.float64)])
            count += int(np.count_nonzero(times[1:] < times[:-1]))  # NaN (no time) compares false, as NaT does
            previous = times[-1:]
        return count

    def _remove_bots(self, settings: CleaningSettings, report: CleaningReport) -> None:
        db = self.db
        db.execute(f"""CREATE OR REPLACE TEMP TABLE bots AS
            SELECT user_id FROM deduped WHERE user_id IS NOT NULL AND timestamp IS NOT NULL GROUP BY user_id
            HAVING count(*) >= {int(settings.bot_min_events)}
               AND count(*) / greatest((max(timestamp) - min(timestamp)) / 60000.0, 1.0)
                   > {float(settings.bot_max_events_per_minute)}""")
        report.bot_users_removed = _count(db, "bots")
        db.execute("CREATE OR REPLACE TEMP VIEW unbotted AS SELECT * FROM deduped "
                   "WHERE user_id IS NULL OR user_id NOT IN (SELECT user_id FROM bots)")
        report.bot_events_removed = int(db.execute(
            "SELECT count(*) FROM deduped WHERE user_id IN (SELECT user_id FROM bots)").fetchall()[0][0])

    def _k_core(self, k: int, report: CleaningReport) -> None:
        """Drop users and items with fewer than k events until none is left; rows without a user
        or an item stay, after the kept ones (``_loose``), as ``cleaning.k_core`` concatenates them."""
        db = self.db
        if k <= 0:
            db.execute("CREATE OR REPLACE TEMP VIEW kcored AS SELECT *, false AS _loose FROM unbotted")
            return
        keyed = "user_id IS NOT NULL AND item_id IS NOT NULL"
        db.execute(f"CREATE OR REPLACE TEMP TABLE core AS SELECT * FROM unbotted WHERE {keyed}")
        users_in, items_in, keyed_rows = db.execute(
            "SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(*) FROM core").fetchall()[0]
        while True:
            before = _count(db, "core")
            db.execute(f"""CREATE OR REPLACE TEMP TABLE core AS SELECT * FROM core
                WHERE user_id IN (SELECT user_id FROM core GROUP BY user_id HAVING count(*) >= {int(k)})
                  AND item_id IN (SELECT item_id FROM core GROUP BY item_id HAVING count(*) >= {int(k)})""")
            if _count(db, "core") == before:
                break
        users_out, items_out, kept = db.execute(
            "SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(*) FROM core").fetchall()[0]
        report.k_core_users_removed = users_in - users_out
        report.k_core_items_removed = items_in - items_out
        report.k_core_events_removed = keyed_rows - kept
        db.execute(f"""CREATE OR REPLACE TEMP VIEW kcored AS
            SELECT *, false AS _loose FROM core UNION ALL
            SELECT *, true AS _loose FROM unbotted WHERE NOT ({keyed})""")

    # --- the cleaned batch out --------------------------------------------------------------
    def cleaned_counts(self) -> dict:
        with self._memory_explained():
            users, items, first, last = self.db.execute(
                "SELECT count(DISTINCT user_id), count(DISTINCT item_id), min(timestamp), max(timestamp) FROM kcored"
            ).fetchall()[0]
        as_time = lambda ms: pd.Timestamp(ms, unit="ms", tz="UTC").isoformat() if ms is not None else None  # noqa: E731
        return {"events": self.report.rows_out, "users": int(users), "items": int(items),
                "first_event": as_time(first), "last_event": as_time(last)}

    def cleaned_batches(self) -> Iterator[pa.RecordBatch]:
        """The cleaned events in time order (ties by user, then as delivered), canonical schema."""
        with self._memory_explained():
            reader = self.db.sql(
                f"SELECT {COLUMNS} FROM kcored ORDER BY timestamp NULLS LAST, user_id NULLS LAST, _loose, _row"
            ).to_arrow_reader(self.settings.chunk_rows)
            for batch in reader:
                yield _to_canonical(batch)

    @contextmanager
    def _memory_explained(self) -> Iterator[None]:
        try:
            yield
        except duckdb.OutOfMemoryException as exc:
            limit, bucket_rows = self.settings.staging_memory_limit, self.settings.staging_bucket_rows
            raise StagingMemoryError(
                f"staging ran out of its {limit} DuckDB memory limit on a batch of {self.rows:,} rows; the batch "
                f"did not reach the lake. Raise SHOPREC_INGEST__STAGING_MEMORY_LIMIT (or lower "
                f"SHOPREC_INGEST__STAGING_BUCKET_ROWS, {bucket_rows:,}, below {MAX_KEY_BUCKETS} buckets) and ingest "
                f"it again. DuckDB said: {str(exc).splitlines()[0]}") from exc


class StagingMemoryError(RuntimeError):
    """DuckDB ran out of the memory the settings give it while cleaning a batch: the batch is
    not at fault (not quarantined) and did not reach the lake (no manifest)."""


def _count(db: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def _epoch_ms(timestamps: pd.Series) -> pd.Series:
    """Epoch milliseconds of floored UTC timestamps (missing stays missing)."""
    return pd.Series(timestamps.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ms]").astype("int64"),
                     index=timestamps.index).where(timestamps.notna()).astype("Int64")


def _empty_select() -> str:
    """A zero-row relation with the staged columns (a batch without events, e.g. a catalog update)."""
    types = {"string": "VARCHAR", "Float64": "DOUBLE", "Int64": "BIGINT"}
    columns = [f"NULL::{'BIGINT' if c == 'timestamp' else types[t]} AS {c}" for c, t in EVENT_COLUMNS.items()]
    return f"(SELECT {', '.join(columns)}, NULL::BIGINT AS {ROW} WHERE false)"


def _to_canonical(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A cleaned record batch with the lake's schema (timestamps back from epoch ms)."""
    arrays = []
    for field in EVENT_ARROW_SCHEMA:
        column = batch.column(field.name)
        if field.name == "timestamp":
            column = column.cast(pa.int64()).cast(pa.timestamp("ms", tz="UTC")).cast(field.type)
        arrays.append(column.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=EVENT_ARROW_SCHEMA)
