"""``shoprec monitor``: the daily drift and health report, by hand (the monitoring DAG runs it daily)."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import click

from entrypoints.output import emit
from entrypoints.steps import ThresholdsBroken, monitoring_report
from shoprec.config import load_settings


@click.group()
def monitor() -> None:
    """The daily drift and health report (HTML + JSON + plots under reports/monitoring/)."""


@monitor.command()
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="The UTC day to report (YYYY-MM-DD); default: yesterday.")
@click.option("--now", type=click.DateTime(), default=None,
              help="When the online rows' age is measured (UTC); default: the end of the day.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def report(day: datetime | None, now: datetime | None, as_json: bool) -> None:
    """Write the report of a day under $SHOPREC_HOME/reports/monitoring/<day>/: input drift of the
    event stream, age of the online rows, online CTR and offline metrics per model version.

    Exits with status 1 (the report still written) when a threshold of the settings'
    ``monitoring`` section is broken.
    """
    the_day = day.date() if day else (datetime.now(timezone.utc) - timedelta(days=1)).date()
    moment = now.replace(tzinfo=timezone.utc) if now else None
    try:
        result = monitoring_report(load_settings(), the_day, moment)
    except ThresholdsBroken as broken:
        click.echo(str(broken), err=True)
        sys.exit(1)
    emit(result, as_json, result["html"])
