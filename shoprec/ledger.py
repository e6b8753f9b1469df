"""The erasure ledger: which users were asked to be forgotten, keyed by a hash, never the raw id.

A SQLite file under ``<home>/erasure/ledger.sqlite`` (several processes append and read it:
the service's workers, the features run). One row per erasure job: its id, the user's key
(``user_key``: SHA-256 of the normalised id), its status (pending -> running -> done, or
failed) and, once done, what was removed where (JSON counts, no id).

Every path that brings events in consults it (``drop_erased``): ingest, the feature build,
materialize and the training set drop the rows of erased users, so no re-run, backfill or
late batch brings a user back. The filter hashes each distinct user id once and selects
rows with a vectorised ``isin``.

``normalise_id`` is the one id normalisation (surrounding whitespace goes), the rule of both
the batch path (``shoprec.schema`` strips string ids) and the real-time one
(``shoprec.validation`` strips a request's id): one user is one key everywhere.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shoprec.config import Settings
from shoprec.locks import exclusive_lock
from shoprec.schema import normalise_id, normalise_ids  # noqa: F401  (re-exported: the ledger's key rule)

KEY_PREFIX = b"shoprec-user:"  # domain separation: a user key is never the bare hash of an id
_SCHEMA = """CREATE TABLE IF NOT EXISTS erasures (
    job_id TEXT PRIMARY KEY, user_key TEXT NOT NULL, status TEXT NOT NULL,
    requested_at TEXT NOT NULL, finished_at TEXT, removed TEXT, error TEXT)"""


def user_key(user_id: object) -> str:
    """The ledger's key of a user: SHA-256 of the normalised id."""
    return hashlib.sha256(KEY_PREFIX + normalise_id(user_id).encode("utf-8")).hexdigest()


def ledger_path(settings: Settings) -> Path:
    return settings.home / "erasure" / "ledger.sqlite"


@dataclass(frozen=True)
class ErasureJob:
    """One erasure request as the ledger holds it (``removed``: place -> counts)."""

    job_id: str
    user_key: str
    status: str
    requested_at: str
    finished_at: str | None = None
    removed: dict | None = None
    error: str | None = None

    def to_json(self) -> dict:
        removed = self.removed or {}
        return {"job_id": self.job_id, "status": self.status, "requested_at": self.requested_at,
                "finished_at": self.finished_at, "places": removed.get("places", {}),
                "notes": removed.get("notes", []), "error": self.error}


@contextmanager
def _connect(settings: Settings) -> Iterator[sqlite3.Connection]:
    path = ledger_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one process at a time: two workers creating the ledger at once got "database is locked"
    # from the journal-mode switch, which SQLite's busy timeout does not cover
    with exclusive_lock(path.with_name(path.name + ".lock")), \
            closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a recorded request survives a power loss
        conn.execute(_SCHEMA)
        yield conn


def _now() -> str:
    return pd.Timestamp.now(tz="UTC").isoformat()


def new_job_id() -> str:
    return uuid.uuid4().hex


def record(settings: Settings, user_id: str, job_id: str | None = None) -> ErasureJob:
    """Record an erasure request (durably) and return its job, status pending."""
    job = ErasureJob(job_id or new_job_id(), user_key(user_id), "pending", _now())
    with _connect(settings) as conn:
        conn.execute("INSERT INTO erasures (job_id, user_key, status, requested_at) VALUES (?, ?, ?, ?)",
                     (job.job_id, job.user_key, job.status, job.requested_at))
    return job


def set_status(settings: Settings, job_id: str, status: str, removed: dict | None = None, error: str | None = None) -> None:
    finished = _now() if status in ("done", "failed") else None
    with _connect(settings) as conn:
        conn.execute("UPDATE erasures SET status = ?, finished_at = ?, removed = ?, error = ? WHERE job_id = ?",
                     (status, finished, json.dumps(removed) if removed is not None else None, error, job_id))


def job(settings: Settings, job_id: str) -> ErasureJob | None:
    with _connect(settings) as conn:
        row = conn.execute("SELECT job_id, user_key, status, requested_at, finished_at, removed, error "
                           "FROM erasures WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    return ErasureJob(*row[:5], json.loads(row[5]) if row[5] else None, row[6])


def unfinished_jobs(settings: Settings) -> list[ErasureJob]:
    """Jobs recorded but not done (a crash or a failure left them): oldest first."""
    if not ledger_path(settings).exists():
        return []
    with _connect(settings) as conn:
        ids = [r[0] for r in conn.execute("SELECT job_id FROM erasures WHERE status != 'done' ORDER BY requested_at")]
    return [j for j in (job(settings, i) for i in ids) if j is not None]


def erased_keys(settings: Settings) -> frozenset[str]:
    """The keys of every user ever asked to be forgotten (pending or done)."""
    if not ledger_path(settings).exists():
        return frozenset()
    with _connect(settings) as conn:
        return frozenset(r[0] for r in conn.execute("SELECT DISTINCT user_key FROM erasures"))


class ErasedKeys:
    """``erased_keys``, read again only when the ledger file changed (a stat per call): what a
    writer checks right before it writes, so that an erased user's rows are never written."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._cache: tuple[tuple | None, frozenset[str]] = (None, frozenset())

    def current(self) -> frozenset[str]:
        path = ledger_path(self.settings)
        # WAL mode: a new record lands in the -wal file before the main file changes; the size and
        # inode too, as two commits within one clock tick leave the mtime as it was
        stamp = tuple(_file_stamp(p) for p in (path, path.with_name(path.name + "-wal")))
        if self._cache[0] != stamp:
            self._cache = (stamp, erased_keys(self.settings))
        return self._cache[1]


def _file_stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0, 0, 0)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def erased_mask(user_ids: pd.Series, keys: frozenset[str]) -> pd.Series:
    """True where the row's user is in ``keys``: each distinct id hashed once, rows selected by isin."""
    if not keys or not len(user_ids):
        return pd.Series(False, index=user_ids.index)
    ids = normalise_ids(user_ids)
    distinct = ids.dropna().unique()
    erased = [u for u, k in zip(distinct, map(user_key, distinct)) if k in keys]
    return ids.isin(erased).fillna(False).astype(bool)


def drop_erased(frame: pd.DataFrame, settings: Settings, column: str = "user_id",
                keys: frozenset[str] | None = None) -> pd.DataFrame:
    """``frame`` without the rows of erased users (the same object when none is in it)."""
    keys = erased_keys(settings) if keys is None else keys
    if not keys or column not in frame.columns:
        return frame
    mask = erased_mask(frame[column], keys)
    return frame[~mask.to_numpy()].reset_index(drop=True) if mask.any() else frame
