"""Airflow on the CeleryExecutor, run for real: the first test of the real scheduler.

Natively on this machine: PostgreSQL holds Airflow's metadata (database ``shoprec_celery_meta``)
and Celery's results (``shoprec_celery``), the local Redis is the broker (database 13), and
``entrypoints.airflow_services.start_services`` starts the API server, the scheduler, the DAG
processor and two ``airflow celery worker``s (``w1``, ``w2``, one task slot each), the commands
of docs/scaling.md. ``shoprec_features`` and then ``shoprec_training`` are triggered through the
REST API (a JWT from ``/auth/token``, as any client gets one); the training run's ``train`` task
is killed (SIGKILL) mid-run, and the scheduler must retry it. A ``bentoml serve`` is the deploy
task's target, as in production.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import pytest
import redis

from entrypoints.airflow_env import admin_password
from entrypoints.airflow_services import start_services
from entrypoints.commands.demo import DEMO_COMPRESSION_OVERRIDES
from entrypoints.inbox import inbox_folder
from entrypoints.serving import start_service
from shoprec.config import load_settings
from shoprec.processes import descendants
from simulator.shop import generate, write_generated
from training.registry import production_version

pytestmark = pytest.mark.scaleout

API_PORT, SERVICE_PORT = 8780, 8781
REDIS_DB = 13
POSTGRES = "postgres@127.0.0.1:5432"
META_DB, RESULTS_DB = "shoprec_celery_meta", "shoprec_celery"
WORKERS = ("w1", "w2")
TOKEN = secrets.token_urlsafe(32)  # the service's API token: the deploy task hot-swaps through /admin
RUN_TIMEOUT = 360.0
TERMINAL = {"success", "failed"}


def postgres(*statements: str) -> None:
    """Run ``statements`` outside a transaction (CREATE/DROP DATABASE refuse one)."""
    db = psycopg2.connect(f"postgresql://{POSTGRES}/postgres")
    try:
        db.autocommit = True
        with db.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        db.close()


def recreate_database(name: str) -> None:
    postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}")


def drop_database(name: str) -> None:
    postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass(frozen=True)
class TaskTry:
    """One try of a task instance, as the REST API reports it."""

    task_id: str
    try_number: int
    state: str | None
    hostname: str
    id: str = ""

    @classmethod
    def from_json(cls, data: dict) -> "TaskTry":
        return cls(data["task_id"], data["try_number"], data["state"], data["hostname"] or "", data.get("id", ""))


@dataclass
class AirflowAPI:
    """The Airflow 3 REST API (``/api/v2``) with a bearer token from ``/auth/token``."""

    url: str
    token: str = ""

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {self.token}"} if self.token else {})},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def log_in(self, password: str) -> None:
        self.token = self.call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.call("GET", f"/api/v2/dags/{dag_id}")
                return
            except urllib.error.HTTPError as error:
                if error.code != 404:
                    raise
            time.sleep(1)
        raise TimeoutError(f"the DAG processor did not serialize {dag_id} within {timeout:.0f} s")

    def trigger(self, dag_id: str, conf: dict) -> str:
        self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[TaskTry]:
        answer = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return [TaskTry.from_json(ti) for ti in answer["task_instances"]]

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[TaskTry]:
        answer = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries")
        return sorted((TaskTry.from_json(t) for t in answer["task_instances"]), key=lambda t: t.try_number)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL:
                return state
            time.sleep(2)
        raise TimeoutError(f"{dag_id} run {run_id} not finished within {timeout:.0f} s: {self.task_instances(dag_id, run_id)}")


@dataclass(frozen=True)
class Killed:
    """The task process the test killed, and the worker it ran under."""

    pid: int
    worker: str
    ti_id: str


def task_process(ti_id: str) -> int | None:
    """The pid of the task process of task instance ``ti_id`` (its title is ``airflow worker -- <id>``)."""
    title = f"airflow worker -- {ti_id}".encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(title):
                return int(cmdline.parent.name)
        except OSError:
            continue
    return None


def kill_mid_run(api: AirflowAPI, dag_id: str, run_id: str, task_id: str, workers: dict[str, int],
                 after_seconds: float = 1.0, timeout: float = 240.0) -> Killed:
    """SIGKILL the process of ``task_id``'s first try once it has run ``after_seconds``; it must be
    a process below one of ``workers`` (name: pid)."""
    deadline, seen_at = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        [ti] = [t for t in api.task_instances(dag_id, run_id) if t.task_id == task_id]
        assert ti.try_number <= 1 and ti.state not in TERMINAL, f"{task_id} ended before it could be killed: {ti}"
        pid = task_process(ti.id) if ti.state == "running" else None
        seen_at = seen_at or (time.monotonic() if pid else None)
        if pid and time.monotonic() - seen_at >= after_seconds:
            owners = [name for name, root in workers.items() if pid in {p.pid for p in descendants(root)}]
            assert len(owners) == 1, f"task process {pid} runs under {owners}, not under one of {sorted(workers)}"
            os.kill(pid, signal.SIGKILL)
            return Killed(pid, owners[0], ti.id)
        time.sleep(0.5)
    raise TimeoutError(f"{task_id} never ran for {after_seconds} s within {timeout:.0f} s")


@dataclass(frozen=True)
class Runs:
    """The two triggered runs (id, final state) and the task process killed in the second."""

    features: str
    features_state: str
    training: str
    training_state: str
    killed: Killed

    def of(self, dag: str) -> tuple[str, str]:
        """``(dag_id, run id)`` of the ``features`` or ``training`` run."""
        return f"shoprec_{dag}", getattr(self, dag)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Fresh databases, the recommender service, and Airflow on two Celery workers; yields the
    settings, the running services and a logged-in API client."""
    recreate_database(META_DB)
    recreate_database(RESULTS_DB)
    redis.Redis(db=REDIS_DB).flushdb()
    home = tmp_path_factory.mktemp("celery-home")
    settings = load_settings(
        home=home, api_token=TOKEN, serving={"port": SERVICE_PORT},
        # one torch thread: beside busy neighbours two threads make the gate's latency read 100x slower
        # no early stopping: a train task long enough to be killed mid-run (40 epochs took ~10 s
        # under a load of 10, and under 3 s on a quiet machine: the task ended between two polls)
        training={"preset": "quick", "num_threads": 1, "overrides": {"max_epochs": 150, "patience": 150}},
        compression=DEMO_COMPRESSION_OVERRIDES,
        promotion={"holdout_fraction": 0.3},  # a hold-out big enough for the benchmark's batches of 32
        airflow={
            "executor": "CeleryExecutor", "port": API_PORT, "retries": 2, "retry_delay_seconds": 1,
            "sql_alchemy_conn": f"postgresql+psycopg2://{POSTGRES}/{META_DB}",
            "celery": {"broker_url": f"redis://127.0.0.1:6379/{REDIS_DB}",
                       "result_backend": f"db+postgresql+psycopg2://{POSTGRES}/{RESULTS_DB}", "worker_concurrency": 1},
        },
    )
    service = start_service(settings, log_path=home / "service.log", wait="no")  # starts while Airflow does
    try:
        # only the runs this test triggers: no scheduled or asset-triggered run joins them
        services = start_services(settings, home / "logs", WORKERS, AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False")
    except BaseException:
        service.stop()
        raise
    try:
        service.wait_until_live()
        api = AirflowAPI(f"http://localhost:{API_PORT}")
        api.log_in(admin_password(settings))
        for dag_id in ("shoprec_features", "shoprec_training"):
            api.wait_for_dag(dag_id)
        yield settings, services, api
    finally:
        services.stop()
        service.stop()
        drop_database(META_DB)
        drop_database(RESULTS_DB)


@pytest.fixture(scope="module")
def runs(cluster):
    """A features run on a generated shop, then a training run whose ``train`` is killed mid-run."""
    settings, services, api = cluster
    started = time.monotonic()
    now = datetime.now(timezone.utc)
    batch = inbox_folder(settings, now, "shop")
    write_generated(generate(3000, seed=3, start=(now - timedelta(days=20)).isoformat(), days=20), batch)
    features = api.trigger("shoprec_features", {"batch": str(batch)})
    features_state = api.wait_for_run("shoprec_features", features)
    training = api.trigger("shoprec_training", {"mode": "full"})
    workers = {name: services.processes[name].pid for name in WORKERS}
    killed = kill_mid_run(api, "shoprec_training", training, "train", workers)
    training_state = api.wait_for_run("shoprec_training", training)
    print(f"features + training on Celery: {time.monotonic() - started:.0f} s")
    return Runs(features, features_state, training, training_state, killed)


def test_both_runs_succeed_through_the_scheduler_and_the_workers(cluster, runs):
    _, _, api = cluster
    for dag, state in (("features", runs.features_state), ("training", runs.training_state)):
        got = {t.task_id: t.state for t in api.task_instances(*runs.of(dag))}
        assert state == "success", got
        assert set(got.values()) == {"success"}, got


def test_tasks_ran_on_both_workers(cluster, runs):
    _, _, api = cluster
    hosts = {t.hostname for dag in ("features", "training") for t in api.task_instances(*runs.of(dag))}
    assert hosts == {f"celery@{name}" for name in WORKERS}


def test_a_task_killed_mid_run_is_retried_and_the_run_succeeds(cluster, runs):
    _, _, api = cluster
    killed = runs.killed
    assert killed.worker in WORKERS
    tries = api.tries(*runs.of("training"), "train")
    assert [t.state for t in tries] == ["failed", "success"], tries
    assert tries[0].hostname == f"celery@{killed.worker}"
    assert task_process(killed.ti_id) is None  # the killed process is gone, not still running beside its retry


def test_the_training_run_deployed_its_model_to_the_service(cluster, runs):
    settings, _, _ = cluster
    version = production_version(settings)
    assert version is not None
    request = urllib.request.Request(f"http://127.0.0.1:{SERVICE_PORT}/model", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["model_version"] == version
