"""shoprec_monitoring (daily, for the UTC day that just ended): the drift and health report.

One task, ``report``: the day's events against the days before (event-type mix, item
popularity, items and users the served model does not know), the age of the online rows of
a sample of the day's users, the online CTR per model version and the offline metrics per
version, written as HTML + JSON + PNG plots under ``<home>/reports/monitoring/<day>/``. The
task log names the report's ``index.html`` and its XCom return value holds the paths.

Wiring only: the task calls ``entrypoints.steps.monitoring_report``. A threshold of
``settings.monitoring`` broken fails the task without retrying (the same data would break it
again), and the failure alert names every broken threshold and the report.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from entrypoints import steps
from shoprec.config import load_settings


@dag(
    dag_id="shoprec_monitoring",
    # data intervals of one day: the run at 00:00 reports the day that just ended
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=steps.task_defaults(load_settings()),
    params={"day": Param(None, type=["null", "string"], format="date", description="report this UTC day (YYYY-MM-DD) instead")},
    tags=["shoprec", "monitoring"],
    doc_md=__doc__,
)
def shoprec_monitoring():
    @task
    def report(params=None, data_interval_start=None, data_interval_end=None) -> dict:
        day, now = data_interval_start.date(), data_interval_end
        if params.get("day"):
            day, now = date.fromisoformat(params["day"]), None  # the ages at that day's end
        try:
            return steps.monitoring_report(load_settings(), day, now)
        except steps.ThresholdsBroken as broken:
            raise AirflowFailException(str(broken)) from broken

    report()


shoprec_monitoring()
