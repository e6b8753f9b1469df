"""shoprec_features (hourly): the inbox batches of the hour -> Great Expectations gate -> lake
-> feature tables -> feast apply -> incremental materialization -> the ``shoprec_features`` asset.

Wiring only: each task calls one step function. A batch that fails validation is
quarantined by the ingest step; the task then fails without retrying (bad data stays bad)
and every downstream task is skipped, so the online store keeps its last good state.
Re-running an hour takes the same inbox folders, and the lake, the tables and the online
store end in the same state.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from shoprec.config import load_settings
from shoprec.pipeline import FEATURES_ASSET_NAME, task_defaults

FEATURES_ASSET = Asset(FEATURES_ASSET_NAME)


@dag(
    dag_id="shoprec_features",
    # data intervals of one hour: each run takes the batches that arrived in its hour
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(load_settings()),
    params={"batch": Param(None, type=["null", "string"], description="ingest this batch folder instead of the inbox")},
    tags=["shoprec", "features"],
    doc_md=__doc__,
)
def shoprec_features():
    @task
    def pick_batches(params=None, data_interval_start=None, data_interval_end=None) -> list[str]:
        from shoprec.pipeline import inbox_batches

        if params.get("batch"):
            return [params["batch"]]
        batches = inbox_batches(load_settings(), data_interval_start, data_interval_end)
        if not batches:
            raise AirflowSkipException(f"no batch arrived in {data_interval_start} .. {data_interval_end}")
        return [str(path) for path in batches]

    @task(retries=0)
    def validate_and_ingest(batches: list[str]) -> dict:
        from shoprec.ingest import ingest
        from shoprec.pipeline import INBOX_FORMAT

        settings = load_settings()
        reports = [ingest(path, INBOX_FORMAT, settings) for path in batches]
        for report in reports:
            print(report.summary())
        refused = [report for report in reports if not report.ok]
        if refused:
            raise AirflowFailException(
                "validation refused " + ", ".join(f"{r.source} (quarantined in {r.quarantine})" for r in refused)
            )
        firsts = [r.counts["first_event"] for r in reports if r.counts.get("first_event")]
        return {"batches": [r.batch_id for r in reports], "new_events": sum(r.counts["events"] for r in reports),
                "first_event": min(firsts) if firsts else None}

    @task
    def build_features(ingested: dict) -> dict:
        from shoprec.features.tables import build_tables

        return build_tables(load_settings())

    @task
    def feast_apply(tables: dict) -> dict:
        from shoprec.features.store import apply

        return apply(load_settings())

    @task(outlets=[FEATURES_ASSET])
    def materialize(applied: dict, ingested: dict, data_interval_end=None, outlet_events=None) -> dict:
        from shoprec.features.store import materialize

        # from the oldest new event: a backfilled or late batch reaches the online store too
        report = materialize(load_settings(), end=data_interval_end, since=ingested["first_event"])
        outlet_events[FEATURES_ASSET].extra = {"new_events": ingested["new_events"], "batches": ingested["batches"]}
        return report

    ingested = validate_and_ingest(pick_batches())
    materialize(feast_apply(build_features(ingested)), ingested)


shoprec_features()
