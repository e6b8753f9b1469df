"""``shoprec train``, ``shoprec evaluate`` and ``shoprec models``: thin shells over ``training``."""

from __future__ import annotations

import click

from shoprec.cli import emit


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
                     f"{training['wall_seconds']:.0f} s in all on {training['device']}")
    return "\n".join(lines)


@click.command()
@click.option("--protocol", type=click.Choice(["loo", "full"]), default="full", show_default=True,
              help="loo: benchmark mode, learns only from each user's items before the last two; full: production.")
@click.option("--profile", type=click.Choice(["quick", "full"]), default=None, help="Hyperparameter profile (default: settings).")
@click.option("--data", type=click.Choice(["lake", "beauty"]), default="lake", show_default=True,
              help="lake: events ingested by `shoprec ingest`; beauty: the Amazon Beauty benchmark file.")
@click.option("--warm-start", "warm_start", default=None, metavar="VERSION",
              help="Fine-tune VERSION on the events after its training data, growing the item vocabulary.")
@click.option("--no-text", is_flag=True, help="Train on item ids only (ignore item text).")
@click.option("--promote", is_flag=True, help="Make the new version the production model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def train(protocol: str, profile: str | None, data: str, warm_start: str | None, no_text: bool, promote: bool, as_json: bool) -> None:
    """Train a sequential recommender and save it as a new model version."""
    from shoprec.config import load_settings
    from training.artifact import ArtifactError
    from training.pipeline import train_version
    from training.pipeline import warm_start as run_warm_start
    from training.registry import promote as promote_version

    settings = load_settings()
    profile = profile or settings.training.profile
    try:
        if warm_start:
            version, report = run_warm_start(settings, warm_start, data=data, profile=profile)
        else:
            version, report = train_version(settings, data=data, protocol=protocol, profile=profile,
                                            overrides={"use_text": False} if no_text else None)
        if promote:
            promote_version(version, settings)
    except (ValueError, FileNotFoundError, ArtifactError) as error:
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
    from shoprec.config import load_settings
    from training.artifact import ArtifactError
    from training.pipeline import evaluate_version

    settings = load_settings()
    try:
        version, report = evaluate_version(settings, version)
    except (ValueError, FileNotFoundError, ArtifactError) as error:
        raise click.ClickException(str(error)) from error
    emit({"version": version, **report}, as_json, _report_text(version, report))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def models(as_json: bool) -> None:
    """List the model versions and show which one is in production."""
    from shoprec.config import load_settings
    from training.registry import list_versions, production_version

    settings = load_settings()
    versions = list_versions(settings)
    lines = [f"{'*' if v['production'] else ' '} {v['version']}  {v['protocol']}  "
             f"NDCG@10 {v['metrics'].get('NDCG@10', float('nan')):.4f}  HR@10 {v['metrics'].get('HR@10', float('nan')):.4f}  {v['created_at']}"
             for v in versions]
    human = "\n".join(lines) if lines else f"no model versions in {settings.models_dir}"
    emit({"production": production_version(settings), "versions": versions}, as_json, human)
