"""What every ShopRec DAG task shares and no step owns: its Airflow defaults (retries with
exponential back-off, a timeout, the failure alert) and the asset that links the two DAGs.

Plain functions with no Airflow import: ``dags/`` wires them through ``entrypoints.steps``.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from shoprec.config import Settings, load_settings

log = logging.getLogger(__name__)

FEATURES_ASSET_NAME = "shoprec_features"  # updated by the features DAG, schedules the training DAG


def task_defaults(settings: Settings) -> dict[str, Any]:
    """Airflow ``default_args`` of every ShopRec task."""
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


def alert_on_failure(context: dict[str, Any]) -> Path:
    """Airflow ``on_failure_callback``: write a clear alert (log line + JSON file under
    ``settings.alerts_dir``) and POST it to ``settings.airflow.alert_webhook_url`` if set."""
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
        url, data=json.dumps(payload, default=str).encode(), headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except OSError as error:
        log.error("alert webhook %s failed: %s", url, error)
