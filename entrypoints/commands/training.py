"""``shoprec train`` and ``shoprec evaluate``: thin shells over ``training``.

Hyperparameters reach training only through the settings: ``--preset``, ``--epochs`` and
``--set KEY=VALUE`` become ``settings.with_overrides(training={"preset": ..., "overrides": ...})``,
which checks every key and value against the model's hyperparameters.
"""

from __future__ import annotations

import json
from typing import Any

import click

from entrypoints.output import emit
from entrypoints.steps import NotServable, release
from shoprec.config import Settings, load_settings
from training.artifact import ArtifactError
from training.distributed import DistributedTrainingError
from training.pipeline import evaluate_version, train_version
from training.pipeline import warm_start as run_warm_start
from training.registry import trained_root

PRESETS = click.Choice(["quick", "full"])


def _metrics_line(metrics: dict) -> str:
    keys = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "coverage@10", "popularity_bias@10")
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


def _report_text(version: str, report: dict) -> str:
    lines = [f"version {version}  ({report['protocol']} protocol, {report['split']} split, {report['metrics']['users']} users)",
             f"  model       {_metrics_line(report['metrics'])}"]
    lines += [f"  {name:<11} {_metrics_line(m)}" for name, m in report.get("baselines", {}).items()]
    training = report.get("training")
    if training:
        lines.append(f"  {training['epochs']} epochs (best {training['best_epoch']}), {training['seconds_per_epoch']:.1f} s/epoch, "
                     f"{training['wall_seconds']:.0f} s in all on {training['device']}"
                     + (f" x {training['processes']} processes" if training.get("processes") else ""))
    return "\n".join(lines)


def parse_assignments(assignments: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value is read as JSON when it is JSON (3, 1e-3, true), else kept as text."""
    parsed = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{assignment!r} is not KEY=VALUE (e.g. lr=3e-4)", param_hint="--set")
        try:
            parsed[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key.strip()] = text
    return parsed


def training_settings(settings: Settings, preset: str | None, epochs: int | None, assignments: tuple[str, ...],
                      no_text: bool = False, processes: int | None = None) -> Settings:
    """``settings`` with this command's preset, hyperparameter overrides and process count on top of the configured ones."""
    overrides = {**settings.training.overrides, **parse_assignments(assignments)}
    if epochs is not None:
        overrides["max_epochs"] = epochs
    if no_text:
        overrides["use_text"] = False
    training: dict[str, Any] = {"overrides": overrides}
    if preset:
        training["preset"] = preset
    if processes is not None:
        training["processes"] = processes
    try:
        return settings.with_overrides(training=training)
    except ValueError as error:  # pydantic's ValidationError: an unknown key or a value of the wrong type
        raise click.BadParameter(str(error), param_hint="--set") from error


@click.command()
@click.option("--protocol", type=click.Choice(["loo", "full"]), default="full", show_default=True,
              help="loo: benchmark mode, learns only from each user's items before the last two; full: production.")
@click.option("--preset", type=PRESETS, default=None, help="Hyperparameter preset of the model's YAML (default: settings).")
@click.option("--profile", "old_preset", type=PRESETS, default=None, hidden=True)  # the name --preset had before
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Most training epochs (max_epochs; early stopping may end sooner).")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Any hyperparameter of the model, e.g. --set lr=3e-4 --set hidden=128 (repeatable).")
@click.option("--data", type=click.Choice(["lake", "beauty"]), default="lake", show_default=True,
              help="lake: events ingested by `shoprec ingest`; beauty: the Amazon Beauty benchmark file.")
@click.option("--warm-start", "warm_start", default=None, metavar="VERSION",
              help="Fine-tune VERSION (a variant: the version it was compressed from) on the events after its "
                   "training data, growing the item vocabulary.")
@click.option("--no-text", is_flag=True, help="Train on item ids only (ignore item text).")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Train data-parallel in N processes under torchrun (DistributedDataParallel: gloo on CPU, "
                   "NCCL on GPUs; each process gets cores/N threads). Default: training.processes (1).")
@click.option("--promote", is_flag=True, help="Make the new version the production model (after the release check).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def train(protocol: str, preset: str | None, old_preset: str | None, epochs: int | None, assignments: tuple[str, ...],
          data: str, warm_start: str | None, no_text: bool, processes: int | None, promote: bool, as_json: bool) -> None:
    """Train a sequential recommender and save it as a new model version."""
    settings = training_settings(load_settings(), preset or old_preset, epochs, assignments, no_text, processes)
    try:
        if warm_start:
            version, report = run_warm_start(settings, trained_root(warm_start, settings), data=data)
        else:
            version, report = train_version(settings, data=data, protocol=protocol)
        if promote:
            report["released"] = release(version, settings).to_dict()
    except (ValueError, FileNotFoundError, ArtifactError, NotServable, DistributedTrainingError) as error:
        raise click.ClickException(str(error)) from error
    emit({"version": version, **report}, as_json, _report_text(version, report))


@click.command()
@click.option("--version", "version", default=None, help="Model version (default: production, else newest).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate(version: str | None, as_json: bool) -> None:
    """Evaluate a model version with its own protocol, baselines in the same run.

    A loo version is ranked on each user's held-out last item; a full version on
    the last item it did not train on.
    """
    try:
        version, report = evaluate_version(load_settings(), version)
    except (ValueError, FileNotFoundError, ArtifactError) as error:
        raise click.ClickException(str(error)) from error
    emit({"version": version, **report}, as_json, _report_text(version, report))
