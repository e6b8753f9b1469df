"""Airflow as ShopRec runs it: its environment derived from the settings, and start/stop helpers.

Airflow reads its configuration from ``AIRFLOW_*`` variables when it is first imported, so
this module never imports Airflow. A child process (``airflow db migrate``, ``airflow
standalone``, ``airflow dags test``, ``python -m entrypoints.airflow_env ARGS``) gets
``airflow_env(settings)``: ``shoprec.config.child_env`` (these exact settings) plus the Airflow
variables. Great Expectations must be imported before Airflow, or Airflow's logging setup
makes GX print hundreds of info lines.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from shoprec.config import REPO_ROOT, Settings, child_env, load_settings

DAGS_DIR = REPO_ROOT / "dags"


def airflow_variables(settings: Settings) -> dict[str, str]:
    """The ``AIRFLOW_*`` variables for Airflow running ShopRec under ``settings.home``."""
    port = settings.airflow.port
    variables = {
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # the default 32 starts 32 worker processes on a 2-core machine
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow.parallelism),
        # nothing runs behind the operator's back: a DAG runs once it is unpaused or triggered
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
    }
    if settings.airflow.sql_alchemy_conn:
        variables["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = settings.airflow.sql_alchemy_conn
    variables["AIRFLOW__CORE__EXECUTOR"] = settings.airflow.executor
    if settings.airflow.executor == "CeleryExecutor":
        variables.update(celery_variables(settings))
    return variables


def celery_variables(settings: Settings) -> dict[str, str]:
    """The CeleryExecutor's ``AIRFLOW__CELERY__*`` variables (and how a task names its worker)."""
    celery = settings.airflow.celery
    variables = {
        "AIRFLOW__CELERY__BROKER_URL": celery.broker_url,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(celery.worker_concurrency),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "entrypoints.airflow_env.worker_hostname",
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "entrypoints.celery_worker.CELERY_CONFIG",
    }
    if celery.result_backend:
        variables["AIRFLOW__CELERY__RESULT_BACKEND"] = celery.result_backend
    return variables


def worker_hostname() -> str:
    """The host a task instance records (Airflow's ``hostname_callable``): inside a Celery worker its
    node name (``celery@w1``), so two workers on one machine stay apart in the UI and the REST API;
    elsewhere (scheduler, API server) the machine's name, as Airflow's default."""
    from celery import current_task  # only Celery workers call this with a task running

    request = current_task.request if current_task else None
    return getattr(request, "hostname", None) or socket.getfqdn()


def airflow_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The whole environment of an Airflow child process: ``settings`` as ``SHOPREC_*``
    variables (its tasks load exactly these settings), the Airflow variables, then ``extra``."""
    return child_env(settings, BENTOML_HOME=str(settings.bentoml_home), **airflow_variables(settings), **extra)


def airflow_cli() -> str:
    """The ``airflow`` executable of this interpreter's environment."""
    return str(Path(sys.executable).with_name("airflow"))


def migrate_db(settings: Settings) -> None:
    """Create or upgrade Airflow's metadata database (idempotent)."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    subprocess.run([airflow_cli(), "db", "migrate"], env=airflow_env(settings), check=True, stdout=subprocess.DEVNULL)


def start_airflow(settings: Settings, log_path: Path, **extra_env: str) -> subprocess.Popen:
    """Start ``airflow standalone`` (UI + API, scheduler, DAG processor, triggerer) in its own
    process group, so that ``stop_process_group`` can stop every process it spawns."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = airflow_env(settings, **extra_env)
    # standalone starts its scheduler, DAG processor and triggerer as `airflow ...` found on PATH
    env["PATH"] = os.pathsep.join([str(Path(airflow_cli()).parent), env.get("PATH", "")])
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [airflow_cli(), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: a new process group
        )


def ui_url(settings: Settings) -> str:
    return f"http://localhost:{settings.airflow.port}"


def wait_until_healthy(settings: Settings, timeout_seconds: float = 120.0) -> None:
    """Block until the API server answers its health check; TimeoutError if it does not."""
    deadline = time.monotonic() + timeout_seconds
    url = f"{ui_url(settings)}/api/v2/monitor/health"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise TimeoutError(f"Airflow did not answer at {url} within {timeout_seconds:.0f} s")


def admin_password(settings: Settings) -> str:
    """The simple auth manager's generated password for user ``admin``."""
    path = settings.airflow_home / "simple_auth_manager_passwords.json.generated"
    return json.loads(path.read_text())["admin"]


def main(argv: list[str]) -> None:
    """``python -m entrypoints.airflow_env ARGS``: run ``airflow ARGS`` with ShopRec's configuration
    (e.g. ``standalone``, ``dags list``, ``backfill create ...``)."""
    settings = load_settings()
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    os.execve(airflow_cli(), ["airflow", *argv], airflow_env(settings))


if __name__ == "__main__":
    main(sys.argv[1:])
