"""The training commands: clear errors on an empty system, JSON reports, lake -> train -> evaluate -> models."""

import json

from click.testing import CliRunner

from shoprec.cli import cli


def test_commands_fail_clearly_on_an_empty_home(home):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--data", "lake", "--profile", "quick"])
    assert result.exit_code != 0 and "holds no events" in result.output
    result = runner.invoke(cli, ["evaluate"])
    assert result.exit_code != 0 and "no model versions" in result.output
    result = runner.invoke(cli, ["models", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {"production": None, "versions": []}
    result = runner.invoke(cli, ["train", "--warm-start", "nope", "--profile", "quick"])
    assert result.exit_code != 0 and "no model version" in result.output


def test_train_evaluate_and_list_from_the_lake(home, settings):
    from shoprec import lake
    from shoprec.generate import generate

    lake.write_batch(settings.lake_dir, generate(600, seed=5))
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--profile", "quick", "--no-text", "--promote", "--json"])
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)
    assert trained["protocol"] == "full" and 0 <= trained["metrics"]["NDCG@10"] <= 1
    result = runner.invoke(cli, ["evaluate", "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["version"] == trained["version"]
    assert abs(evaluated["metrics"]["NDCG@10"] - trained["metrics"]["NDCG@10"]) < 1e-6  # same protocol, same numbers
    listed = json.loads(runner.invoke(cli, ["models", "--json"]).stdout)
    assert listed["production"] == trained["version"] and len(listed["versions"]) == 1
