"""``shoprec models``: the model versions (trained and compressed), promotion and rollback."""

from __future__ import annotations

import click

from entrypoints.output import emit
from entrypoints.steps import NotServable, release
from shoprec.config import load_settings
from training.artifact import ArtifactError
from training.registry import list_versions, production_version, rollback as rollback_production


def _list(as_json: bool) -> None:
    settings = load_settings()
    versions = list_versions(settings)
    lines = []
    for v in versions:
        origin = f"from {v.parent_version}" if v.parent_version else ""
        lines.append(f"{'*' if v.production else ' '} {v.version}  {v.kind}  {v.protocol}  "
                     f"NDCG@10 {v.metrics.get('NDCG@10', float('nan')):.4f}  HR@10 {v.metrics.get('HR@10', float('nan')):.4f}  "
                     f"{v.created_at}  {origin}".rstrip())
    human = "\n".join(lines) if lines else f"no model versions in {settings.models_dir}"
    emit({"production": production_version(settings), "versions": [v.to_dict() for v in versions]}, as_json, human)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """The model versions: list them (the default), promote one, roll production back.

    * marks the production version; a variant names the version it was compressed from.
    """
    if ctx.invoked_subcommand is None:
        _list(as_json)


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_command(as_json: bool) -> None:
    """List the model versions and show which one is in production."""
    _list(as_json)


@models.command()
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def promote(version: str, as_json: bool) -> None:
    """Make VERSION (a trained version or any compressed variant) production.

    It is first loaded exactly as the service loads it and asked for a recommendation (the
    training DAG's release check); a version that fails stays out of production. A running
    service swaps to it at its next poll of the production pointer.
    """
    try:
        released = release(version, load_settings())
    except (ValueError, ArtifactError, NotServable) as error:
        raise click.ClickException(str(error)) from error
    emit(released, as_json, f"production: {released.previous or 'none'} -> {released.version}")


@models.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def rollback(as_json: bool) -> None:
    """Put back the version that was production before the current one."""
    settings = load_settings()
    current = production_version(settings)
    try:
        restored = rollback_production(settings)
    except (ValueError, ArtifactError) as error:
        raise click.ClickException(str(error)) from error
    emit({"rolled_back": current, "production": restored}, as_json,
         f"production: {current} -> {restored or 'none (there was no earlier production version)'}")
