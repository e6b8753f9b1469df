"""Deployment wiring: the Airflow environment derived from Settings, docker-compose.yml
(checked with the compose client where it is installed; no engine runs containers here),
the release check and the rollback of a failed deploy, a training run's settings."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import yaml

from entrypoints.airflow_env import DAGS_DIR, airflow_env, airflow_variables, worker_hostname
from entrypoints.steps import NotServable, release, run_settings
from services.client import ServiceError, deploy, verify_deployment
from shoprec.config import REPO_ROOT, load_hyperparameters, load_settings
from training.artifact import save_artifact
from training.data import ItemVocab
from training.models import new_model
from training.registry import production_version, promote, promotion_history
from tests.tools import compose_config

AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker"}


def test_airflow_env_follows_the_settings(home):
    settings = load_settings(airflow={"port": 8099, "sql_alchemy_conn": "postgresql+psycopg2://u@db:5432/airflow"})
    env = airflow_env(settings)
    assert env["AIRFLOW_HOME"] == str(home / "airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_DIR)
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:8099/execution/"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@db:5432/airflow")
    assert env["SHOPREC_HOME"] == str(home) and env["BENTOML_HOME"] == str(home / "bentoml")
    # the child loads exactly these settings
    assert json.loads(env["SHOPREC_AIRFLOW"])["port"] == 8099


def test_an_airflow_child_loads_the_settings_it_is_given_not_inherited_variables(home, monkeypatch):
    monkeypatch.setenv("SHOPREC_AIRFLOW__PORT", "1111")  # nested: it would win over the SHOPREC_AIRFLOW section
    settings = load_settings(airflow={"port": 8099})
    child = subprocess.run([sys.executable, "-c", "from shoprec.config import load_settings; print(load_settings().airflow.port)"],
                           env=airflow_env(settings), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "8099"


def test_in_process_airflow_gets_only_the_airflow_variables(home):
    variables = airflow_variables(load_settings())
    assert all(name.startswith("AIRFLOW") for name in variables)
    assert variables["AIRFLOW_HOME"] == str(home / "airflow")


def test_embedded_defaults_leave_airflow_on_sqlite(home):
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in airflow_variables(load_settings())


def test_the_executor_setting_switches_airflow_to_celery(home):
    local = airflow_variables(load_settings())
    assert local["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and not any("CELERY" in name for name in local)
    settings = load_settings(airflow={
        "executor": "CeleryExecutor", "sql_alchemy_conn": "postgresql+psycopg2://u@db:5432/airflow",
        "celery": {"broker_url": "redis://r:6379/13", "result_backend": "db+postgresql+psycopg2://u@db:5432/results",
                   "worker_concurrency": 3}})
    variables = airflow_variables(settings)
    assert variables["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert variables["AIRFLOW__CELERY__BROKER_URL"] == "redis://r:6379/13"
    assert variables["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg2://u@db:5432/results"
    assert variables["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "3"
    assert variables["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] == "entrypoints.celery_worker.CELERY_CONFIG"
    # outside a Celery task (scheduler, API server) a task's host is the machine's name
    assert variables["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "entrypoints.airflow_env.worker_hostname"
    assert worker_hostname() == socket.getfqdn()


def test_celery_workers_refuse_sqlite_metadata(home):
    with pytest.raises(ValueError, match="CeleryExecutor needs airflow.sql_alchemy_conn"):
        load_settings(airflow={"executor": "CeleryExecutor"})


def test_compose_file_is_valid_and_complete():
    result = compose_config()
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"postgres", "redis", "recommender", "airflow-init"} | AIRFLOW_SERVICES <= set(services)
    for name in {"postgres", "redis", "recommender"} | AIRFLOW_SERVICES:
        assert "healthcheck" in services[name], name
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        # Airflow and the settings the tasks load name the same executor, queue and results
        assert env["AIRFLOW__CORE__EXECUTOR"] == env["SHOPREC_AIRFLOW__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"] == env["SHOPREC_AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/1"
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
        assert env["SHOPREC_PROFILE"] == "production"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["recommender"]["command"][:2] == ["bentoml", "serve"]
    assert services["airflow-worker"]["command"] == ["airflow", "celery", "worker"]
    assert services["airflow-worker"]["deploy"]["replicas"] == 2


def test_compose_file_commits_no_password(tmp_path):
    """Without an env file that sets them, the secrets are missing and compose refuses."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose_config(str(empty))
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# --- release: verify before promote, roll back a failed deploy ---------------------------------


def saved_version(settings, version: str) -> str:
    """A tiny real model version (what the registry verifies and the service loads)."""
    items = [f"i{n}" for n in range(6)]
    hyperparameters = load_hyperparameters("sasrec", "quick", {"use_text": False, "hidden": 8, "inner": 16,
                                                               "layers": 1, "heads": 1, "max_len": 5})
    net = new_model(hyperparameters, len(ItemVocab(items)), None)
    save_artifact(net, items, settings.models_dir, {"protocol": "full"}, version=version)
    return version


def test_a_version_that_cannot_load_is_never_promoted(settings):
    promote(saved_version(settings, "good-v1"), settings)
    broken = settings.models_dir / saved_version(settings, "broken-v2") / "model.safetensors"
    broken.write_bytes(broken.read_bytes()[:-8])  # a truncated copy: its checksum no longer matches
    with pytest.raises(NotServable, match="broken-v2 cannot be served"):
        release("broken-v2", settings)
    assert production_version(settings) == "good-v1"
    assert not settings.bentoml_home.exists()  # no model-store copy is made any more


def dead_url() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_failed_deploy_or_smoke_test_rolls_production_back_through_the_registry(settings):
    promote(saved_version(settings, "champion-v1"), settings)
    promote(saved_version(settings, "challenger-v2"), settings)
    with pytest.raises(ServiceError, match="rolled back to champion-v1"):
        deploy(settings, "challenger-v2", url=dead_url())
    assert production_version(settings) == "champion-v1"
    promote("challenger-v2", settings)
    with pytest.raises(ServiceError, match="rolled back to champion-v1"):
        verify_deployment(settings, "challenger-v2", url=dead_url())
    assert production_version(settings) == "champion-v1"
    assert [r.action for r in promotion_history(settings)] == ["promote", "promote", "rollback", "promote", "rollback"]


def test_a_failed_first_deploy_leaves_no_production_version(settings):
    promote(saved_version(settings, "first-v1"), settings)
    with pytest.raises(ServiceError, match="production cleared"):
        deploy(settings, "first-v1", url=dead_url())
    assert production_version(settings) is None


def test_a_version_promoted_meanwhile_is_not_rolled_back(settings):
    promote(saved_version(settings, "ours-v1"), settings)
    promote(saved_version(settings, "theirs-v2"), settings)  # an operator promoted another version since
    with pytest.raises(ServiceError, match="nothing rolled back"):
        deploy(settings, "ours-v1", url=dead_url())
    assert production_version(settings) == "theirs-v2"


# --- a training run's settings from its DAG params --------------------------------------------


def test_run_settings_take_preset_overrides_and_compression_from_the_params(settings):
    run = run_settings(settings, {"mode": "full", "preset": "quick", "overrides": {"max_epochs": 3},
                                  "compression": {"distill_epochs": 1}})
    assert run.training.preset == "quick" and run.hyperparameters.max_epochs == 3
    assert run.compression.distill_epochs == 1 and run.compression.rounds_b1 == settings.compression.rounds_b1
    assert run_settings(settings, {"profile": "quick"}).training.preset == "quick"  # the old name of preset
    assert run_settings(settings, {}) == settings


@pytest.mark.parametrize("params, complaint", [
    ({"compression": {"distil_epochs": 1}}, "unknown compression option"),
    ({"overrides": {"max_epoch": 3}}, "unknown hyperparameter"),
    ({"preset": "huge"}, "preset"),
])
def test_run_settings_refuse_unknown_params(settings, params, complaint):
    with pytest.raises(ValueError, match=complaint):
        run_settings(settings, params)
