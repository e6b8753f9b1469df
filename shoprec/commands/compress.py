"""``shoprec compress``: compressed variants of a trained model, the report and the serving gate."""

from __future__ import annotations

import click

from shoprec.cli import emit


@click.command()
@click.option("--version", "version", default=None, help="Model version to compress (default: production, else newest).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def compress(version: str | None, as_json: bool) -> None:
    """Quantize, prune, distil and export a model; measure every variant against FP32; pick the served one.

    Writes each variant as a model version (<version>-<method>) and the report
    (Markdown, JSON, PNG) under $SHOPREC_HOME/reports/compression/<version>/.
    """
    from training.compression.pipeline import compress as run_compression

    try:
        result = run_compression(version)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    gate = result["gate"]
    human = (
        f"compressed {result['parent_version']}: {len(result['variants']) - 1} variants\n"
        f"served: {result['served_version'] or 'FP32 (no variant passed the gate)'}\n"
        f"why: {gate['why']}\n"
        f"report: {result['report']['markdown']}"
    )
    emit(result, as_json, human)
