"""Deployment wiring: the Airflow environment derived from Settings, and docker-compose.yml
(checked with the compose client where it is installed; no engine runs containers here)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from shoprec.airflow_env import DAGS_DIR, airflow_env
from shoprec.config import REPO_ROOT, load_settings

COMPOSE = shutil.which("docker-compose")
AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}


def test_airflow_env_follows_the_settings(monkeypatch, home):
    monkeypatch.setenv("SHOPREC_AIRFLOW__PORT", "8099")
    monkeypatch.setenv("SHOPREC_AIRFLOW__SQL_ALCHEMY_CONN", "postgresql+psycopg2://u@db:5432/airflow")
    env = airflow_env(load_settings())
    assert env["AIRFLOW_HOME"] == str(home / "airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_DIR)
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:8099/execution/"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@db:5432/airflow")
    assert env["SHOPREC_HOME"] == str(home) and env["BENTOML_HOME"] == str(home / "bentoml")


def test_embedded_defaults_leave_airflow_on_sqlite(home):
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in airflow_env(load_settings())


def compose_config(env_file: str, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [COMPOSE, "-f", "docker-compose.yml", "--env-file", env_file, "config"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "SHOPREC_ENV_FILE": env_file, **extra_env},
    )


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose (Debian's 1.29) is not installed")
def test_compose_file_is_valid_and_complete():
    result = compose_config(".env.example", {})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"postgres", "redis", "recommender", "airflow-init"} | AIRFLOW_SERVICES <= set(services)
    for name in {"postgres", "redis", "recommender"} | AIRFLOW_SERVICES:
        assert "healthcheck" in services[name], name
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["SHOPREC_PROFILE"] == "production"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["recommender"]["command"][:2] == ["bentoml", "serve"]


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose (Debian's 1.29) is not installed")
def test_compose_file_commits_no_password(tmp_path):
    """Without an env file that sets them, the secrets are missing and compose refuses."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose_config(str(empty), {})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# --- release: verify before promote, roll back a failed deploy ---------------------------------


def test_a_version_that_cannot_load_is_never_promoted(settings):
    from services.registry import NotServable, release
    from training.registry import production_version, promote

    settings.models_dir.mkdir(parents=True)
    for version in ("good-v1", "broken-v2"):
        (settings.models_dir / version).mkdir()
        (settings.models_dir / version / "metadata.json").write_text('{"format_version": 1}')
    promote("good-v1", settings)
    with pytest.raises(NotServable, match="broken-v2 cannot be served"):
        release("broken-v2", settings)
    assert production_version(settings) == "good-v1"
    assert not (settings.bentoml_home / "models").exists() or not any((settings.bentoml_home / "models").rglob("*.yaml"))


def test_a_failed_deploy_puts_the_previous_production_back(settings, monkeypatch):
    import socket

    from services.client import ServiceError, deploy, verify_deployment
    from training.registry import production_version, promote

    settings.models_dir.mkdir(parents=True)
    for version in ("champion-v1", "challenger-v2"):
        (settings.models_dir / version).mkdir()
        (settings.models_dir / version / "metadata.json").write_text("{}")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    promote("challenger-v2", settings)
    released = {"version": "challenger-v2", "previous": "champion-v1"}
    with pytest.raises(ServiceError, match="rolled back to champion-v1"):
        deploy(settings, released, url=dead)
    assert production_version(settings) == "champion-v1"
    promote("challenger-v2", settings)
    with pytest.raises(ServiceError, match="rolled back"):
        verify_deployment(settings, released, url=dead)
    assert production_version(settings) == "champion-v1"
    promote("challenger-v2", settings)
    with pytest.raises(ServiceError, match="pointer removed"):
        deploy(settings, {"version": "challenger-v2", "previous": None}, url=dead)
    assert production_version(settings) is None


def test_compression_overrides_are_checked():
    from training.champion import compression_options

    assert compression_options({"distill_epochs": 1}).distill_epochs == 1
    assert compression_options().rounds_b1 == 50
    with pytest.raises(ValueError, match="unknown compression option"):
        compression_options({"distil_epochs": 1})
