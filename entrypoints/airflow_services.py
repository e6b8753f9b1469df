"""Airflow as separate services, one process each, as a production deployment runs it: the API
server, the scheduler, the DAG processor and, with ``airflow.executor: CeleryExecutor``,
``airflow celery worker``s that take the tasks from the Redis queue.

Every process is ``python -m entrypoints.airflow_env ARGS`` (``airflow ARGS`` with the settings'
environment), the commands docs/scaling.md gives; ``start_services`` starts them the way
``tests/test_scaleout_celery.py`` runs them, each in its own process group with its own log.
``python -m entrypoints.airflow_services --worker w1 --worker w2`` starts them all in the
foreground (Ctrl-C stops them).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import click

from entrypoints.airflow_env import airflow_env, migrate_db, wait_until_healthy
from shoprec.config import REPO_ROOT, Settings, load_settings
from shoprec.processes import descendants, kill_all, stop_process_group

# the triggerer only runs deferred tasks, which no ShopRec DAG has
CORE_SERVICES = ("api-server", "scheduler", "dag-processor")


def airflow_command(*args: str) -> list[str]:
    """``airflow ARGS`` under the settings of the environment (``entrypoints.airflow_env``)."""
    return [sys.executable, "-m", "entrypoints.airflow_env", *args]


def worker_args(name: str, concurrency: int, serve_logs: bool = False) -> list[str]:
    """``airflow celery worker`` named ``name`` (its node is ``celery@name``) with ``concurrency`` task slots.
    Without ``serve_logs`` it starts no log server: workers on one machine would all want its port
    (8793), and the API server reads their task logs from the shared ``AIRFLOW_HOME/logs``."""
    return ["celery", "worker", "--celery-hostname", name, "--concurrency", str(concurrency),
            *([] if serve_logs else ["--skip-serve-logs"])]


@dataclass
class AirflowServices:
    """The Airflow processes started for ``settings``, by name, each logging to ``logs/<name>.log``."""

    settings: Settings
    logs: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, args: Sequence[str], **extra_env: str) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                airflow_command(*args), env=airflow_env(self.settings, **extra_env), cwd=REPO_ROOT,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own group: stop takes its children
            )
        self.processes[name] = process
        return process

    def exited(self) -> dict[str, int]:
        """The processes that have exited, with their exit codes."""
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def stop(self, grace_seconds: float = 10.0) -> None:
        # a task process runs in a session of its own: a worker's group does not hold it
        tasks = [pid for p in self.processes.values() for pid in descendants(p.pid)]
        # workers first: a worker stopping warm finishes its task while the API server still takes its result
        workers = [p for name, p in self.processes.items() if name not in CORE_SERVICES]
        core = [p for name, p in self.processes.items() if name in CORE_SERVICES]
        for group in (workers, core):
            with ThreadPoolExecutor(max(1, len(group))) as pool:  # together: each may take its grace period
                list(pool.map(lambda process: stop_process_group(process, grace_seconds), group))
        kill_all(tasks)


def start_services(settings: Settings, logs: Path, workers: Sequence[str] = (), concurrency: int | None = None,
                   api_workers: int = 1, **extra_env: str) -> AirflowServices:
    """Migrate the metadata database, then start the API server, the scheduler, the DAG processor
    and one ``airflow celery worker`` per name in ``workers``; returns once the API server answers.
    ``extra_env``: more variables for every process (e.g. ``AIRFLOW__SCHEDULER__*`` options)."""
    if workers and settings.airflow.executor != "CeleryExecutor":
        raise ValueError("Celery workers need airflow.executor: CeleryExecutor")
    migrate_db(settings)
    services = AirflowServices(settings, logs)
    try:
        services.start("api-server", ["api-server", "--workers", str(api_workers)], **extra_env)
        services.start("scheduler", ["scheduler"], **extra_env)
        services.start("dag-processor", ["dag-processor"], **extra_env)
        for name in workers:
            services.start(name, worker_args(name, concurrency or settings.airflow.celery.worker_concurrency), **extra_env)
        wait_until_healthy(settings, timeout_seconds=180)
    except BaseException:
        services.stop()
        raise
    return services


@click.command()
@click.option("--worker", "workers", multiple=True, metavar="NAME",
              help="start an `airflow celery worker` of this name (repeat for more; needs airflow.executor CeleryExecutor)")
@click.option("--concurrency", type=int, default=None, help="task slots per worker (default: airflow.celery.worker_concurrency)")
@click.option("--logs", type=click.Path(path_type=Path), default=None, help="log folder (default: <home>/reports/airflow)")
def main(workers: tuple[str, ...], concurrency: int | None, logs: Path | None) -> None:
    """Run Airflow as separate services: API server, scheduler, DAG processor, Celery workers.

    Each one is `python -m entrypoints.airflow_env ...` with the settings of the environment
    (SHOPREC_*; Celery workers need SHOPREC_AIRFLOW__EXECUTOR=CeleryExecutor and a PostgreSQL
    SHOPREC_AIRFLOW__SQL_ALCHEMY_CONN). The metadata database is migrated first; they run until
    Ctrl-C or until one of them exits. docs/scaling.md, "Airflow on Celery workers"."""
    settings = load_settings()
    services = start_services(settings, logs or settings.reports_dir / "airflow", workers, concurrency)
    click.echo(f"Airflow at http://localhost:{settings.airflow.port}; logs in {services.logs}; Ctrl-C stops")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while not services.exited():
            time.sleep(2)
        raise click.ClickException(f"exited: {services.exited()}; see the logs in {services.logs}")
    finally:
        services.stop()


if __name__ == "__main__":
    main()
