"""Data commands: generate a synthetic shop, ingest a batch through the gate, validate one."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from entrypoints.output import emit
from shoprec.adapters import FORMATS
from shoprec.config import load_settings
from shoprec.ingest import ingest as run_ingest
from shoprec.ingest import validate_only
from shoprec.adapters import open_source
from shoprec.reading import InputError, ReadOptions
from shoprec.staging import StagingMemoryError
from simulator.shop import generate as make_shop
from simulator.shop import write_generated

PREVIEW_ROWS = 5

TIMESTAMP_UNITS = ("s", "ms", "us", "ns")
DELIMITER_WORDS = {"tab": "\t", "\\t": "\t", "space": " ", "comma": ",", "semicolon": ";", "pipe": "|"}


def _pairs(pairs: tuple[str, ...], flag: str, example: str) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. {example})", param_hint=flag)
        parsed[key.strip()] = value.strip()
    return parsed


def _delimiter(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    value = DELIMITER_WORDS.get(value.lower(), value)
    if len(value) != 1:
        raise click.BadParameter(f"{value!r}: one character, or one of {', '.join(DELIMITER_WORDS)}", param_hint=flag)
    return value


def _columns(value: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in value.split(",")) if value else ()


def _read_options(o: dict) -> ReadOptions:
    """The events' ReadOptions from the command line (empty values keep the format's preset)."""
    return ReadOptions(
        delimiter=_delimiter(o["delimiter"], "--delimiter"), header=o["header"], columns=_columns(o["columns"]),
        mapping=_pairs(o["mapping"], "--map", "user_id=visitor"), constants=_pairs(o["constants"], "--set", "event_type=view"),
        timestamp_unit=o["timestamp_unit"], user_from_session=o["user_from_session"],
        event_values=_pairs(o["event_values"], "--event-value", "addtocart=add_to_cart"), ignore=tuple(o["ignore"]),
        encoding=o["encoding"] or "utf-8")


def _catalog_options(o: dict) -> ReadOptions | None:
    if not (o["catalog_mapping"] or o["catalog_delimiter"] or not o["catalog_header"] or o["catalog_columns"]):
        return None
    return ReadOptions(delimiter=_delimiter(o["catalog_delimiter"], "--catalog-delimiter"), header=o["catalog_header"],
                       columns=_columns(o["catalog_columns"]),
                       mapping=_pairs(o["catalog_mapping"], "--catalog-map", "item_id=sku"))


batch_options = [
    click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), required=True,
                 help="The source layout (docs/data-model.md, 'Your data')."),
    click.argument("path", type=click.Path(path_type=Path)),
    click.option("--map", "mapping", multiple=True, metavar="CANONICAL=SOURCE",
                 help="Name a canonical column after a source column, any format (repeatable; "
                      "'catalog' format: item columns)."),
    click.option("--set", "constants", multiple=True, metavar="COLUMN=VALUE",
                 help="A value for rows that have none, e.g. event_type=view (repeatable)."),
    click.option("--delimiter", default=None, metavar="CHAR",
                 help="Field delimiter of text files: a character or tab|space|comma|semicolon|pipe (default: detected)."),
    click.option("--no-header", "header", is_flag=True, flag_value=False, default=True,
                 help="The text file has no header line; name its columns with --columns."),
    click.option("--columns", default=None, metavar="A,B,C",
                 help="Column names, in file order (with --no-header; without it they replace the header)."),
    click.option("--timestamp-unit", type=click.Choice(TIMESTAMP_UNITS), default=None,
                 help="Epoch timestamps in this unit (default: numbers by magnitude, text parsed as dates)."),
    click.option("--user-from-session/--no-user-from-session", "user_from_session", default=None,
                 help="Rows without a user take their session id as the user (default: only when the source "
                      "has no user column, or it is empty in the first rows)."),
    click.option("--event-value", "event_values", multiple=True, metavar="SOURCE=TYPE",
                 help="Translate a source event name, e.g. addtocart=add_to_cart (repeatable)."),
    click.option("--ignore", multiple=True, metavar="COLUMN",
                 help="Drop a source column on purpose (repeatable; '*' drops every column not mapped)."),
    click.option("--encoding", default=None, help="Text encoding of the input (default utf-8), e.g. latin-1."),
    click.option("--catalog", type=click.Path(path_type=Path), default=None,
                 help="A catalog file (or folder/glob) to ingest with the events; replaces the format's own."),
    click.option("--catalog-map", "catalog_mapping", multiple=True, metavar="CANONICAL=SOURCE",
                 help="Name a catalog column after a source column (repeatable)."),
    click.option("--catalog-delimiter", default=None, metavar="CHAR", help="Delimiter of the catalog file."),
    click.option("--catalog-no-header", "catalog_header", is_flag=True, flag_value=False, default=True,
                 help="The catalog file has no header line (name its columns with --catalog-columns)."),
    click.option("--catalog-columns", default=None, metavar="A,B,C", help="Column names of the catalog file."),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
]


def _with_batch_options(func):
    for option in reversed(batch_options):
        func = option(func)
    return func


def _source_arguments(o: dict) -> dict:
    return {"options": _read_options(o), "catalog": o["catalog"], "catalog_options": _catalog_options(o)}


@contextmanager
def _staging_memory_as_usage_error():
    """A batch too large for the staging memory limit is the settings' fault, not the batch's:
    say which setting to change instead of a traceback (the batch did not reach the lake)."""
    try:
        yield
    except StagingMemoryError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@_with_batch_options
@click.option("--dry-run", is_flag=True,
              help="Show the detected layout, the column mapping, the first rows as they would land and "
                   "what the gate would say; write nothing.")
def ingest(dry_run, **o):
    """Ingest PATH: read, clean, validate; write it to the lake or quarantine it.

    PATH is a file, a folder or a quoted glob ('exports/*.csv.gz'). Exits 1 when the batch is
    refused, after printing what failed.
    """
    arguments = _source_arguments(o)
    if dry_run:
        with _staging_memory_as_usage_error():
            _dry_run(o, arguments)
        return
    with _staging_memory_as_usage_error():
        report = run_ingest(o["path"], o["fmt"], load_settings(), **arguments)
    emit(report, o["as_json"], report.summary())
    if not report.ok:
        raise SystemExit(1)


@click.command()
@_with_batch_options
def validate(**o):
    """Check PATH against the validation gate without writing anything.

    Exits 1 when the batch would be refused.
    """
    with _staging_memory_as_usage_error():
        report = validate_only(o["path"], o["fmt"], load_settings(), **_source_arguments(o))
    emit(report, o["as_json"], report.summary())
    if not report.ok:
        raise SystemExit(1)


@dataclass
class DryRun:
    layout: dict
    preview: list[dict]
    gate: dict
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _dry_run(o: dict, arguments: dict) -> None:
    """Layout, mapping and first rows from the reader, then the gate's verdict (validate_only)."""
    human, layout, rows, error = [], {}, [], None
    try:
        source = open_source(o["fmt"], o["path"], arguments["options"], arguments["catalog"], arguments["catalog_options"])
        layout = source.layout.to_dict()
        human.append(source.layout.describe())
        preview = source.preview(PREVIEW_ROWS)
        rows = preview.astype(object).where(preview.notna(), None).to_dict("records")
        human.append(f"first {len(preview)} row(s) as they would land:\n"
                     + (preview.to_string(index=False) if len(preview) else "  (no events)"))
    except InputError as exc:
        error = str(exc)
        human.append(f"cannot read the source: {error}")
    report = validate_only(o["path"], o["fmt"], load_settings(), **arguments)
    human.append("the gate would say: " + report.summary())
    if report.ok:
        human.append("nothing was written")
    emit(DryRun(layout, rows, report.to_dict(), error), o["as_json"], "\n".join(human))
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
