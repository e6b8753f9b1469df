"""The CLI: every command's help, clear errors on an empty system, hyperparameters through the
settings, and lake -> train -> evaluate -> models list / promote / rollback."""

import json

import click
import pytest
from click.testing import CliRunner

from entrypoints.cli import COMMANDS, cli
from entrypoints.commands.training import training_settings
from shoprec import lake
from simulator.shop import generate


def every_command(group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from every_command(command, ctx, (*path, name))


def test_every_command_has_help_and_the_top_level_list_matches_the_commands():
    runner = CliRunner()
    ctx = click.Context(cli)
    for path, command in every_command(cli, ctx):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, (path, result.output)
        if len(path) == 1:  # `shoprec --help` lists these without importing the command modules
            assert COMMANDS[path[0]][1] == command.get_short_help_str(limit=200), path
    listing = runner.invoke(cli, ["--help"]).output
    assert all(name in listing for name in COMMANDS)
    assert {"promote", "rollback", "list"} <= set(cli.get_command(ctx, "models").list_commands(ctx))


def test_commands_fail_clearly_on_an_empty_home(home):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--data", "lake", "--preset", "quick"])
    assert result.exit_code != 0 and "holds no events" in result.output
    result = runner.invoke(cli, ["evaluate"])
    assert result.exit_code != 0 and "no model versions" in result.output
    result = runner.invoke(cli, ["models", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {"production": None, "versions": []}
    result = runner.invoke(cli, ["train", "--warm-start", "nope", "--preset", "quick"])
    assert result.exit_code != 0 and "no model version" in result.output
    result = runner.invoke(cli, ["models", "rollback"])
    assert result.exit_code == 1 and "nothing to roll back" in result.output
    result = runner.invoke(cli, ["models", "promote", "nope"])
    assert result.exit_code == 1 and "nope cannot be served" in result.output


@pytest.mark.parametrize("args, complaint", [
    (["--set", "lrr=0.1"], "unknown hyperparameter"),
    (["--set", "lr"], "KEY=VALUE"),
    (["--set", "hidden=many"], "hidden"),
    (["--epochs", "0"], "--epochs"),
    (["--preset", "huge"], "--preset"),
])
def test_bad_hyperparameters_are_refused_before_anything_trains(args, complaint, home):
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 2 and complaint in result.output, result.output
    assert not home.exists()


def test_preset_epochs_and_set_reach_training_through_the_settings(settings):
    tuned = training_settings(settings, "quick", 3, ("lr=3e-4", "use_text=false", "hidden=32", "model=sasrec"))
    hp = tuned.hyperparameters
    assert tuned.training.preset == "quick"
    assert (hp.max_epochs, hp.lr, hp.use_text, hp.hidden, hp.model) == (3, 3e-4, False, 32, "sasrec")
    assert training_settings(settings, None, None, ()) == settings


def test_train_evaluate_promote_and_roll_back_from_the_lake(home, settings):
    lake.write_batch(settings.lake_dir, generate(600, seed=5))
    runner = CliRunner()
    # --profile: the old name of --preset, still read
    result = runner.invoke(cli, ["train", "--profile", "quick", "--no-text", "--epochs", "2", "--promote", "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)
    assert first["protocol"] == "full" and 0 <= first["metrics"]["NDCG@10"] <= 1
    assert first["training"]["epochs"] <= 2
    assert first["released"] == {"version": first["version"], "previous": None, "items": first["released"]["items"]}
    result = runner.invoke(cli, ["evaluate", "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["version"] == first["version"]
    assert abs(evaluated["metrics"]["NDCG@10"] - first["metrics"]["NDCG@10"]) < 1e-6  # same protocol, same numbers

    result = runner.invoke(cli, ["train", "--preset", "quick", "--no-text", "--set", "max_epochs=1", "--json"])
    assert result.exit_code == 0, result.output
    second = json.loads(result.stdout)
    assert second["training"]["epochs"] == 1
    listed = json.loads(runner.invoke(cli, ["models", "list", "--json"]).stdout)
    assert listed["production"] == first["version"] and len(listed["versions"]) == 2

    result = runner.invoke(cli, ["models", "promote", second["version"]])
    assert result.exit_code == 0 and f"{first['version']} -> {second['version']}" in result.output, result.output
    result = runner.invoke(cli, ["models", "rollback", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"rolled_back": second["version"], "production": first["version"]}

    weights = settings.models_dir / second["version"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # altered on disk: the release check must refuse it
    result = runner.invoke(cli, ["models", "promote", second["version"]])
    assert result.exit_code == 1 and "cannot be served" in result.output
    assert json.loads(runner.invoke(cli, ["models", "--json"]).stdout)["production"] == first["version"]


@pytest.mark.slow
def test_compress_promote_makes_the_gates_pick_production(home, settings, monkeypatch):
    for key, value in {"PRUNE_EPOCHS": "0", "DISTILL_EPOCHS": "1", "ROUNDS_B1": "3", "ROUNDS_B32": "1"}.items():
        monkeypatch.setenv(f"SHOPREC_COMPRESSION__{key}", value)  # a light benchmark: every variant is still built
    lake.write_batch(settings.lake_dir, generate(2000, seed=5))  # test users enough for the latency batches of 32
    runner = CliRunner()
    trained = json.loads(runner.invoke(cli, ["train", "--preset", "quick", "--no-text", "--epochs", "1", "--promote",
                                             "--json"]).stdout)
    result = runner.invoke(cli, ["compress", "--promote", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["parent_version"] == trained["version"]
    assert report["served_version"] != trained["version"]  # at the least the folded model
    assert report["released"] == {"version": report["served_version"], "previous": trained["version"],
                                  "items": trained["released"]["items"]}
    listed = json.loads(runner.invoke(cli, ["models", "--json"]).stdout)
    assert listed["production"] == report["served_version"]
    served = next(v for v in listed["versions"] if v["version"] == report["served_version"])
    assert served["kind"] == "variant" and served["parent_version"] == trained["version"]
