"""shoprec_features (hourly): the inbox batches of the hour -> Great Expectations gate -> lake
-> feature tables -> feast apply -> incremental materialization -> the ``shoprec_features`` asset;
beside them, every hour, the real-time event log compacted (one Parquet file per day) before
the tables are built.

Wiring only: each task calls one step of ``entrypoints.steps``. A batch that fails validation
is quarantined by the ingest step; the task then fails without retrying (bad data stays bad)
and every downstream task is skipped, so the online store keeps its last good state.
Re-running an hour takes the same inbox folders, and the lake, the tables and the online
store end in the same state.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from entrypoints import steps
from shoprec.config import load_settings

FEATURES_ASSET = Asset(steps.FEATURES_ASSET_NAME)


@dag(
    dag_id="shoprec_features",
    # data intervals of one hour: each run takes the batches that arrived in its hour
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=steps.task_defaults(load_settings()),
    params={"batch": Param(None, type=["null", "string"], description="ingest this batch folder instead of the inbox")},
    tags=["shoprec", "features"],
    doc_md=__doc__,
)
def shoprec_features():
    @task
    def pick_batches(params=None, data_interval_start=None, data_interval_end=None) -> list[str]:
        batches = steps.pick_batches(load_settings(), data_interval_start, data_interval_end, params.get("batch"))
        if not batches:
            raise AirflowSkipException(f"no batch arrived in {data_interval_start} .. {data_interval_end}")
        return batches

    @task(retries=0)
    def validate_and_ingest(batches: list[str]) -> dict:
        try:
            return steps.validate_and_ingest(load_settings(), batches).to_dict()
        except steps.BatchRefused as refused:
            raise AirflowFailException(str(refused)) from refused

    # every hour, batch or not: the log's file count stays bounded however quiet the inbox is
    @task
    def compact_event_log() -> dict:
        return steps.compact_event_log(load_settings())

    @task
    def build_features(ingested: dict, compacted: dict) -> dict:
        return steps.build_features(load_settings())

    @task
    def feast_apply(tables: dict) -> dict:
        return steps.feast_apply(load_settings())

    @task(outlets=[FEATURES_ASSET])
    def materialize(applied: dict, ingested: dict, data_interval_end=None, outlet_events=None) -> dict:
        taken = steps.Ingested.from_dict(ingested)
        report = steps.materialize(load_settings(), taken, data_interval_end)
        outlet_events[FEATURES_ASSET].extra = taken.asset_extra()
        return report

    ingested = validate_and_ingest(pick_batches())
    materialize(feast_apply(build_features(ingested, compact_event_log())), ingested)


shoprec_features()
