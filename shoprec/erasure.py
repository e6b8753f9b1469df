"""The right to erasure: remove one user from every place ShopRec writes, and keep them out.

``request_erasure`` records the user in the ledger (``shoprec.ledger``: a hash, never the
raw id) and returns a job at once; ``run_job`` does the removal. A job removes the user from:

- the online store (SQLite or Redis: ``OnlineFeatures.forget_user``);
- every Parquet or CSV table under ``SHOPREC_HOME`` with a ``user_id`` column: the lake's
  event files, the real-time event log (its day files, and its write-ahead segments through
  ``event_log.scrub_segment``, under the log's lock), the inbox batches, the quarantined input copies,
  the feature tables, the training sets of ``models/runs/``, anything else laid out so;
- every JSON (validation results, alerts, run records): values that are or quote the id go;
- every HTML page quoting the id (Great Expectations Data Docs render samples of the
  data): the page is deleted, and the report says so (a page cannot be re-rendered
  without the validation run it came from);
- every log (``*.log``, ``*.txt``): the lines quoting the id go, in place (a live writer,
  e.g. ``bentoml serve``, keeps appending to the same file);
- every other SQLite database (e.g. Airflow's): text values quoting the id are redacted.

Each rewrite goes to a unique temp name, is fsynced and renamed (``shoprec.durable``).
One erasure runs at a time, and never during a features step: both hold ``data_lock``.
The job needs the raw id to find it in logs and pages; it is kept in
``<home>/erasure/pending/<job>.json`` only until the job is done, so a job a crash
interrupted is resumed (``resume_pending``) at the service's next start or by the next
features run.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoprec import event_log, ledger
from shoprec.config import Settings
from shoprec.durable import fsync_path, is_temp_file, write_parquet_atomically, write_text_atomically
from shoprec.features.online import OnlineFeatures
from shoprec.locks import exclusive_lock

log = logging.getLogger(__name__)

SKIPPED_FOLDERS = ("erasure", "locks")  # the ledger itself (hashes only) and lock files
# Files that hold no user's data, where a text match could only be a coincidence (a user
# "11" in "date=2026-11-01") and a rewrite would break them: model versions (checksummed),
# the lake's batch manifests, the registry pointer and history, Feast's and Airflow's own
# metadata databases.
INTACT = (("models", "*", "*"), ("lake", "batches", "*"), ("feast", "registry.db"), ("airflow", "airflow.db"))
OWN_SQLITE = ("event_index.db",)  # the only SQLite files besides the online store that may hold an id
REDACTED = "[erased]"
SQLITE_MAGIC = b"SQLite format 3\x00"
Mask = Callable[[pd.Series], "pd.Series"]


@dataclass
class Removed:
    """What one place lost: table rows, JSON values, log lines, files rewritten or deleted."""

    rows: int = 0
    values: int = 0
    lines: int = 0
    files_rewritten: int = 0
    files_deleted: int = 0

    def any(self) -> bool:
        return any(asdict(self).values())


@dataclass
class ErasureReport:
    """What an erasure removed where (counts per place; no id)."""

    job_id: str
    status: str
    places: dict[str, Removed] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def place(self, name: str) -> Removed:
        return self.places.setdefault(name, Removed())

    def removed(self) -> dict:
        return {"places": {k: asdict(v) for k, v in sorted(self.places.items()) if v.any()}, "notes": self.notes}

    def to_json(self) -> dict:
        return {"job_id": self.job_id, "status": self.status, **self.removed()}


# --- the lock and the jobs -------------------------------------------------------------


@contextmanager
def data_lock(settings: Settings) -> Iterator[None]:
    """Held by an erasure and by each features step (ingest, build, materialize): never both at once."""
    with exclusive_lock(settings.home / "locks" / "data.lock"):
        yield


def _pending_path(settings: Settings, job_id: str) -> Path:
    return settings.home / "erasure" / "pending" / f"{job_id}.json"


def request_erasure(settings: Settings, user_id: str) -> ledger.ErasureJob:
    """Record the user in the ledger (from now on no path brings them in) and return the pending job."""
    user_id = ledger.normalise_id(user_id)
    job_id = ledger.new_job_id()
    # the id record first: a crash before the ledger row leaves a file no job names (swept
    # with the next job), never a job that cannot run
    write_text_atomically(_pending_path(settings, job_id), json.dumps({"user_id": user_id}))
    return ledger.record(settings, user_id, job_id)


def run_job(settings: Settings, job_id: str, features: OnlineFeatures | None = None) -> ErasureReport:
    """Do (or finish) a recorded job; a job already done is not run again."""
    with data_lock(settings):
        job = ledger.job(settings, job_id)
        if job is None:
            raise KeyError(f"no erasure job {job_id}")
        if job.status == "done":
            return ErasureReport(job_id, "done")
        pending = _pending_path(settings, job_id)
        if not pending.is_file():
            error = "the job's id record is gone; the ledger still keeps the user out of every new run"
            ledger.set_status(settings, job_id, "failed", error=error)
            return ErasureReport(job_id, "failed", notes=[error])
        user_id = json.loads(pending.read_text())["user_id"]
        ledger.set_status(settings, job_id, "running")
        try:
            report = _erase(settings, user_id, job_id, features)
        except Exception as exc:
            ledger.set_status(settings, job_id, "failed", error=f"{type(exc).__name__}: {exc}")
            raise
        pending.unlink()  # before "done": a crash in between leaves a failed-looking job, not the raw id
        fsync_path(pending.parent)
        ledger.set_status(settings, job_id, "done", removed=report.removed())
        return report


def resume_pending(settings: Settings, features: OnlineFeatures | None = None) -> list[ErasureReport]:
    """Run every job a crash (or a failure) left unfinished; call it without holding ``data_lock``."""
    reports = []
    for job in ledger.unfinished_jobs(settings):
        if _pending_path(settings, job.job_id).is_file():
            reports.append(run_job(settings, job.job_id, features))
    return reports


# --- the removal ----------------------------------------------------------------------------


def _erase(settings: Settings, user_id: str, job_id: str, features: OnlineFeatures | None) -> ErasureReport:
    report = ErasureReport(job_id, "done")
    is_user: Mask = lambda ids: ledger.normalise_ids(ids) == user_id  # noqa: E731
    pattern = _quote_pattern(user_id)
    online_db = _online_sqlite_path(settings)
    _forget_online(settings, user_id, features, report)  # first: no push lands after the files are clean
    for path in _files(settings.home):
        if _kept_intact(path.relative_to(settings.home)):
            continue
        place = report.place(_place_of(path, settings))
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".csv"):
            _scrub_table(path, is_user, place)
        elif suffix in event_log.SEGMENT_SUFFIXES:
            _scrub_segment(path, is_user, place)
        elif suffix in (".json", ".jsonl"):
            _scrub_json(path, pattern, place)
        elif suffix in (".html", ".htm"):
            _delete_page(path, pattern, place)
        elif suffix in (".log", ".txt"):
            _scrub_log(path, pattern, place)
        elif path.name in OWN_SQLITE and path.resolve() != online_db and _is_sqlite(path):
            _scrub_sqlite(path, user_id, place)
    if report.places.get("validation", Removed()).files_deleted or report.places.get("quarantine", Removed()).files_deleted:
        report.notes.append("Data Docs pages that quoted the user were deleted, not re-rendered")
    return report


def _kept_intact(relative: Path) -> bool:
    parts = relative.parts
    if parts[:2] == ("models", "runs"):
        return False  # training sets: user data
    return any(len(parts) == len(rule) and all(r in ("*", p) for r, p in zip(rule, parts)) for rule in INTACT) \
        or parts[:1] == ("models",) and len(parts) == 2  # PRODUCTION, HISTORY.jsonl


def _forget_online(settings: Settings, user_id: str, features: OnlineFeatures | None, report: ErasureReport) -> None:
    if features is None:
        try:
            features = OnlineFeatures(settings)
        except Exception as exc:  # noqa: BLE001 - no feature store set up yet: nothing online to remove
            report.notes.append(f"online store not set up ({type(exc).__name__}); nothing online to remove")
            return
    report.place("online_store").rows += features.forget_user(user_id)


def _files(home: Path) -> Iterator[Path]:
    for folder, subfolders, names in os.walk(home):
        if Path(folder) == home:
            subfolders[:] = [s for s in subfolders if s not in SKIPPED_FOLDERS]
        for name in sorted(names):
            path = Path(folder) / name
            if not is_temp_file(name) and path.is_file() and not path.is_symlink():
                yield path


def _place_of(path: Path, settings: Settings) -> str:
    """The place a file belongs to, for the report: lake, event_log, feature_tables, model_runs, inbox ..."""
    parts = path.relative_to(settings.home).parts
    if parts[:3] == ("feast", "offline", "event_log"):
        return "event_log"
    if parts[:2] == ("feast", "offline"):
        return "feature_tables"
    if parts[:2] == ("models", "runs"):
        return "model_runs"
    if len(parts) == 1:
        return "home"
    return parts[0]


# what may stand right before or after a quoted id: a user "11" is quoted in 'user "11"' or
# "(11, ...)", but not in "2026-11-01", "i11" or "price=11.5"
_BOUNDARY = r"""\s"'`\[\](){}<>,;|"""


def _quote_pattern(user_id: str) -> re.Pattern:
    """The id as a whole token (``u1`` quotes ``u1``, not ``u10``), raw or HTML-escaped."""
    forms = sorted({re.escape(user_id), re.escape(html.escape(user_id))}, key=len, reverse=True)
    return re.compile(rf"(?<![^{_BOUNDARY}])(?:{'|'.join(forms)})(?![^{_BOUNDARY}])")


def _scrub_table(path: Path, is_user: Mask, place: Removed) -> None:
    if path.suffix.lower() == ".parquet":
        rows = _scrub_parquet(path, is_user)
    else:
        rows = _scrub_csv(path, is_user)
    if rows:
        place.rows += rows
        place.files_rewritten += 1


def _scrub_segment(path: Path, is_user: Mask, place: Removed) -> None:
    rows = event_log.scrub_segment(path, is_user)
    if rows:
        place.rows += rows
        place.files_rewritten += 1


def _scrub_parquet(path: Path, is_user: Mask) -> int:
    """Drop the user's rows; a file left empty stays, empty (a lake manifest may name it)."""
    try:
        if "user_id" not in pq.read_schema(path).names:
            return 0
        ids = pq.read_table(path, columns=["user_id"]).column(0).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        log.warning("erasure: cannot read %s as Parquet: %s", path, exc)
        return 0
    mask = is_user(ids).fillna(False).to_numpy(dtype=bool)
    if not mask.any():
        return 0
    table = pq.read_table(path)
    write_parquet_atomically(table.filter(pa.array(~mask)), path)
    return int(mask.sum())


def _scrub_csv(path: Path, is_user: Mask) -> int:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "user_id" not in frame.columns:
        return 0
    mask = is_user(frame["user_id"]).fillna(False).to_numpy(dtype=bool)
    if not mask.any():
        return 0
    out = io.StringIO()
    frame[~mask].to_csv(out, index=False, quoting=csv.QUOTE_MINIMAL)
    write_text_atomically(path, out.getvalue())
    return int(mask.sum())


def _scrub_value(value, pattern: re.Pattern) -> tuple[object, int, bool]:
    """(value without the id, values removed, whether to drop the value from its container)."""
    if isinstance(value, str):
        if not pattern.search(value):
            return value, 0, False
        whole = pattern.fullmatch(value) is not None
        return (None if whole else pattern.sub(REDACTED, value)), 1, whole
    if isinstance(value, list):
        out, removed = [], 0
        for item in value:
            new, n, drop = _scrub_value(item, pattern)
            removed += n
            if not drop:
                out.append(new)
        return out, removed, False
    if isinstance(value, dict):
        out, removed = {}, 0
        for key, item in value.items():
            if isinstance(key, str) and pattern.search(key):
                removed += 1
                continue
            new, n, drop = _scrub_value(item, pattern)
            removed += n
            out[key] = REDACTED if drop else new
        return out, removed, False
    return value, 0, False


def _scrub_json(path: Path, pattern: re.Pattern, place: Removed) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        docs = ([json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix.lower() == ".jsonl"
                else [json.loads(text)])
    except json.JSONDecodeError:  # not JSON after all: treat it as text
        _redact_text(path, pattern, place)
        return
    cleaned, removed = [], 0
    for doc in docs:
        new, n, drop = _scrub_value(doc, pattern)
        removed += n
        cleaned.append(REDACTED if drop else new)
    if not removed:
        return
    if path.suffix.lower() == ".jsonl":
        body = "".join(json.dumps(d, default=str) + "\n" for d in cleaned)
    else:
        body = json.dumps(cleaned[0], indent=2, default=str)
    write_text_atomically(path, body)
    place.values += removed
    place.files_rewritten += 1


def _redact_text(path: Path, pattern: re.Pattern, place: Removed) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    new, n = pattern.subn(REDACTED, text)
    if n:
        write_text_atomically(path, new)
        place.values += n
        place.files_rewritten += 1


def _delete_page(path: Path, pattern: re.Pattern, place: Removed) -> None:
    if pattern.search(path.read_text(encoding="utf-8", errors="replace")):
        path.unlink()
        fsync_path(path.parent)
        place.files_deleted += 1


def _scrub_log(path: Path, pattern: re.Pattern, place: Removed) -> None:
    """Drop the lines quoting the id, in place: the file's writer may still hold it open
    (appending), and a rename would send its next lines to a deleted file."""
    with open(path, "r+b") as handle:
        lines = handle.read().splitlines(keepends=True)
        kept = [line for line in lines if not pattern.search(line.decode("utf-8", errors="replace"))]
        if len(kept) == len(lines):
            return
        handle.seek(0)
        handle.write(b"".join(kept))
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())
    place.lines += len(lines) - len(kept)
    place.files_rewritten += 1


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def _scrub_sqlite(path: Path, user_id: str, place: Removed) -> None:
    """Redact text values quoting the id (rows stay: the schema is another program's)."""
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed, not left holding the old text
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        changed = 0
        for table in tables:
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            for column in columns:
                cursor = conn.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0', (user_id, REDACTED, user_id))
                changed += cursor.rowcount
        conn.commit()
        # a write-ahead log, or the free space of a page, can still hold a deleted row's bytes
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if _bytes_hold(path, user_id):
            try:
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                changed += 1
            except sqlite3.OperationalError as exc:  # busy: another process is in a transaction
                log.warning("erasure: could not compact %s: %s", path, exc)
    if changed:
        place.values += changed
        place.files_rewritten += 1


def _bytes_hold(path: Path, user_id: str) -> bool:
    needle = user_id.encode()
    wal = path.with_name(path.name + "-wal")
    return any(p.is_file() and needle in p.read_bytes() for p in (path, wal))


def _online_sqlite_path(settings: Settings) -> Path | None:
    """The SQLite online store: ``OnlineFeatures.forget_user`` deletes the user's rows there."""
    if settings.online_store.type != "sqlite":
        return None
    return (settings.feast_dir / "online_store.db").resolve()


# --- the ledger's filter on files (hashes only: no raw id needed) -------------------------------


def drop_erased_from_files(paths: list[Path], settings: Settings) -> int:
    """Drop erased users' rows from these Parquet/CSV files (e.g. a quarantined input copy, the
    feature tables before materialize); returns how many rows went."""
    keys = ledger.erased_keys(settings)
    if not keys:
        return 0
    is_erased: Mask = lambda ids: ledger.erased_mask(ids, keys)  # noqa: E731
    place = Removed()
    for path in paths:
        if path.is_file() and path.suffix.lower() in (".parquet", ".csv"):
            _scrub_table(path, is_erased, place)
    return place.rows


def tabular_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".parquet", ".csv"))

