"""Data commands: generate a synthetic shop, ingest a batch through the gate, validate one."""

from __future__ import annotations

from pathlib import Path

import click

from entrypoints.output import emit
from shoprec.adapters import FORMATS
from shoprec.config import load_settings
from shoprec.ingest import ingest as run_ingest
from shoprec.ingest import validate_only
from simulator.shop import generate as make_shop
from simulator.shop import write_generated

TIMESTAMP_UNITS = ("s", "ms", "us", "ns")


def _parse_mapping(pairs: tuple[str, ...]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        canonical, sep, source = pair.partition("=")
        if not sep or not canonical or not source:
            raise click.BadParameter(f"{pair!r} is not CANONICAL=SOURCE (e.g. user_id=visitor)", param_hint="--map")
        mapping[canonical.strip()] = source.strip()
    return mapping


def _adapter_options(mapping: tuple[str, ...], timestamp_unit: str | None) -> dict:
    options = {}
    if mapping:
        options["mapping"] = _parse_mapping(mapping)
    if timestamp_unit:
        options["timestamp_unit"] = timestamp_unit
    return options


batch_options = [
    click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), required=True, help="The source layout."),
    click.argument("path", type=click.Path(path_type=Path)),
    click.option("--map", "mapping", multiple=True, metavar="CANONICAL=SOURCE",
                 help="events format: name a canonical column after a source column (repeatable)."),
    click.option("--timestamp-unit", type=click.Choice(TIMESTAMP_UNITS), default=None,
                 help="events/sessions: timestamps are epoch numbers in this unit (default: date strings)."),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
]


def _with_batch_options(func):
    for option in reversed(batch_options):
        func = option(func)
    return func


@click.command()
@_with_batch_options
def ingest(fmt, path, mapping, timestamp_unit, as_json):
    """Ingest PATH: read, clean, validate; write it to the lake or quarantine it.

    Exits 1 when the batch is refused, after printing what failed.
    """
    report = run_ingest(path, fmt, load_settings(), **_adapter_options(mapping, timestamp_unit))
    emit(report, as_json, report.summary())
    if not report.ok:
        raise SystemExit(1)


@click.command()
@_with_batch_options
def validate(fmt, path, mapping, timestamp_unit, as_json):
    """Check PATH against the validation gate without writing anything.

    Exits 1 when the batch would be refused.
    """
    report = validate_only(path, fmt, load_settings(), **_adapter_options(mapping, timestamp_unit))
    emit(report, as_json, report.summary())
    if not report.ok:
        raise SystemExit(1)


@click.command()
@click.option("--events", "n_events", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="How many events to generate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same shop.")
@click.option("--start", default="2026-01-01", show_default=True, help="First day (UTC).")
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True, help="Length of the window.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: $SHOPREC_HOME/generated/seed-<seed>).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def generate(n_events, seed, start, days, out, as_json):
    """Generate a synthetic shop: events.parquet and items.parquet in one folder.

    Ingest it with: shoprec ingest --format events OUT
    """
    out = out or load_settings().home / "generated" / f"seed-{seed}"
    batch = make_shop(n_events, seed=seed, start=start, days=days, progress=not as_json)
    paths = write_generated(batch, out)
    report = {
        "out": str(out),
        "files": {k: str(v) for k, v in paths.items()},
        "events": int(len(batch.events)),
        "users": int(batch.events["user_id"].nunique()),
        "items": int(len(batch.items)),
        "seed": seed,
    }
    human = (f"generated {report['events']:,} events, {report['users']:,} users, {report['items']:,} items "
             f"in {out}\ningest with: shoprec ingest --format events {out}")
    emit(report, as_json, human)
