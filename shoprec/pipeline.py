"""Glue the orchestrator needs and no step owns: the inbox of raw batches, and failure alerts.

Plain functions with no Airflow import (``dags/`` wires them; ``shoprec demo`` and tests call
them directly).

The inbox: a shop (or ``shoprec generate``) drops each raw batch as one folder
``<settings.inbox_dir>/<arrival time, UTC, %Y%m%dT%H%M%SZ>-<name>/`` in the layout the
``events`` adapter reads (``events.parquet|csv`` and optionally ``items.*``). The hourly
features run for the interval [start, end) takes the batches that arrived in it, so
re-running or backfilling an interval takes exactly the same batches.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from shoprec.config import Settings

log = logging.getLogger(__name__)

ARRIVAL_FORMAT = "%Y%m%dT%H%M%SZ"
INBOX_FORMAT = "events"  # the adapter that reads an inbox folder
FEATURES_ASSET_NAME = "shoprec_features"  # updated by the features DAG, schedules the training DAG


def task_defaults(settings: Settings) -> dict[str, Any]:
    """Airflow ``default_args`` of every ShopRec task: retries with exponential back-off,
    an execution timeout, and the failure alert."""
    delay = timedelta(seconds=settings.airflow.retry_delay_seconds)
    return {
        "owner": "shoprec",
        "retries": settings.airflow.retries,
        "retry_delay": delay,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": delay * 16,
        "execution_timeout": timedelta(minutes=settings.airflow.task_timeout_minutes),
        "on_failure_callback": alert_on_failure,
    }


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


def enough_new_events(settings: Settings, triggering_asset_events: Any) -> bool:
    """Whether a training run should go on: always when scheduled (no triggering asset events),
    otherwise once the feature updates that triggered it brought ``min_new_events_for_training``."""
    events = [event for batch in (triggering_asset_events or {}).values() for event in batch]
    if not events:
        return True
    new = sum(int((event.extra or {}).get("new_events", 0)) for event in events)
    log.info("%d new events since the last training run (need %d)", new, settings.airflow.min_new_events_for_training)
    return new >= settings.airflow.min_new_events_for_training


def alert_on_failure(context: dict[str, Any]) -> Path:
    """Airflow ``on_failure_callback``: write a clear alert (log line + JSON file under
    ``settings.alerts_dir``) and POST it to ``settings.airflow.alert_webhook_url`` if set."""
    from shoprec.config import load_settings

    ti = context.get("ti") or context.get("task_instance")
    alert = {
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(ti, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
        "error": repr(context.get("exception")),
        "time": datetime.now(timezone.utc).isoformat(),
    }
    return write_alert(load_settings(), alert)


def write_alert(settings: Settings, alert: dict[str, Any]) -> Path:
    """Record one failure alert; a broken webhook is logged, never raised (the task already failed)."""
    message = f"ShopRec ALERT: {alert.get('dag_id')}.{alert.get('task_id')} failed in run {alert.get('run_id')}: {alert.get('error')}"
    log.error(message)
    settings.alerts_dir.mkdir(parents=True, exist_ok=True)
    safe_run = str(alert.get("run_id", "run")).replace(":", "").replace("+", "")
    path = settings.alerts_dir / f"{alert.get('dag_id')}.{alert.get('task_id')}.{safe_run}.json"
    path.write_text(json.dumps({**alert, "message": message}, indent=2, default=str))
    if settings.airflow.alert_webhook_url:
        _post_webhook(settings.airflow.alert_webhook_url, {"text": message, **alert})
    return path


def _post_webhook(url: str, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except OSError as error:
        log.error("alert webhook %s failed: %s", url, error)

