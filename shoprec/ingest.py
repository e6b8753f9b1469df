"""The ingestion step: read -> conform -> clean -> validate -> lake, or quarantine.

The gate judges the batch as delivered (conformed, before cleaning), so cleaning can
never hide a problem; what reaches the lake is the cleaned batch. A refused batch lands
in ``<quarantine>/<batch id or time-name>/`` with a copy of the raw input, the validation
result JSON, a Data Docs site (when Great Expectations ran) and a one-page report.html;
nothing of it is written to the lake. An accepted batch with catalog rows also brings
their availability and price to the online store at once
(``shoprec.features.store.push_catalog_state``), so /recommend follows a catalog change
within seconds; a catalog-only batch (items, no events) is accepted like any other.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from shoprec import lake
from shoprec.adapters import read_batch
from shoprec.adapters.base import Batch
from shoprec.cleaning import clean_events
from shoprec.config import Settings
from shoprec.durable import write_text_atomically
from shoprec.erasure import drop_erased_from_files, tabular_files
from shoprec.features.store import push_catalog_state
from shoprec.ledger import drop_erased
from shoprec.validation import ValidationResult, validate_batch


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


def count(batch: Batch) -> dict:
    return {
        "events": int(len(batch.events)),
        "users": int(batch.events["user_id"].nunique()),
        "items": int(batch.events["item_id"].nunique()),
        "catalog_items": int(len(batch.items)),
        "titles": int(batch.items["title"].notna().sum()),
        "first_event": batch.events["timestamp"].min().isoformat() if len(batch.events) else None,
        "last_event": batch.events["timestamp"].max().isoformat() if len(batch.events) else None,
    }


def known_catalog(batch: Batch, settings: Settings) -> set[str] | None:
    """The batch's catalog plus the lake's; None when no catalog is known at all."""
    known = set(batch.items["item_id"].dropna()) | set(lake.read_items(settings.lake_dir)["item_id"].dropna())
    return known or None


def _check(batch: Batch, cleaned_events: pd.DataFrame, settings: Settings, docs_dir: Path | None) -> ValidationResult:
    recent = [r["events"] for r in lake.batch_records(settings.lake_dir)]
    result = validate_batch(batch.events, batch.items, settings, known_catalog(batch, settings), recent, docs_dir)
    if result.success and len(batch.events) and len(cleaned_events) == 0:
        result.success = False
        result.failures.append("events: cleaning removed every event (all duplicates, bots or outside the k-core)")
    return result


def _read(path: Path, fmt: str, options: dict) -> tuple[Batch | None, str]:
    """The batch, or None and why it could not be read (any failure of raw input ends here)."""
    try:
        return read_batch(fmt, path, **options), ""
    except Exception as exc:  # noqa: BLE001 - malformed input must be quarantined, not crash the step
        return None, str(exc) or type(exc).__name__


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
    elif path.exists():
        (target / "input").mkdir()
        shutil.copy2(path, target / "input" / path.name)
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


def _report_html(report: IngestReport) -> str:
    items = "".join(f"<li>{html.escape(f)}</li>" for f in report.failures)
    docs = '<p><a href="data-docs/index.html">Great Expectations Data Docs</a></p>' if report.docs else ""
    return (f"<!doctype html><meta charset='utf-8'><title>Refused batch</title>"
            f"<h1>Refused {html.escape(report.format)} batch</h1><p>source: {html.escape(report.source)}</p>"
            f"<p>failed at: {html.escape(report.stage)}</p><ul>{items}</ul>{docs}")


def _without_erased_users(batch: Batch, settings: Settings) -> tuple[Batch, bool]:
    """The batch without the events of users the erasure ledger holds, before anything (the gate's
    samples and Data Docs included) sees them: a re-run or late batch never brings them back.
    Also whether there were any (then a source file under SHOPREC_HOME is cleaned too)."""
    events = drop_erased(batch.events, settings)
    if events is batch.events:
        return batch, False
    return Batch(events=events, items=batch.items, source=batch.source, metadata=batch.metadata), True


def _run(path, fmt: str, settings: Settings, write: bool, options: dict) -> IngestReport:
    path = Path(path)
    report = IngestReport(status="refused", format=fmt, source=str(path))
    batch, error = _read(path, fmt, options)
    if batch is None:
        report.stage, report.failures = "read", [error]
        if write:
            quarantine(path, report, settings, None, None)
        return report
    batch, had_erased = _without_erased_users(batch, settings)
    if had_erased and write and path.resolve().is_relative_to(settings.home.resolve()):
        drop_erased_from_files(tabular_files(path) if path.is_dir() else [path], settings)  # e.g. a late inbox batch
    report.batch_id, report.metadata = batch.batch_id, batch.metadata
    cleaned_events, cleaning = clean_events(batch.events, settings.cleaning)
    report.cleaning = cleaning.to_dict()
    staging = settings.validation_dir / f".staging-{uuid.uuid4().hex}" if write else None
    try:
        result = _check(batch, cleaned_events, settings, staging / "data-docs" if staging else None)
        if not result.success:
            report.stage, report.failures = "validate", result.failures
            if write:
                quarantine(path, report, settings, result, staging)
            return report
        cleaned = Batch(events=cleaned_events, items=batch.items, source=batch.source,
                        metadata={**batch.metadata, "cleaning": report.cleaning})
        report.status, report.counts = ("accepted" if write else "valid"), count(cleaned)
        if write:
            _accept(cleaned, report, settings, result, staging)
        return report
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging)


def _accept(cleaned: Batch, report: IngestReport, settings: Settings, result: ValidationResult, staging: Path) -> None:
    """Record the passing validation next to the batch id, write the batch to the lake, then
    push its catalog state online."""
    report.batch_id = cleaned.batch_id
    record_dir = settings.validation_dir / report.batch_id
    if record_dir.exists():
        shutil.rmtree(record_dir)
    record_dir.mkdir(parents=True)
    if (staging / "data-docs").exists():
        shutil.move(staging / "data-docs", record_dir / "data-docs")
        report.docs = str(record_dir / "data-docs" / "index.html")
    body = {**result.to_dict(), "docs": report.docs, "batch_id": report.batch_id}
    write_text_atomically(record_dir / "validation.json", json.dumps(body, indent=2, default=str))
    report.validation = str(record_dir / "validation.json")
    report.lake_files = lake.write_batch(settings.lake_dir, cleaned)["files"]
    if len(cleaned.items):
        report.item_states_pushed = push_catalog_state(settings, cleaned.items)


def ingest(path, fmt: str, settings: Settings, **options) -> IngestReport:
    """Ingest one batch: into the lake if it passes the gate, into quarantine if not."""
    return _run(path, fmt, settings, write=True, options=options)


def validate_only(path, fmt: str, settings: Settings, **options) -> IngestReport:
    """Run the same read, clean and gate without writing anything (``shoprec validate``)."""
    return _run(path, fmt, settings, write=False, options=options)
