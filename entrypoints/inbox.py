"""The inbox of raw batches the hourly features run takes.

A shop (or ``shoprec generate``) drops each raw batch as one folder
``<settings.inbox_dir>/<arrival time, UTC, %Y%m%dT%H%M%SZ>-<name>/`` in the layout the
``events`` adapter reads (``events.parquet|csv`` and optionally ``items.*``). The features
run for the interval [start, end) takes the batches that arrived in it, so re-running or
backfilling an interval takes exactly the same batches.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from shoprec.config import Settings

ARRIVAL_FORMAT = "%Y%m%dT%H%M%SZ"
INBOX_FORMAT = "events"  # the adapter that reads an inbox folder


def inbox_folder(settings: Settings, arrived_at: datetime, name: str = "batch") -> Path:
    """Where a batch that arrived at ``arrived_at`` goes in the inbox."""
    stamp = arrived_at.astimezone(timezone.utc).strftime(ARRIVAL_FORMAT)
    return settings.inbox_dir / f"{stamp}-{name}"


def arrival_time(folder: Path) -> datetime | None:
    """The arrival time in an inbox folder's name; None for anything else lying there."""
    try:
        return datetime.strptime(folder.name.split("-", 1)[0], ARRIVAL_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def inbox_batches(settings: Settings, start: datetime, end: datetime) -> list[Path]:
    """The inbox folders that arrived in [start, end), oldest first."""
    if not settings.inbox_dir.is_dir():
        return []
    found = []
    for folder in settings.inbox_dir.iterdir():
        arrived = arrival_time(folder)
        if folder.is_dir() and arrived is not None and start <= arrived < end:
            found.append((arrived, folder))
    return [folder for _, folder in sorted(found)]
