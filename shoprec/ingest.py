"""The ingestion step: read -> conform -> validate -> clean -> lake, or quarantine.

A batch is read in bounded chunks (``settings.ingest.chunk_rows``), so a file larger than
memory ingests: each chunk is conformed, checked by the gate (every row; ``BatchGate`` sums
the chunks' results) and staged on disk (``shoprec.staging``); once the last chunk passed,
the batch-wide checks run, DuckDB cleans the staged batch out of core, and the lake writer
streams it into the day files. The gate judges the batch as delivered (conformed, before
cleaning), so cleaning can never hide a problem; what reaches the lake is the cleaned batch.
Any failed chunk refuses the whole batch: nothing of it reaches the lake. The lake does not
depend on the chunk size (a test ingests one file whole and in small chunks). The batch id
is the content hash of the conformed events and catalog, the same for any chunking. A refused batch lands
in ``<quarantine>/<batch id or time-name>/`` with a copy of the raw input, the validation
result JSON, a Data Docs site (when Great Expectations ran) and a one-page report.html;
nothing of it is written to the lake. An accepted batch with catalog rows also brings
their availability and price to the online store at once
(``shoprec.features.store.push_catalog_state``), so /recommend follows a catalog change
within seconds; a catalog-only batch (items, no events) is accepted like any other.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from shoprec import lake
from shoprec.config import Settings
from shoprec.durable import write_text_atomically
from shoprec.erasure import drop_erased_from_files, tabular_files
from shoprec.features.store import push_catalog_state
from shoprec.ledger import drop_erased, erased_keys
from shoprec.adapters import open_source
from shoprec.reading import ReadOptions
from shoprec.schema import empty_items, event_row_hashes, item_row_hashes
from shoprec.staging import Staging
from shoprec.validation import BatchGate, ValidationResult


@dataclass
class IngestReport:
    status: str  # accepted | refused | valid (validate only, nothing written)
    format: str
    source: str
    batch_id: str | None = None
    stage: str = ""  # where a refused batch failed: read | validate
    failures: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    cleaning: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    quarantine: str | None = None
    validation: str | None = None  # the recorded validation result JSON
    docs: str | None = None  # Data Docs index.html
    lake_files: list[str] = field(default_factory=list)
    item_states_pushed: int | None = None  # catalog items written online; None: Feast not set up yet
    layout: dict = field(default_factory=dict)  # how the source was read (files, delimiter found, columns)

    @property
    def ok(self) -> bool:
        return self.status != "refused"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not self.ok:
            lines = [f"REFUSED {self.format} batch {self.batch_id or ''} from {self.source} ({self.stage} failed):"]
            lines += [f"  - {f}" for f in self.failures]
            lines.append(f"quarantined in {self.quarantine}" if self.quarantine else "nothing was written")
            return "\n".join(lines)
        c = self.counts
        line = (f"{self.status.upper()} {self.format} batch {self.batch_id}: {c.get('events', 0):,} events, "
                f"{c.get('users', 0):,} users, {c.get('items', 0):,} items; catalog {c.get('catalog_items', 0):,} "
                f"items ({c.get('titles', 0):,} with titles)")
        removed = {k: v for k, v in self.cleaning.items() if k not in ("rows_in", "rows_out") and v}
        if removed:
            line += "\ncleaning: " + ", ".join(f"{k}={v:,}" for k, v in removed.items())
        if self.item_states_pushed is not None:
            line += f"\nonline item state: {self.item_states_pushed:,} item(s) changed"
        if self.validation:
            line += f"\nvalidation report: {self.validation}"
        return line


class _ContentDigest:
    """``Batch.batch_id`` computed chunk by chunk: the row hashes of the events, then of the
    catalog, fed in order (SHA-256 of a concatenation equals SHA-256 fed in parts)."""

    def __init__(self):
        self._digest = hashlib.sha256()

    def add_events(self, events: pd.DataFrame) -> None:
        self._digest.update(event_row_hashes(events))

    def batch_id(self, items: pd.DataFrame) -> str:
        digest = self._digest.copy()
        digest.update(item_row_hashes(items))
        return digest.hexdigest()[:16]


def known_catalog(items: pd.DataFrame, settings: Settings) -> set[str] | None:
    """The batch's catalog plus the lake's; None when no catalog is known at all."""
    known = set(items["item_id"].dropna()) | set(lake.read_items(settings.lake_dir)["item_id"].dropna())
    return known or None


def _quarantine_name(path: Path, batch_id: str | None) -> str:
    if batch_id:
        return batch_id
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{re.sub(r'[^A-Za-z0-9._-]', '_', path.name)}"


def quarantine(path: Path, report: IngestReport, settings: Settings, result: ValidationResult | None,
               staging: Path | None) -> Path:
    """Move a refused batch aside: raw input copy, result JSON, Data Docs, report.html."""
    target = settings.quarantine_dir / _quarantine_name(path, report.batch_id)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if path.is_dir():
        shutil.copytree(path, target / "input")
    else:
        (target / "input").mkdir()
    for source in _input_files(path, report.layout):
        shutil.copy2(source, target / "input" / source.name)
    drop_erased_from_files(tabular_files(target / "input"), settings)  # the copy keeps no erased user
    if staging is not None and (staging / "data-docs").exists():
        shutil.move(staging / "data-docs", target / "data-docs")
        report.docs = str(target / "data-docs" / "index.html")
    body = result.to_dict() if result else {"success": False, "stage": report.stage, "failures": report.failures}
    body["docs"] = report.docs
    write_text_atomically(target / "validation.json", json.dumps(body, indent=2, default=str))
    write_text_atomically(target / "report.html", _report_html(report))
    report.quarantine = str(target)
    report.validation = str(target / "validation.json")
    return target


def _input_files(path: Path, layout: dict) -> list[Path]:
    """The raw files of a batch that its path does not already hold: the file itself, the files
    a glob matched, a ``--catalog`` file (as far as the source was opened; else ``path`` alone)."""
    named = [Path(f) for part in layout.get("parts", []) for f in part.get("files", [])]
    named += [Path(f) for f in (layout.get("catalog") or {}).get("files", [])]
    files = [path] if path.is_file() else []
    files += [f for f in named if f.is_file() and not (path.is_dir() and f.resolve().is_relative_to(path.resolve()))]
    return list(dict.fromkeys(files))


def _report_html(report: IngestReport) -> str:
    items = "".join(f"<li>{html.escape(f)}</li>" for f in report.failures)
    docs = '<p><a href="data-docs/index.html">Great Expectations Data Docs</a></p>' if report.docs else ""
    return (f"<!doctype html><meta charset='utf-8'><title>Refused batch</title>"
            f"<h1>Refused {html.escape(report.format)} batch</h1><p>source: {html.escape(report.source)}</p>"
            f"<p>failed at: {html.escape(report.stage)}</p><ul>{items}</ul>{docs}")


class _Refused(Exception):
    """The batch cannot go on: where (read | validate) and why."""

    def __init__(self, stage: str, failures: list[str], result: ValidationResult | None = None):
        super().__init__("; ".join(failures))
        self.stage, self.failures, self.result = stage, failures, result


def _run(path, fmt: str, settings: Settings, write: bool, options: ReadOptions | None, catalog: Path | None,
         catalog_options: ReadOptions | None) -> IngestReport:
    path = Path(path)
    report = IngestReport(status="refused", format=fmt, source=str(path))
    with tempfile.TemporaryDirectory(prefix="shoprec-staging-", dir=settings.ingest.staging_dir) as folder:
        folder = Path(folder)
        try:
            with Staging(folder / "events", settings.ingest) as staging:
                checked = _stage_and_check(path, fmt, settings, write, options, catalog, catalog_options,
                                           staging, report, folder / "data-docs")
                report.cleaning = staging.clean(settings.cleaning).to_dict()
                if staging.rows and not report.cleaning["rows_out"]:
                    raise _Refused("validate", [
                        "events: cleaning removed every event (all duplicates, bots or outside the k-core)"], checked.result)
                report.status = "accepted" if write else "valid"
                report.counts = {**staging.cleaned_counts(), "catalog_items": int(len(checked.items)),
                                 "titles": int(checked.items["title"].notna().sum())}
                if write:
                    _accept(staging, checked, report, settings, folder / "data-docs")
        except _Refused as refused:
            report.status, report.stage, report.failures = "refused", refused.stage, refused.failures
            if write:
                quarantine(path, report, settings, refused.result, folder)
    return report


@dataclass(frozen=True)
class _Checked:
    """A batch that passed the gate: its verdict and its catalog (the events wait in staging)."""

    result: ValidationResult
    items: pd.DataFrame


def _open(path: Path, fmt: str, options: ReadOptions | None, catalog: Path | None, catalog_options: ReadOptions | None):
    try:
        return open_source(fmt, path, options or ReadOptions(), catalog=catalog, catalog_options=catalog_options)
    except Exception as exc:  # noqa: BLE001 - malformed input must be quarantined, not crash the step
        raise _Refused("read", [str(exc) or type(exc).__name__]) from exc


def _stage_and_check(path, fmt, settings, write, options, catalog, catalog_options, staging: Staging,
                     report: IngestReport, docs_dir: Path) -> _Checked:
    """Read every chunk through the gate into staging; the verdict on the whole batch."""
    source = _open(path, fmt, options, catalog, catalog_options)
    report.layout, report.metadata = source.layout.to_dict(), dict(source.metadata)
    try:
        items = source.items()
    except Exception as exc:  # noqa: BLE001 - see _open
        raise _Refused("read", [str(exc) or type(exc).__name__]) from exc
    items = empty_items() if items is None else items
    gate = BatchGate(settings, known_catalog(items, settings), [r["events"] for r in lake.batch_records(settings.lake_dir)])
    digest, erased = _ContentDigest(), erased_keys(settings)
    had_erased = False
    try:
        for chunk in tqdm(source.event_chunks(settings.ingest.chunk_rows), desc=f"ingest {path.name}", unit=" chunks",
                          disable=None, leave=False):
            kept = drop_erased(chunk, settings, keys=erased)  # before the gate, its samples and Data Docs see them
            had_erased |= kept is not chunk
            digest.add_events(kept)
            gate.check_events(kept)
            staging.append(kept)
    except Exception as exc:  # noqa: BLE001 - a chunk that cannot be read refuses the whole batch
        raise _Refused("read", [str(exc) or type(exc).__name__]) from exc
    if had_erased and write and path.resolve().is_relative_to(settings.home.resolve()):
        drop_erased_from_files(tabular_files(path) if path.is_dir() else [path], settings)  # e.g. a late inbox batch
    report.batch_id = digest.batch_id(items)
    result = gate.finish(staging.duplicate_rows(), items, docs_dir, judge_events=bool(staging.rows) or not len(items))
    if not result.success:
        raise _Refused("validate", result.failures, result)
    return _Checked(result, items)


def _accept(staging: Staging, checked: _Checked, report: IngestReport, settings: Settings, docs_dir: Path) -> None:
    """Record the passing validation next to the batch id, stream the cleaned batch into the
    lake, then push its catalog state online."""
    record_dir = settings.validation_dir / report.batch_id
    if record_dir.exists():
        shutil.rmtree(record_dir)
    record_dir.mkdir(parents=True)
    if docs_dir.exists():
        shutil.move(docs_dir, record_dir / "data-docs")
        report.docs = str(record_dir / "data-docs" / "index.html")
    body = {**checked.result.to_dict(), "docs": report.docs, "batch_id": report.batch_id}
    write_text_atomically(record_dir / "validation.json", json.dumps(body, indent=2, default=str))
    report.validation = str(record_dir / "validation.json")
    items = checked.items
    metadata = {**report.metadata, "cleaning": report.cleaning}
    report.lake_files = lake.write_stream(settings.lake_dir, report.batch_id, staging.cleaned_batches(), items,
                                          report.source, metadata)["files"]
    if len(items):
        report.item_states_pushed = push_catalog_state(settings, items)


def ingest(path, fmt: str, settings: Settings, options: ReadOptions | None = None, *,
           catalog: Path | None = None, catalog_options: ReadOptions | None = None) -> IngestReport:
    """Ingest one batch: into the lake if it passes the gate, into quarantine if not."""
    return _run(path, fmt, settings, True, options, catalog, catalog_options)


def validate_only(path, fmt: str, settings: Settings, options: ReadOptions | None = None, *,
                  catalog: Path | None = None, catalog_options: ReadOptions | None = None) -> IngestReport:
    """Run the same read, gate and cleaning without writing anything (``shoprec validate``,
    ``shoprec ingest --dry-run``)."""
    return _run(path, fmt, settings, False, options, catalog, catalog_options)
