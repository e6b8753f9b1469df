"""``shoprec demo``: its command line (the end-to-end run itself is the slow DAG tests' job)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from shoprec.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, ["demo", *args])


def test_help_documents_every_option():
    result = run("--help")
    assert result.exit_code == 0, result.output
    for option in ("--events", "--profile", "--epochs", "--fresh", "--serve / --exit"):
        assert option in result.output
    assert "end to end" in result.output


@pytest.mark.parametrize("args, complaint", [
    (["--events", "10"], "--events"),
    (["--events", "many"], "--events"),
    (["--profile", "huge"], "--profile"),
    (["--epochs", "0"], "--epochs"),
])
def test_bad_arguments_are_refused_before_anything_runs(args, complaint, home):
    result = run(*args)
    assert result.exit_code == 2 and complaint in result.output
    assert not home.exists()  # nothing was generated or started
