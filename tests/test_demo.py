"""``shoprec demo``: its command line and its one configuration (the end-to-end run itself is
the slow DAG tests' job)."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from entrypoints.cli import cli
from entrypoints.commands.demo import DEMO_COMPRESSION_OVERRIDES, demo_settings
from shoprec.config import child_env, load_settings


def run(*args: str):
    return CliRunner().invoke(cli, ["demo", *args])


def test_help_documents_every_option():
    result = run("--help")
    assert result.exit_code == 0, result.output
    for option in ("--events", "--preset", "--epochs", "--fresh", "--serve / --exit"):
        assert option in result.output
    assert "end to end" in result.output


@pytest.mark.parametrize("args, complaint", [
    (["--events", "10"], "--events"),
    (["--events", "many"], "--events"),
    (["--preset", "huge"], "--preset"),
    (["--profile", "huge"], "--profile"),  # the old name of --preset is still read
    (["--epochs", "0"], "--epochs"),
])
def test_bad_arguments_are_refused_before_anything_runs(args, complaint, home):
    result = run(*args)
    assert result.exit_code == 2 and complaint in result.output
    assert not home.exists()  # nothing was generated or started


def test_the_demo_configures_itself_through_settings_not_the_environment(home):
    before = dict(os.environ)
    settings = demo_settings(load_settings(), "quick", epochs=4)
    assert dict(os.environ) == before
    assert settings.training.preset == "quick" and settings.hyperparameters.max_epochs == 4
    assert settings.training.num_threads == 1 and settings.airflow.retries == 0
    # a token per scope, each long and random: the deploy task's /admin calls, its smoke test and the demo's reads
    tokens = {settings.api_token, settings.read_token, settings.write_token}
    assert len(tokens) == 3 and all(len(token) >= 24 for token in tokens)
    assert all(getattr(settings.compression, key) == value for key, value in DEMO_COMPRESSION_OVERRIDES.items())
    # a child process (Airflow, bentoml serve) loads exactly these settings
    child = child_env(settings)
    assert child["SHOPREC_HOME"] == str(home)
    assert json.loads(child["SHOPREC_TRAINING"])["overrides"]["max_epochs"] == 4
    assert json.loads(child["SHOPREC_COMPRESSION"])["rounds_b1"] == DEMO_COMPRESSION_OVERRIDES["rounds_b1"]


def test_a_configured_token_and_thread_count_are_kept(home):
    operator_token = "operator-token-" + "k3Yq9ZtW2mPx7vRb"
    base = load_settings(api_token=operator_token, training={"num_threads": 2})
    settings = demo_settings(base, "full", epochs=10)
    assert settings.api_token == operator_token and settings.training.num_threads == 2
    assert settings.training.preset == "full"
