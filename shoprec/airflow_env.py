"""Airflow as ShopRec runs it: the environment derived from Settings, and start/stop helpers.

Airflow reads its configuration from ``AIRFLOW_*`` variables when it is first imported, so
this module never imports Airflow itself: call ``apply_airflow_env(settings)`` before the
first ``import airflow`` (tests, ``shoprec demo``), or pass ``airflow_env(settings)`` to a
child process. Great Expectations must be imported before Airflow, or Airflow's logging
setup makes GX print hundreds of info lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from shoprec.config import REPO_ROOT, Settings

DAGS_DIR = REPO_ROOT / "dags"


def airflow_env(settings: Settings) -> dict[str, str]:
    """The ``AIRFLOW_*`` (and related) variables for Airflow running ShopRec under ``settings.home``."""
    port = settings.airflow.port
    env = {
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
        "SHOPREC_HOME": str(settings.home),
        "SHOPREC_PROFILE": settings.profile,
        "BENTOML_HOME": str(settings.bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
    }
    if settings.airflow.sql_alchemy_conn:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = settings.airflow.sql_alchemy_conn
    return env


def apply_airflow_env(settings: Settings) -> None:
    """Put ``airflow_env(settings)`` into this process's environment (before importing Airflow)."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    os.environ.update(airflow_env(settings))


def airflow_cli() -> str:
    """The ``airflow`` executable of this interpreter's environment."""
    return str(Path(sys.executable).with_name("airflow"))


def migrate_db(settings: Settings) -> None:
    """Create or upgrade Airflow's metadata database (idempotent)."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [airflow_cli(), "db", "migrate"],
        env={**os.environ, **airflow_env(settings)},
        check=True,
        stdout=subprocess.DEVNULL,
    )


def start_airflow(settings: Settings, log_path: Path) -> subprocess.Popen:
    """Start ``airflow standalone`` (UI + API, scheduler, DAG processor, triggerer) in its own
    process group, so that ``stop_process_group`` can stop every process it spawns."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # standalone starts its scheduler, DAG processor and triggerer as `airflow ...` found on PATH
    path = os.pathsep.join([str(Path(airflow_cli()).parent), os.environ.get("PATH", "")])
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [airflow_cli(), "standalone"],
            env={**os.environ, **airflow_env(settings), "PATH": path},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: a new process group
        )


def stop_process_group(process: subprocess.Popen, grace_seconds: float = 20.0) -> None:
    """Stop the whole process group: SIGTERM alone leaves the scheduler and workers running."""
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_seconds)
            if not _group_alive(group):
                return
            time.sleep(1)
            if not _group_alive(group):
                return
        except subprocess.TimeoutExpired:
            pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


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


def api_token(settings: Settings) -> str:
    """A bearer token for Airflow's REST API (``POST /auth/token`` as admin)."""
    body = json.dumps({"username": "admin", "password": admin_password(settings)}).encode()
    request = urllib.request.Request(
        f"{ui_url(settings)}/auth/token",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["access_token"]


def main(argv: list[str]) -> None:
    """``python -m shoprec.airflow_env ARGS``: run ``airflow ARGS`` with ShopRec's configuration
    (e.g. ``standalone``, ``dags list``, ``backfill create ...``)."""
    from shoprec.config import load_settings

    settings = load_settings()
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    os.execve(airflow_cli(), ["airflow", *argv], {**os.environ, **airflow_env(settings)})


if __name__ == "__main__":
    main(sys.argv[1:])
