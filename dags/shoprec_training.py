"""shoprec_training (daily at 03:00 UTC, and whenever the features DAG updates the
``shoprec_features`` asset): training set -> train (full, or warm-started from production)
-> compress (every variant; the compression gate picks the one to serve) -> evaluate (that
variant against the champion's served version, on the same hold-out) -> gate -> release
(load it as the service would, ask it for a recommendation, then promote it) -> deploy (the
running service hot-swaps) -> smoke test. A failed deploy or smoke test rolls production
back through the registry, so a version the service cannot serve never stays production.

Wiring only: each task calls one step of ``entrypoints.steps``. The gate is a short-circuit: a
challenger that loses (or a served model over the latency budget) ends the run there,
successfully, with every later task skipped, so production is untouched. Each run works in
its own folder keyed by the run id, so re-running a task overwrites its own output and
nothing else. The params (``preset``, ``overrides``, ``compression``) become the run's
settings (``steps.run_settings``); ``profile`` is still read as the old name of ``preset``.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from entrypoints import steps
from shoprec.config import load_settings


def run_settings(params):
    return steps.run_settings(load_settings(), params)


@dag(
    dag_id="shoprec_training",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * *", timezone="UTC"),
        assets=Asset(steps.FEATURES_ASSET_NAME),
    ),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=steps.task_defaults(load_settings()),
    params={
        "mode": Param("auto", enum=["auto", "full", "warm"], description="warm = continue from production"),
        "preset": Param(None, type=["null", "string"], description="hyperparameter preset (quick/full); default: settings"),
        "overrides": Param({}, type="object", description="hyperparameter overrides, e.g. {\"max_epochs\": 3}"),
        "compression": Param({}, type="object", description="compression options (settings.compression fields)"),
    },
    tags=["shoprec", "training"],
    doc_md=__doc__,
)
def shoprec_training():
    @task.short_circuit
    def enough_new_data(triggering_asset_events=None) -> bool:
        """A scheduled run always trains; an asset-triggered one only once enough events arrived."""
        return steps.enough_new_data(load_settings(), triggering_asset_events)

    @task
    def training_set(run_id=None, params=None) -> dict:
        return steps.training_set(run_settings(params), run_id)

    @task
    def train(dataset: dict, params=None) -> dict:
        return steps.train(run_settings(params), dataset, params["mode"])

    @task
    def compress(challenger: dict, dataset: dict, params=None) -> dict:
        return steps.compress(run_settings(params), challenger, dataset)

    @task
    def evaluate(compressed: dict, dataset: dict, params=None) -> dict:
        return steps.evaluate(run_settings(params), compressed, dataset)

    @task.short_circuit
    def gate(evaluation: dict, compressed: dict, params=None) -> bool:
        decision = steps.gate(run_settings(params), evaluation, compressed)
        print(("PROMOTE: " if decision.promote else "KEEP CHAMPION: ") + "; ".join(decision.reasons))
        return decision.promote

    @task
    def release(compressed: dict, params=None) -> dict:
        """Load the version as the service would and only then promote it."""
        return steps.release_challenger(run_settings(params), compressed).to_dict()

    @task
    def deploy(released: dict, params=None) -> dict:
        return steps.deploy(run_settings(params), steps.Release.from_dict(released))

    @task
    def smoke_test(deployed: dict, released: dict, params=None) -> dict:
        return steps.smoke_test(run_settings(params), steps.Release.from_dict(released))

    dataset = training_set()
    compressed = compress(train(dataset), dataset)
    passed = gate(evaluate(compressed, dataset), compressed)
    released = release(compressed)
    passed >> released
    smoke_test(deploy(released), released)
    enough_new_data() >> dataset


shoprec_training()
