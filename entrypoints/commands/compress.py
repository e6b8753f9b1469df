"""``shoprec compress``: compressed variants of a trained model, the report and the serving gate."""

from __future__ import annotations

import click

from entrypoints.output import emit
from entrypoints.steps import NotServable, release
from shoprec.config import load_settings
from training.artifact import ArtifactError
from training.compression.pipeline import compress as run_compression


@click.command()
@click.option("--version", "version", default=None, help="Model version to compress (default: production, else newest).")
@click.option("--promote", is_flag=True,
              help="Make the gate's pick production (after the same release check as the training DAG).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def compress(version: str | None, promote: bool, as_json: bool) -> None:
    """Quantize, prune, distil and export a model; measure every variant against the folded FP32 model; pick the served one.

    Writes each variant as a model version (<version>-<method>) and the report
    (Markdown, JSON, PNG) under $SHOPREC_HOME/reports/compression/<version>/.
    """
    settings = load_settings()
    try:
        result = run_compression(version, settings)
        released = release(result.served_version, settings) if promote else None
    except (ValueError, FileNotFoundError, ArtifactError, NotServable) as error:
        raise click.ClickException(str(error)) from error
    report = {**result.to_dict(), "released": released.to_dict() if released else None}
    lines = [
        f"compressed {result.parent_version}: {len(result.variants) - 2} variants",
        f"served: {result.served_version}",
        f"why: {result.gate.why}",
        f"report: {result.report.get('markdown')}",
    ]
    if released:
        lines.append(f"production: {released.previous or 'none'} -> {released.version}")
    emit(report, as_json, "\n".join(lines))
