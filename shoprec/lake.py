"""The local data lake: Parquet, date-partitioned, the offline source Feast reads.

Layout under ``<home>/lake``::

    events/date=YYYY-MM-DD/batch-<batch_id>.parquet
    items/batch-<batch_id>.parquet          (catalog snapshots; later batches win)
    batches/<batch_id>.json                 (what each batch wrote, its metadata)

File names carry the batch's content hash, so writing the same batch twice
replaces files with identical ones (idempotent). Files are written to a temp name
and renamed, so a crash never leaves a half-written Parquet file in the lake.
``drop_user`` (the right to erasure) rewrites the event files of the lake, or of any
folder laid out like it (the real-time event log), without one user's rows.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shoprec.adapters.base import Batch
from shoprec.schema import (
    EVENT_ARROW_SCHEMA,
    ITEM_ARROW_SCHEMA,
    conform_events,
    conform_items,
    empty_events,
    empty_items,
)


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _durable_replace(table: pa.Table, path: Path) -> None:
    """Replace ``path`` by ``table``: a temp name of its own (two erasures never share one),
    flushed to disk before the rename, so a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_batch(lake: Path, batch: Batch) -> dict:
    """Write a validated batch into the lake; returns what was written."""
    lake = Path(lake)
    batch_id = batch.batch_id
    written: list[str] = []
    events = batch.events
    if len(events):
        days = events["timestamp"].dt.floor("D")
        for day, part in events.groupby(days, sort=True):
            path = lake / "events" / f"date={day:%Y-%m-%d}" / f"batch-{batch_id}.parquet"
            table = pa.Table.from_pandas(part.reset_index(drop=True), schema=EVENT_ARROW_SCHEMA, preserve_index=False)
            _atomic_write(table, path)
            written.append(str(path.relative_to(lake)))
    if len(batch.items):
        path = lake / "items" / f"batch-{batch_id}.parquet"
        table = pa.Table.from_pandas(batch.items, schema=ITEM_ARROW_SCHEMA, preserve_index=False)
        _atomic_write(table, path)
        written.append(str(path.relative_to(lake)))
    record = {
        "batch_id": batch_id,
        "source": batch.source,
        "metadata": batch.metadata,
        "events": int(len(events)),
        "items": int(len(batch.items)),
        "files": written,
        "written_at": pd.Timestamp.now(tz="UTC").isoformat(),
    }
    manifest = lake / "batches" / f"{batch_id}.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, manifest)
    return record


def append_to_log(log_dir: Path, events: pd.DataFrame) -> list[Path]:
    """Append canonical (already conformed) events to an event log laid out like the lake.

    The real-time path: no content hash and no manifest (10 ms of a 1-event push), one
    file per day named by arrival time, written atomically. Readers de-duplicate, so
    an event logged twice counts once.
    """
    stamp = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    written = []
    for day, part in events.groupby(events["timestamp"].dt.floor("D"), sort=True):
        path = Path(log_dir) / "events" / f"date={day:%Y-%m-%d}" / f"batch-{stamp}.parquet"
        _atomic_write(pa.Table.from_pandas(part.reset_index(drop=True), schema=EVENT_ARROW_SCHEMA, preserve_index=False), path)
        written.append(path)
    return written


def event_files(lake: Path, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> list[Path]:
    """Event Parquet files whose date partition overlaps [start, end)."""
    files = sorted((Path(lake) / "events").glob("date=*/batch-*.parquet"))
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
    files = sorted((Path(lake) / "items").glob("batch-*.parquet"), key=lambda p: p.stat().st_mtime)
    if not files:
        return empty_items()
    frames = [pq.read_table(f, schema=ITEM_ARROW_SCHEMA).to_pandas() for f in files]
    items = pd.concat(frames, ignore_index=True).drop_duplicates("item_id", keep="last")
    items["attributes"] = items["attributes"].map(lambda a: list(a) if a is not None else [])
    return conform_items(items.reset_index(drop=True))


def batch_records(lake: Path) -> list[dict]:
    """Manifests of every batch in the lake, oldest first."""
    paths = sorted((Path(lake) / "batches").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return [json.loads(p.read_text()) for p in paths]


def drop_user(files_dir: Path, user_id: str) -> int:
    """Delete ``user_id``'s events from every event file under ``files_dir`` (the lake, or the
    event log laid out like it); a file left empty goes. Returns how many rows went."""
    removed = 0
    for path in event_files(Path(files_dir)):
        table = pq.read_table(path)
        is_user = pc.fill_null(pc.equal(table["user_id"], user_id), False)
        hits = pc.sum(is_user).as_py() or 0
        if not hits:
            continue
        kept = table.filter(pc.invert(is_user))
        if kept.num_rows == 0:
            path.unlink()
        else:
            _durable_replace(kept, path)
        removed += hits
    return removed
