"""The offline event log of real-time events: durable before an event is acknowledged, appended
in groups, compacted by the features DAG.

Layout under ``<feast>/offline/event_log`` (``features.tables.event_log_dir``)::

    wal/seg-<ns>-<pid>-<hex>.wal        a write-ahead segment: one per writing process, records appended
    wal/seg-<ns>-<pid>-<hex>.sealed     a segment compaction took away from its writer (read until compacted)
    events/date=YYYY-MM-DD/part-<gen>.parquet    a compacted day
    events/date=YYYY-MM-DD/batch-*.parquet       the one-file-per-push log of older versions (folded in by compaction)
    compaction-<gen>.json               a compaction's journal, only while it commits
    log.lock                            writers share it; sealing, committing and erasure take it alone

**Appending** (``EventLog.append``): one record per push group (``OnlineFeatures`` groups the
concurrent requests of a worker), one ``write`` and one ``fsync`` per record: group commit.
The push acknowledges its events only after the fsync. A record is ``MAGIC | length | crc32 |
Arrow IPC stream`` (the canonical event schema); a crash mid-write leaves a torn last record,
which readers recognise (short, or a wrong checksum) and skip: it was never acknowledged. A
process never appends to a segment it did not create, nor after a failed write, so only a
segment's tail can be torn.

**Compacting** (``compact``): seal the segments (rename, under the lock: a writer checks its
segment's inode under the shared lock before each append and opens a new segment when it was
taken), fold the sealed segments and the day files they touch into one Parquet file per day,
each (user_id, event_id) once, written under a staging name no reader trusts; then the journal
(the commit point, durable), the renames, the removal of the inputs, the removal of the journal.
Readers trust a journal's outputs and distrust its inputs, so at every point of a crash each
event is read exactly once; the next compaction finishes a committed journal and deletes the
staged files of one that never committed.

**Reading** (``read_events``): every trusted file and every whole record, under the shared lock
(no compaction commits in the middle of a read), de-duplicated like ``lake.read_events``.

**Other logs**: the machinery is the same for any record type; a ``LogFormat`` names its Arrow
schema, how a frame is conformed, the time column that picks a row's day, the read order, what a
read and a compaction count once, and the folder of its day files. ``EVENTS`` (the default of every
function here) is the event log's; ``shoprec.impressions`` defines the impression log's.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoprec.durable import (
    fsync_path,
    make_dirs,
    write_bytes_atomically,
    write_parquet_atomically,
    write_text_atomically,
)
from shoprec.schema import EVENT_ARROW_SCHEMA, conform_events

log = logging.getLogger(__name__)

WAL = "wal"
OPEN_SUFFIX = ".wal"
SEALED_SUFFIX = ".sealed"
SEGMENT_SUFFIXES = (OPEN_SUFFIX, SEALED_SUFFIX)
STAGED_PREFIX = "compacting-"
PART_PREFIX = "part-"
JOURNAL_PREFIX = "compaction-"
MAGIC = b"SRE1"
HEADER = struct.Struct("<4sQI")  # magic, payload length, crc32 of the payload
SEGMENT_MAX_BYTES = 64 * 1024 * 1024  # then a writer starts a new segment
DEDUPE_KEY = ["user_id", "item_id", "event_type", "timestamp"]  # what lake.read_events counts once


def _events_once(frame: pd.DataFrame) -> pd.DataFrame:
    """Each event once: by (user_id, event_id) where the id is known, else by the whole row."""
    has_id = frame["event_id"].notna()
    with_id = frame[has_id].drop_duplicates(["user_id", "event_id"])
    without = frame[~has_id]
    without = without.drop_duplicates(list(without.columns)) if len(without) else without
    return pd.concat([with_id, without])


@dataclass(frozen=True)
class LogFormat:
    """What one log's records are; the WAL, the compaction and the reads are the same for all."""

    schema: pa.Schema
    conform: Callable[[pd.DataFrame], pd.DataFrame]  # a frame -> the schema's columns and dtypes
    time_column: str  # picks a row's day file
    order: list[str]  # rows are read back sorted by these
    read_once: list[str]  # a read drops rows equal in these columns
    compact_once: Callable[[pd.DataFrame], pd.DataFrame] = field(repr=False)  # what compaction keeps once
    days_folder: str = "events"  # <log>/<days_folder>/date=YYYY-MM-DD/part-*.parquet

    def empty(self) -> pd.DataFrame:
        return self.conform(self.schema.empty_table().to_pandas())


EVENTS = LogFormat(EVENT_ARROW_SCHEMA, conform_events, "timestamp", ["timestamp", "user_id"], DEDUPE_KEY, _events_once)


# --- the lock -----------------------------------------------------------------------------------


@contextmanager
def log_lock(log_dir: Path, exclusive: bool) -> Iterator[None]:
    """The log's lock: shared by appends and reads, exclusive for sealing, committing and erasure."""
    path = Path(log_dir) / "log.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- records ------------------------------------------------------------------------------------


def encode_record(events: pd.DataFrame | pa.Table, fmt: LogFormat = EVENTS) -> bytes:
    """One record: header + the rows (conformed to ``fmt``) as an Arrow IPC stream."""
    return _record(_as_table(events, fmt), fmt.schema)


def _as_table(events: pd.DataFrame | pa.Table, fmt: LogFormat) -> pa.Table:
    return events if isinstance(events, pa.Table) else pa.Table.from_pandas(
        events.reset_index(drop=True), schema=fmt.schema, preserve_index=False)


def _record(table: pa.Table, schema: pa.Schema) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    payload = sink.getvalue().to_pybytes()
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_segment(path: Path) -> tuple[list[pa.Table], int]:
    """The whole records of a segment, and how many bytes at its end were torn (skipped)."""
    data = Path(path).read_bytes()
    tables, offset = [], 0
    while offset + HEADER.size <= len(data):
        magic, length, crc = HEADER.unpack_from(data, offset)
        payload = data[offset + HEADER.size: offset + HEADER.size + length]
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            break
        tables.append(pa.ipc.open_stream(payload).read_all())
        offset += HEADER.size + length
    torn = len(data) - offset
    if torn and Path(path).suffix == SEALED_SUFFIX:  # an open segment's tail may be a write in progress
        log.warning("event log: %s ends in %d bytes of a record a crash cut short (never acknowledged)", path, torn)
    return tables, torn


def _write_segment(path: Path, tables: list[pa.Table]) -> None:
    """A segment holding ``tables`` as one record (none: an empty file), durably (temp, fsync,
    rename); the tables' own schema, so it serves every log's segments."""
    if not tables:
        write_bytes_atomically(path, b"")
        return
    table = pa.concat_tables(tables)
    write_bytes_atomically(path, _record(table, table.schema))


# --- the writer ---------------------------------------------------------------------------------


class EventLog:
    """Appends to one segment of its own; thread-safe (one append at a time per process)."""

    def __init__(self, log_dir: Path, max_segment_bytes: int = SEGMENT_MAX_BYTES, fmt: LogFormat = EVENTS):
        self.log_dir = Path(log_dir)
        self.max_segment_bytes = max_segment_bytes
        self.fmt = fmt
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0

    def append(self, events: pd.DataFrame | pa.Table,
               refine: Callable[[pa.Table], pa.Table] | None = None) -> None:
        """Write ``events`` (conformed to the log's format) as one record and fsync it; OSError when that failed
        (the segment is then abandoned: the next append starts a new one). ``refine`` runs under the
        log's lock, right before the write: what it drops (an erased user's rows) is never written,
        and an erasure that starts later finds what it let through."""
        if not len(events):
            return
        if refine is None:
            record = encode_record(events, self.fmt)
        with self._lock, log_lock(self.log_dir, exclusive=False):
            if refine is not None:
                table = refine(_as_table(events, self.fmt))
                if not len(table):
                    return
                record = _record(table, self.fmt.schema)
            fd = self._segment()
            try:
                written = os.write(fd, record)
                if written != len(record):
                    raise OSError(f"short write to the event log ({written} of {len(record)} bytes)")
                os.fsync(fd)
            except OSError:
                self._close()
                raise
            self._size += len(record)

    def _segment(self) -> int:
        """This process's open segment; a new one when there is none, it is full, or compaction
        or erasure took it (its path no longer names our file)."""
        if self._fd is not None and (self._size >= self.max_segment_bytes or not self._still_ours()):
            self._close()
        if self._fd is None:
            folder = self.log_dir / WAL
            make_dirs(folder)
            path = folder / f"seg-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{OPEN_SUFFIX}"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            fsync_path(folder)  # the new name survives a power loss
            self._path, self._size = path, 0
        return self._fd

    def _still_ours(self) -> bool:
        try:
            return os.stat(self._path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._path, self._size = None, None, 0

    def close(self) -> None:
        with self._lock:
            self._close()


# --- what readers trust -------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFiles:
    """The files of the log a reader trusts now."""

    parquet: list[Path]
    segments: list[Path]

    def count(self) -> int:
        return len(self.parquet) + len(self.segments)


def _journals(log_dir: Path) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(Path(log_dir).glob(f"{JOURNAL_PREFIX}*.json")):
        out.append((path, json.loads(path.read_text())))
    return out


def trusted_files(log_dir: Path, fmt: LogFormat = EVENTS) -> LogFiles:
    """Day files and segments a reader counts: a committed journal's outputs (staged or renamed)
    instead of its inputs; never a staged file no journal names (a compaction that died before
    committing)."""
    log_dir = Path(log_dir)
    superseded: set[str] = set()
    outputs: list[Path] = []
    for _, journal in _journals(log_dir):
        superseded |= set(journal["inputs"])
        for final, staged in journal["outputs"]:
            outputs.append(log_dir / (final if (log_dir / final).exists() else staged))
    left_out = superseded | {p.relative_to(log_dir).as_posix() for p in outputs}
    days = sorted((log_dir / fmt.days_folder).glob("date=*/*.parquet"))
    parquet = [p for p in days if p.name.startswith((PART_PREFIX, "batch-"))
               and p.relative_to(log_dir).as_posix() not in left_out]
    segments = [p for p in sorted((log_dir / WAL).glob("seg-*")) if p.suffix in SEGMENT_SUFFIXES
                and p.relative_to(log_dir).as_posix() not in superseded]
    return LogFiles(sorted(parquet + [p for p in outputs if p.exists()]), segments)


def _raw_table(files: LogFiles, fmt: LogFormat = EVENTS) -> pa.Table:
    tables = [pq.read_table(f, schema=fmt.schema) for f in files.parquet]
    for segment in files.segments:
        tables += read_segment(segment)[0]
    return pa.concat_tables(tables) if tables else fmt.schema.empty_table()


def raw_events(log_dir: Path, fmt: LogFormat = EVENTS) -> pd.DataFrame:
    """Every row of the log as stored (no de-duplication): what the files hold."""
    if not Path(log_dir).exists():
        return fmt.empty()
    with log_lock(log_dir, exclusive=False):
        table = _raw_table(trusted_files(log_dir, fmt), fmt)
    return fmt.conform(table.to_pandas())


def read_events(log_dir: Path, fmt: LogFormat = EVENTS) -> pd.DataFrame:
    """The log's rows in ``fmt.order``, de-duplicated (events: as ``lake.read_events`` does)."""
    frame = raw_events(log_dir, fmt)
    frame = frame.drop_duplicates(subset=fmt.read_once)
    return frame.sort_values(fmt.order, kind="stable").reset_index(drop=True)


def file_count(log_dir: Path, fmt: LogFormat = EVENTS) -> int:
    """Files a reader opens (day files and segments)."""
    if not Path(log_dir).exists():
        return 0
    with log_lock(log_dir, exclusive=False):
        return trusted_files(log_dir, fmt).count()


# --- compaction ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compacted:
    """What a compaction did."""

    files_before: int
    files_after: int
    rows_read: int
    events_written: int  # each (user_id, event_id) once
    duplicates_dropped: int  # rows a completed push logged twice
    dropped: int  # rows ``drop`` removed (erased users')
    days: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def _once(frame: pd.DataFrame, fmt: LogFormat) -> pd.DataFrame:
    """Each row once (``fmt.compact_once``), in read order."""
    return fmt.compact_once(frame).sort_values(fmt.order, kind="stable").reset_index(drop=True)


def _day_of(path: Path) -> str:
    return path.parent.name.removeprefix("date=")


def compact(log_dir: Path, *, drop: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
            crash_at: Callable[[str], None] | None = None, fmt: LogFormat = EVENTS) -> Compacted:
    """Fold the sealed segments (and the day files they touch) into one Parquet file per day.

    Safe to run while the service appends (writers move to new segments) and to re-run after
    a crash at any point; run it where erasures cannot (``entrypoints.steps`` holds the data
    lock). ``drop`` removes rows on the way (the step drops erased users' events);
    ``crash_at(step)`` is called between the steps (tests stop it there)."""
    log_dir = Path(log_dir)
    step = crash_at or (lambda _: None)
    make_dirs(log_dir)
    with _compaction_lock(log_dir):
        with log_lock(log_dir, exclusive=True):
            _recover(log_dir, fmt)
            before = trusted_files(log_dir, fmt).count()
            sealed = _seal(log_dir)
            days_files = trusted_files(log_dir, fmt).parquet
        step("sealed")
        inputs, rows, frame = _inputs(log_dir, sealed, days_files, fmt)
        if not inputs:
            return Compacted(before, before, 0, 0, 0, 0, [])
        kept = frame if drop is None else drop(frame)
        once = _once(kept, fmt)
        gen = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        outputs = _stage(log_dir, once, gen, fmt)
        step("staged")
        journal = log_dir / f"{JOURNAL_PREFIX}{gen}.json"
        with log_lock(log_dir, exclusive=True):
            write_text_atomically(journal, json.dumps({"outputs": outputs, "inputs": inputs}))  # the commit point
            step("committed")
            _finish(log_dir, journal, {"outputs": outputs, "inputs": inputs})
            after = trusted_files(log_dir, fmt).count()
        days = sorted({_day_of(log_dir / final) for final, _ in outputs})
        return Compacted(before, after, rows, len(once), len(kept) - len(once), rows - len(kept), days)


@contextmanager
def _compaction_lock(log_dir: Path) -> Iterator[None]:
    with open(log_dir / "compaction.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _seal(log_dir: Path) -> list[Path]:
    """Take every segment away from its writer (under the exclusive lock); returns the sealed ones."""
    sealed = []
    for segment in sorted((log_dir / WAL).glob("seg-*")):
        if segment.suffix == OPEN_SUFFIX:
            target = segment.with_suffix(SEALED_SUFFIX)
            os.rename(segment, target)
            segment = target
        if segment.suffix == SEALED_SUFFIX:
            sealed.append(segment)
    if sealed:
        fsync_path(log_dir / WAL)
    return sealed


def _inputs(log_dir: Path, sealed: list[Path], day_files: list[Path],
            fmt: LogFormat = EVENTS) -> tuple[list[str], int, pd.DataFrame]:
    """The sealed segments, and every file of the days they touch or of days holding more than one file."""
    segment_tables = [t for s in sealed for t in read_segment(s)[0]]
    segment_frame = fmt.conform(pa.concat_tables(segment_tables).to_pandas()) if segment_tables else fmt.empty()
    touched = set(segment_frame[fmt.time_column].dt.strftime("%Y-%m-%d")) if len(segment_frame) else set()
    per_day: dict[str, list[Path]] = {}
    for f in day_files:
        per_day.setdefault(_day_of(f), []).append(f)
    folded = [f for day, files in per_day.items() if day in touched or len(files) > 1 for f in files]
    if not sealed and not folded:
        return [], 0, fmt.empty()
    frames = [segment_frame] + [fmt.conform(pq.read_table(f, schema=fmt.schema).to_pandas()) for f in folded]
    frame = pd.concat([f for f in frames if len(f)] or [fmt.empty()], ignore_index=True)
    names = [p.relative_to(log_dir).as_posix() for p in sealed + folded]
    return names, len(frame), fmt.conform(frame)


def _stage(log_dir: Path, events: pd.DataFrame, gen: str, fmt: LogFormat = EVENTS) -> list[tuple[str, str]]:
    """One staged Parquet file per day; returns (final, staged) names relative to the log."""
    outputs = []
    for day, part in events.groupby(events[fmt.time_column].dt.strftime("%Y-%m-%d"), sort=True):
        folder = log_dir / fmt.days_folder / f"date={day}"
        staged = folder / f"{STAGED_PREFIX}{gen}.parquet"
        table = pa.Table.from_pandas(part.reset_index(drop=True), schema=fmt.schema, preserve_index=False)
        write_parquet_atomically(table, staged)
        outputs.append(((folder / f"{PART_PREFIX}{gen}.parquet").relative_to(log_dir).as_posix(),
                        staged.relative_to(log_dir).as_posix()))
    return outputs


def _finish(log_dir: Path, journal: Path, record: dict) -> None:
    """Roll a committed journal forward: outputs renamed, inputs deleted, journal deleted."""
    folders = set()
    for final, staged in record["outputs"]:
        if (log_dir / staged).exists():
            os.replace(log_dir / staged, log_dir / final)
            folders.add((log_dir / final).parent)
    for name in record["inputs"]:
        (log_dir / name).unlink(missing_ok=True)
        folders.add((log_dir / name).parent)
    for folder in folders:
        if folder.exists():
            fsync_path(folder)
    journal.unlink()
    fsync_path(log_dir)


def _recover(log_dir: Path, fmt: LogFormat = EVENTS) -> None:
    """Finish what a crashed compaction committed; delete what it staged without committing."""
    for path, record in _journals(log_dir):
        _finish(log_dir, path, record)
    for staged in (log_dir / fmt.days_folder).glob(f"date=*/{STAGED_PREFIX}*.parquet"):
        staged.unlink()
        log.info("event log: removed %s, staged by a compaction that never committed", staged)


# --- erasure --------------------------------------------------------------------------------------


def scrub_segment(path: Path, is_user: Callable[[pd.Series], pd.Series]) -> int:
    """Drop the rows ``is_user`` picks from a segment of any log with a ``user_id`` column
    (rewritten durably, under the exclusive lock: its writer moves to a new segment); returns how
    many went. A log without the column holds no user id: left as it is."""
    path = Path(path)
    log_dir = path.parent.parent
    with log_lock(log_dir, exclusive=True):
        if not path.exists():
            return 0
        tables, torn = read_segment(path)
        if tables and "user_id" not in tables[0].schema.names:
            return 0
        removed, kept = 0, []
        for table in tables:
            mask = is_user(table.column("user_id").to_pandas()).fillna(False).to_numpy(dtype=bool)
            removed += int(mask.sum())
            kept.append(table.filter(pa.array(~mask)))
        if removed or torn:  # a torn tail (never acknowledged, maybe the user's) goes with the rewrite
            _write_segment(path, kept)
        return removed
