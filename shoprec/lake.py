"""The local data lake: Parquet, date-partitioned, the offline source Feast reads.

Layout under ``<home>/lake``::

    events/date=YYYY-MM-DD/batch-<batch_id>.parquet
    items/batch-<batch_id>.parquet          (catalog snapshots; later batches win)
    batches/<batch_id>.json                 (what each batch wrote, its metadata)

File names carry the batch's content hash, so writing the same batch twice
replaces files with identical ones (idempotent). Every file is written durably
(``shoprec.durable``: unique temp name, fsync, rename, folder fsync), so a crash never
leaves a half-written Parquet file in the lake. A batch's manifest is written last and
readers trust only the files some manifest names: a crash between the day files and the
manifest leaves files no reader sees, and writing the batch again completes it. A folder
without ``batches/`` has no manifests: its readers take every file (the real-time event
log is ``shoprec.event_log``'s own layout). ``write_batch`` creates ``batches/`` before its first data file, so a lake always has one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shoprec.adapters.base import Batch
from shoprec.durable import make_dirs, replacing, write_parquet_atomically, write_text_atomically
from shoprec.schema import (
    EVENT_ARROW_SCHEMA,
    ITEM_ARROW_SCHEMA,
    conform_events,
    conform_items,
    empty_events,
    empty_items,
)


BATCHES = "batches"
NANOSECONDS_PER_DAY = 86_400 * 10**9

log = logging.getLogger(__name__)


def _atomic_write(table: pa.Table, path: Path) -> None:
    write_parquet_atomically(table, path)


def write_batch(lake: Path, batch: Batch) -> dict:
    """Write a validated in-memory batch into the lake; returns what was written."""
    events = batch.events
    if len(events):  # the day files hold each day's rows in the batch's order
        events = events.iloc[events["timestamp"].dt.floor("D").argsort(kind="stable")]
    table = pa.Table.from_pandas(events.reset_index(drop=True), schema=EVENT_ARROW_SCHEMA, preserve_index=False)
    return write_stream(lake, batch.batch_id, table.to_batches(), batch.items, batch.source, batch.metadata)


def write_stream(lake: Path, batch_id: str, events: Iterable[pa.RecordBatch], items: pd.DataFrame,
                 source: str, metadata: dict) -> dict:
    """Write a validated batch whose events arrive as record batches ordered by day (the cleaned
    batch of ``shoprec.staging`` is in time order): one durable file per day, then the catalog,
    then the manifest. Returns the manifest record."""
    lake = Path(lake)
    make_dirs(lake / BATCHES)  # before any data file: this folder is a lake whose readers honour manifests
    written: list[str] = []
    rows = 0
    with ExitStack() as files:
        day_file: _DayFile | None = None
        for record_batch in events:
            for day, part in _split_by_day(record_batch):
                if day_file is None or day != day_file.day:
                    if day_file is not None:
                        day_file.close()
                    path = lake / "events" / f"date={day:%Y-%m-%d}" / f"batch-{batch_id}.parquet"
                    if str(path.relative_to(lake)) in written:
                        raise ValueError(f"events of {day:%Y-%m-%d} arrived after a later day's: write_stream needs them ordered by day")
                    day_file = files.enter_context(_DayFile(path, day))
                    written.append(str(path.relative_to(lake)))
                day_file.write(part)
                rows += part.num_rows
        if day_file is not None:
            day_file.close()
    if len(items):
        path = lake / "items" / f"batch-{batch_id}.parquet"
        _atomic_write(pa.Table.from_pandas(items, schema=ITEM_ARROW_SCHEMA, preserve_index=False), path)
        written.append(str(path.relative_to(lake)))
    record = {
        "batch_id": batch_id,
        "source": source,
        "metadata": metadata,
        "events": rows,
        "items": int(len(items)),
        "files": written,
        "written_at": pd.Timestamp.now(tz="UTC").isoformat(),
    }
    _write_manifest(lake, record)
    return record


class _DayFile:
    """One day's Parquet file of a batch, written in parts and committed durably on close."""

    def __init__(self, path: Path, day: pd.Timestamp):
        self.day = day
        self._replacing = replacing(path)
        self._writer: pq.ParquetWriter | None = None
        self._closed = False

    def __enter__(self) -> "_DayFile":
        self._writer = pq.ParquetWriter(self._replacing.__enter__(), EVENT_ARROW_SCHEMA)
        return self

    def write(self, part: pa.RecordBatch) -> None:
        self._writer.write_batch(part)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()
            self._replacing.__exit__(None, None, None)

    def __exit__(self, *exc) -> None:
        if not self._closed:  # an error before close(): the temp file goes, nothing is committed
            self._closed = True
            self._writer.close()
            self._replacing.__exit__(*exc)


def _split_by_day(batch: pa.RecordBatch) -> Iterator[tuple[pd.Timestamp, pa.RecordBatch]]:
    """Consecutive runs of one UTC day in a record batch (rows without a timestamp are dropped,
    as the gate refuses them)."""
    batch = batch.filter(pc.is_valid(batch.column("timestamp")))
    if not batch.num_rows:
        return
    days = pc.divide(batch.column("timestamp").cast(pa.int64()), NANOSECONDS_PER_DAY).to_numpy()
    starts = [0, *(np.flatnonzero(np.diff(days)) + 1), len(days)]
    for begin, end in zip(starts[:-1], starts[1:]):
        yield pd.Timestamp(int(days[begin]) * NANOSECONDS_PER_DAY, tz="UTC"), batch.slice(begin, end - begin)


def _write_manifest(lake: Path, record: dict) -> None:
    """The batch's manifest, written last: from now on readers trust its files."""
    write_text_atomically(lake / BATCHES / f"{record['batch_id']}.json", json.dumps(record, indent=2, default=str))


def listed_files(folder: Path) -> set[str] | None:
    """The files (relative to ``folder``) that the batch manifests of ``folder`` name; None for
    a folder without manifests (the event log), whose every file counts."""
    if not (Path(folder) / BATCHES).is_dir():
        return None
    return {name for record in batch_records(folder) for name in record.get("files", [])}


def _trusted(folder: Path, files: list[Path], include_unlisted: bool) -> list[Path]:
    listed = None if include_unlisted else listed_files(folder)
    if listed is None:
        return files
    return [f for f in files if f.relative_to(folder).as_posix() in listed]


def event_files(lake: Path, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None, *,
                include_unlisted: bool = False) -> list[Path]:
    """Event Parquet files whose date partition overlaps [start, end): in a lake, only those a
    batch manifest names (``include_unlisted``: also those a crash left without one, which
    erasure must still clean)."""
    lake = Path(lake)
    files = _trusted(lake, sorted((lake / "events").glob("date=*/batch-*.parquet")), include_unlisted)
    if start is None and end is None:
        return files
    keep = []
    for f in files:
        day = pd.Timestamp(f.parent.name.removeprefix("date="), tz="UTC")
        if (start is None or day + pd.Timedelta(days=1) > start) and (end is None or day < end):
            keep.append(f)
    return keep


def read_events(lake: Path, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """All events in [start, end), ordered by (timestamp, user_id), de-duplicated across batches."""
    files = event_files(lake, start, end)
    if not files:
        return empty_events()
    table = pa.concat_tables(pq.read_table(f, schema=EVENT_ARROW_SCHEMA) for f in files)
    df = conform_events(table.to_pandas())
    if start is not None:
        df = df[df["timestamp"] >= start]
    if end is not None:
        df = df[df["timestamp"] < end]
    df = df.drop_duplicates(subset=["user_id", "item_id", "event_type", "timestamp"])
    return df.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)


def read_items(lake: Path) -> pd.DataFrame:
    """The current catalog: every snapshot merged, the newest batch winning per item."""
    lake = Path(lake)
    files = sorted(_trusted(lake, list((lake / "items").glob("batch-*.parquet")), include_unlisted=False),
                   key=lambda p: p.stat().st_mtime)
    if not files:
        return empty_items()
    frames = [pq.read_table(f, schema=ITEM_ARROW_SCHEMA).to_pandas() for f in files]
    items = pd.concat(frames, ignore_index=True).drop_duplicates("item_id", keep="last")
    items["attributes"] = items["attributes"].map(lambda a: list(a) if a is not None else [])
    return conform_items(items.reset_index(drop=True))


def batch_records(lake: Path) -> list[dict]:
    """Manifests of every batch in the lake, oldest first (an unreadable one counts as not written)."""
    records = []
    for path in sorted((Path(lake) / BATCHES).glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            records.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            log.warning("ignoring the unreadable batch manifest %s: %s", path, error)
    return records
