"""``shoprec features``: build the feature tables, register them in Feast, fill the online store."""

from __future__ import annotations

import click

from entrypoints.output import emit
from shoprec.config import load_settings
from shoprec.features import store
from shoprec.features.online import OnlineFeatures
from shoprec.features.tables import build_tables


@click.group()
def features() -> None:
    """Feature tables and the Feast feature store (offline + online)."""


@features.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def build(as_json: bool) -> None:
    """Build the feature tables (user_recent_items, item_stats) from the lake and encode new item texts."""
    report = build_tables(load_settings(), progress=not as_json)
    emit(report, as_json, f"built {report.rows} from {report.events} events "
         f"({report.newly_encoded_texts} texts newly encoded) in {report.offline_dir}")


@features.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def apply(as_json: bool) -> None:
    """Register entities, sources and feature views; delete what feature_repo/ no longer defines (feast apply)."""
    report = store.apply(load_settings())
    deleted = f"; deleted {', '.join(report.deleted)}" if report.deleted else ""
    emit(report, as_json, f"applied {', '.join(report.feature_views)}{deleted} (online store: {report.online_store})")


@features.command()
@click.option("--start", type=click.DateTime(), default=None, help="Start (UTC); default: where the last run ended.")
@click.option("--end", type=click.DateTime(), default=None, help="End (UTC, exclusive); default: now.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def materialize(start, end, as_json: bool) -> None:
    """Copy the latest feature values into the online store, in bounded chunks (idempotent)."""
    report = store.materialize(load_settings(), start=start, end=end, progress=not as_json)
    lines = [f"{n}: {v.chunks} chunk(s), {v.rows_read} rows from {v.start}" for n, v in report.views.items()]
    lines.append(f"item state: {report.item_state_pushed} item(s) changed")
    emit(report, as_json, "\n".join(lines))


@features.command()
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def show(user_id: str, as_json: bool) -> None:
    """Show a user's sequence as the online store serves it."""
    seq = OnlineFeatures(load_settings()).user_sequences([user_id])[user_id]
    report = {"user_id": user_id, **seq}
    human = "\n".join(f"{t.isoformat()}  {e:12s} {i}" for i, e, t in zip(seq["item_ids"], seq["event_types"], seq["timestamps"]))
    emit(report, as_json, human or f"no sequence for user {user_id}")
