"""shoprec_training (daily at 03:00 UTC, and whenever the features DAG updates the
``shoprec_features`` asset): training set -> train (full, or warm-started from production)
-> challenger vs champion on the same hold-out -> compress -> gate -> register (load it as the
service would, BentoML model store, then promote) -> build the Bento -> deploy (the running
service hot-swaps) -> smoke test. A failed deploy or smoke test puts the previous production
version back, so a version the service cannot serve never stays production.

Wiring only: each task calls one step function. The gate is a short-circuit: a challenger
that loses (or a compressed model over the latency budget) ends the run there, successfully,
with every later task skipped, so production is untouched. Each run works in its own folder
keyed by the run id, so re-running a task overwrites its own output and nothing else.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from shoprec.config import load_settings
from shoprec.pipeline import FEATURES_ASSET_NAME, task_defaults


@dag(
    dag_id="shoprec_training",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * *", timezone="UTC"),
        assets=Asset(FEATURES_ASSET_NAME),
    ),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(load_settings()),
    params={
        "mode": Param("auto", enum=["auto", "full", "warm"], description="warm = continue from production"),
        "profile": Param(None, type=["null", "string"], description="training profile (quick/full); default: settings"),
        "overrides": Param({}, type="object", description="hyperparameter overrides for a full training run"),
        "compression": Param({}, type="object", description="compression benchmark overrides (CompressionOptions fields)"),
    },
    tags=["shoprec", "training"],
    doc_md=__doc__,
)
def shoprec_training():
    @task.short_circuit
    def enough_new_data(triggering_asset_events=None) -> bool:
        """A scheduled run always trains; an asset-triggered one only once enough events arrived."""
        from shoprec.pipeline import enough_new_events

        return enough_new_events(load_settings(), triggering_asset_events)

    @task
    def training_set(run_id=None) -> dict:
        from training.champion import build_training_set

        return build_training_set(load_settings(), run_id)

    @task
    def train(dataset: dict, params=None) -> dict:
        from training.champion import train_challenger

        return train_challenger(load_settings(), dataset, mode=params["mode"], profile=params["profile"],
                                overrides=params["overrides"])

    @task
    def evaluate(challenger: dict, dataset: dict) -> dict:
        from training.champion import challenger_vs_champion

        return challenger_vs_champion(load_settings(), challenger, dataset)

    @task
    def compress(challenger: dict, dataset: dict, params=None) -> dict:
        from training.champion import compress_challenger

        return compress_challenger(load_settings(), challenger, dataset, params["compression"])

    @task.short_circuit
    def gate(evaluation: dict, compressed: dict) -> bool:
        from training.champion import passes_gate

        decision = passes_gate(load_settings(), evaluation, compressed)
        print(("PROMOTE: " if decision["promote"] else "KEEP CHAMPION: ") + "; ".join(decision["reasons"]))
        return decision["promote"]

    @task
    def register(compressed: dict) -> dict:
        """Load the version as the service would, register it, and only then promote it."""
        from services.registry import release

        return release(compressed["served_version"], load_settings())

    @task
    def build_bento(registered: dict) -> dict:
        from services.bento import build_bento

        return build_bento(load_settings(), registered["bentoml_tag"])

    @task
    def deploy(registered: dict, bento: dict) -> dict:
        from services.client import deploy

        settings = load_settings()
        return deploy(settings, registered, url=settings.airflow.service_url or None)

    @task
    def smoke_test(deployed: dict, registered: dict) -> dict:
        from services.client import verify_deployment

        settings = load_settings()
        return verify_deployment(settings, registered, url=settings.airflow.service_url or None)

    dataset = training_set()
    challenger = train(dataset)
    evaluation = evaluate(challenger, dataset)
    compressed = compress(challenger, dataset)
    passed = gate(evaluation, compressed)
    registered = register(compressed)
    passed >> registered
    deployed = deploy(registered, build_bento(registered))
    smoke_test(deployed, registered)
    enough_new_data() >> dataset


shoprec_training()
