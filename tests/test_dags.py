"""The Airflow DAGs: they import, their graphs are as designed, and they run with dag.test().

Airflow reads its configuration once, at first import, so this module points it at the
session's SHOPREC_HOME before anything imports Airflow. The DAG tasks load the settings
when they run, so each test's own SHOPREC_HOME (the ``home`` fixture) isolates its data.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import textwrap
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from entrypoints.airflow_env import DAGS_DIR, airflow_variables, migrate_db
from entrypoints.inbox import inbox_batches, inbox_folder
from entrypoints.orchestration import alert_on_failure
from entrypoints.serving import start_service
from entrypoints.steps import enough_new_data
from shoprec import lake
from shoprec.adapters.base import Batch
from shoprec.config import load_settings, settings_env
from shoprec.features.online import OnlineFeatures
from shoprec.features.sequence import recent_items
from shoprec.features.store import feature_store
from simulator.shop import generate, write_generated
from training.registry import production_version, promotion_history

# Airflow runs inside this test process (dag.test()) and reads its configuration from this
# process's environment once, at import; the SHOPREC_* variables stay out, so each task's
# settings still follow the test's own SHOPREC_HOME.
_SESSION_SETTINGS = load_settings()
_SESSION_SETTINGS.airflow_home.mkdir(parents=True, exist_ok=True)
os.environ.update(airflow_variables(_SESSION_SETTINGS))
import great_expectations  # noqa: E402,F401  before Airflow, or its logging makes GX chatty
from airflow.dag_processing.bundles.manager import DagBundlesManager  # noqa: E402  after the Airflow variables are set
from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db  # noqa: E402

HOUR = datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def airflow_db():
    migrate_db(load_settings())


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    return DagBag(dag_folder=str(DAGS_DIR))


def edges(dag) -> set[tuple[str, str]]:
    return {(t.task_id, down) for t in dag.tasks for down in t.downstream_task_ids}


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state.value if hasattr(ti.state, "value") else ti.state) for ti in run.get_task_instances()}


# --- structure ------------------------------------------------------------------------------


def test_every_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"shoprec_features", "shoprec_training", "shoprec_monitoring", "shoprec_experiments"}


def test_features_graph_is_validate_then_features_then_materialize(dagbag):
    dag = dagbag.get_dag("shoprec_features")
    assert edges(dag) == {
        ("pick_batches", "validate_and_ingest"),
        ("validate_and_ingest", "build_features"),
        ("compact_event_log", "build_features"),  # every hour, batch or not
        ("build_features", "feast_apply"),
        ("feast_apply", "materialize"),
        ("validate_and_ingest", "materialize"),
    }
    assert dag.get_task("validate_and_ingest").retries == 0  # bad data stays bad: no retry
    assert [a.name for a in dag.get_task("materialize").outlets] == ["shoprec_features"]
    assert "0 * * * *" in str(dag.timetable)


def test_training_graph_runs_every_step_in_order_behind_the_gate(dagbag):
    dag = dagbag.get_dag("shoprec_training")
    chain = ["enough_new_data", "training_set", "train", "compress", "evaluate", "gate", "release", "deploy", "smoke_test"]
    assert {(a, b) for a, b in zip(chain, chain[1:])} <= edges(dag)
    assert {("compress", "gate"), ("compress", "release"), ("release", "smoke_test")} <= edges(dag)
    assert {t.task_id for t in dag.tasks} == set(chain)  # no Bento build, no model-store copy
    # nothing reaches the registry without passing the gate
    assert dag.get_task("release").upstream_task_ids >= {"gate"}
    assert set(dag.params) >= {"mode", "preset", "overrides", "compression"}
    assert "shoprec_features" in str(dag.timetable) and "0 3 * * *" in str(dag.timetable)


def test_experiments_graph_is_one_hourly_online_test(dagbag):
    dag = dagbag.get_dag("shoprec_experiments")
    assert [t.task_id for t in dag.tasks] == ["online_test"]
    assert "30 * * * *" in str(dag.timetable)


def test_every_task_has_retries_backoff_timeout_and_alert(dagbag):
    for dag in dagbag.dags.values():
        for t in dag.tasks:
            assert t.execution_timeout is not None, t.task_id
            assert t.retry_exponential_backoff, t.task_id
            assert alert_on_failure in (t.on_failure_callback or []) or t.on_failure_callback is alert_on_failure


# --- pure glue ------------------------------------------------------------------------------


def test_inbox_takes_exactly_the_batches_of_the_interval(settings):
    for minute in (59, 60, 119, 120):  # 10:59 and 11:00 .. 11:59 and 12:00
        inbox_folder(settings, HOUR + timedelta(minutes=minute), "b").mkdir(parents=True)
    (settings.inbox_dir / "README").write_text("not a batch")
    (settings.inbox_dir / "garbage-folder").mkdir()
    picked = inbox_batches(settings, HOUR + timedelta(hours=1), HOUR + timedelta(hours=2))
    assert [p.name for p in picked] == ["20261101T110000Z-b", "20261101T115900Z-b"]
    assert inbox_batches(settings, HOUR - timedelta(hours=5), HOUR) == []


def test_asset_triggered_training_needs_enough_new_events(settings):
    class Event:
        def __init__(self, n):
            self.extra = {"new_events": n}

    strict = settings.with_overrides(promotion={"min_new_events_for_training": 100})
    assert enough_new_data(strict, None)  # scheduled run
    assert not enough_new_data(strict, {"shoprec_features": [Event(40), Event(50)]})
    assert enough_new_data(strict, {"shoprec_features": [Event(40), Event(60)]})


# --- runs -------------------------------------------------------------------------------------


def online_store_dump(settings) -> list[str]:
    path = settings.feast_dir / "online_store.db"
    with sqlite3.connect(path) as db:
        return list(db.iterdump())


def tree(path: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture(scope="module")
def features_run(dagbag, tmp_path_factory):
    """One real features run on a small generated batch, in a home of its own."""
    home = tmp_path_factory.mktemp("features-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOPREC_HOME", str(home))
        settings = load_settings()
        batch = generate(3000, seed=3, start="2026-10-01", days=20)
        write_generated(batch, inbox_folder(settings, HOUR + timedelta(minutes=30), "shop"))
        run = dagbag.get_dag("shoprec_features").test(logical_date=HOUR + timedelta(hours=1))
        yield settings, batch, run


@pytest.mark.slow
def test_features_dag_ingests_builds_and_materializes(features_run):
    settings, batch, run = features_run
    assert str(run.state) in ("success", "DagRunState.SUCCESS"), states(run)
    assert set(states(features_run[2]).values()) == {"success"}
    assert len(list((settings.lake_dir / "events").rglob("*.parquet"))) >= 1
    user = batch.events["user_id"].iloc[-1]
    online = feature_store(settings).get_online_features(
        features=["user_recent_items:item_ids"], entity_rows=[{"user_id": user}]
    ).to_dict()
    assert online["item_ids"][0], f"no online sequence for {user}"


@pytest.mark.slow
def test_invalid_batch_fails_at_validation_and_changes_nothing(features_run, dagbag, monkeypatch):
    settings, batch, _ = features_run
    monkeypatch.setenv("SHOPREC_HOME", str(settings.home))
    online_before, models_before = online_store_dump(settings), tree(settings.models_dir) + tree(settings.bentoml_home)
    bad = inbox_folder(settings, HOUR + timedelta(hours=1, minutes=5), "broken")
    bad.mkdir(parents=True)
    events = batch.events.head(50).copy()
    events["user_id"] = None
    events.to_parquet(bad / "events.parquet")

    run = dagbag.get_dag("shoprec_features").test(logical_date=HOUR + timedelta(hours=2))

    got = states(run)
    assert "failed" in str(run.state).lower()
    assert got["validate_and_ingest"] == "failed"
    assert got["pick_batches"] == "success"
    assert {got[t] for t in ("build_features", "feast_apply", "materialize")} <= {"upstream_failed", "skipped"}
    assert online_store_dump(settings) == online_before
    assert tree(settings.models_dir) + tree(settings.bentoml_home) == models_before
    assert any(settings.quarantine_dir.iterdir()), "the refused batch was not quarantined"
    alerts = [json.loads(p.read_text()) for p in settings.alerts_dir.glob("*.json")]
    assert any(a["task_id"] == "validate_and_ingest" and "broken" in a["error"] for a in alerts)


def online_rows(settings) -> list[tuple]:
    """Every online row without Feast's write time (created_ts), which a re-run changes."""
    with sqlite3.connect(settings.feast_dir / "online_store.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return sorted((t, *row) for t in tables
                      for row in db.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "{t}"'))


@pytest.fixture(scope="module")
def backfill(dagbag, tmp_path_factory):
    """Three hourly batches backfilled newest first (``airflow backfill create --run-backwards``),
    so the older events arrive after newer ones are online; then the middle hour is re-run."""
    home = tmp_path_factory.mktemp("backfill-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOPREC_HOME", str(home))
        settings = load_settings()
        shop = generate(3000, seed=5, start="2026-10-01", days=21)
        cuts = pd.to_datetime(["2026-10-08", "2026-10-15"], utc=True)
        parts = [shop.events[shop.events["timestamp"] < cuts[0]],
                 shop.events[(shop.events["timestamp"] >= cuts[0]) & (shop.events["timestamp"] < cuts[1])],
                 shop.events[shop.events["timestamp"] >= cuts[1]]]
        hours = [HOUR - timedelta(hours=h) for h in (3, 2, 1)]  # the past range [07:00, 10:00)
        for hour, part in zip(hours, parts):
            write_generated(Batch(part, shop.items), inbox_folder(settings, hour + timedelta(minutes=20), "export"))
        dag = dagbag.get_dag("shoprec_features")
        runs = [states(dag.test(logical_date=hour + timedelta(hours=1))) for hour in reversed(hours)]
        before = online_rows(settings), tree(settings.lake_dir)
        rerun = states(dag.test(logical_date=hours[1] + timedelta(hours=1)))  # replaces that hour's run
        yield settings, shop, runs, rerun, before


@pytest.mark.slow
def test_a_backfill_over_past_hours_brings_every_batch_online(backfill):
    settings, shop, runs, _, _ = backfill
    assert all(set(run.values()) == {"success"} for run in runs), runs
    assert {r["source"] for r in lake.batch_records(settings.lake_dir)} == {
        str(p) for p in settings.inbox_dir.iterdir()}  # each hour took its own batch
    expected = recent_items(shop.events, settings.features.sequence_length).set_index("user_id")
    users = list(expected.index)
    online = OnlineFeatures(settings).recent_items(users)
    wrong = [u for u in users if online[u] != list(expected.loc[u, "item_ids"])]
    assert not wrong, f"{len(wrong)} of {len(users)} users have a stale online sequence, e.g. {wrong[:3]}"


@pytest.mark.slow
def test_re_running_an_hour_leaves_lake_and_online_store_as_they_were(backfill):
    settings, _, _, rerun, (online_before, lake_before) = backfill
    assert set(rerun.values()) == {"success"}, rerun
    assert tree(settings.lake_dir) == lake_before
    assert online_rows(settings) == online_before


RETRY_DAG = '''
from datetime import datetime, timezone
from pathlib import Path
from airflow.sdk import dag, task
from entrypoints import steps
from shoprec.config import load_settings

@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     default_args=steps.task_defaults(load_settings()))
def flaky():
    @task
    def fails_{mode}():
        marker = Path(load_settings().home) / "tried-{dag_id}"
        if "{mode}" == "always" or not marker.exists():
            marker.touch()
            raise RuntimeError("transient trouble")
        return "ok"
    fails_{mode}()

flaky()
'''


def test_a_task_that_fails_once_recovers_on_retry_and_a_lasting_failure_alerts(
    airflow_db, home, tmp_path, monkeypatch
):
    home.mkdir(parents=True)
    monkeypatch.setenv("SHOPREC_AIRFLOW__RETRY_DELAY_SECONDS", "0.1")
    monkeypatch.setenv("SHOPREC_AIRFLOW__RETRIES", "1")
    folder = tmp_path / "dags"
    folder.mkdir()
    for dag_id, mode in (("shoprec_test_once", "once"), ("shoprec_test_always", "always")):
        (folder / f"{dag_id}.py").write_text(textwrap.dedent(RETRY_DAG.format(dag_id=dag_id, mode=mode)))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    # dag.test() only runs DAGs serialized in the metadata DB under a known bundle
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    settings = load_settings()

    once = bag.get_dag("shoprec_test_once").test()
    [ti] = once.get_task_instances()
    assert states(once) == {"fails_once": "success"} and ti.try_number == 2
    assert not settings.alerts_dir.exists() or not list(settings.alerts_dir.iterdir())

    always = bag.get_dag("shoprec_test_always").test()
    assert states(always) == {"fails_always": "failed"}
    [alert] = [json.loads(p.read_text()) for p in settings.alerts_dir.glob("*.json")]
    assert alert["dag_id"] == "shoprec_test_always" and "transient trouble" in alert["error"]


# --- training: a real service to deploy to ----------------------------------------------------

TOKEN = secrets.token_urlsafe(32)  # the API token (opens /model and the deploy task's /admin/reload)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def service_settings(features_run):
    """`bentoml serve` of the ShopRec service on the features run's home, as the DAG's deploy target;
    yields the settings the service and the DAG runs share."""
    home = features_run[0].home
    settings = load_settings(
        home=home, serving={"port": free_port()}, api_token=TOKEN, airflow={"retries": 0},
        # one torch thread: beside a busy neighbour two threads make the gate's latency read 100x slower
        training={"preset": "quick", "num_threads": 1},
        # a hold-out big enough for the compression benchmark's batches of 32 on this small shop
        promotion={"holdout_fraction": 0.3},
    )
    service = start_service(settings, log_path=home / "service.log", wait="live")
    yield settings, service.url
    service.stop()


@pytest.fixture(scope="module")
def training_runs(service_settings, dagbag):
    """A first training run (no champion: promotes), then a crippled challenger that must lose."""
    settings, url = service_settings
    with pytest.MonkeyPatch.context() as mp:
        for key, value in settings_env(settings).items():  # the tasks, run in this process, load these settings
            mp.setenv(key, value)
        dag = dagbag.get_dag("shoprec_training")
        first = dag.test(logical_date=datetime(2026, 11, 2, 3, 0, tzinfo=timezone.utc))
        champion = production_version(settings)
        losing = dag.test(
            logical_date=datetime(2026, 11, 3, 3, 0, tzinfo=timezone.utc),
            # untrained and ID-only: with text, even an untrained model ranks same-category items well
            run_conf={"mode": "full", "overrides": {"max_epochs": 1, "lr": 1e-7, "use_text": False}},
        )
        yield settings, url, first, champion, losing


@pytest.mark.slow
def test_training_dag_trains_releases_and_deploys(training_runs):
    settings, url, first, champion, _ = training_runs
    assert set(states(first).values()) == {"success"}, states(first)
    assert champion is not None
    assert [(r.action, r.version) for r in promotion_history(settings)] == [("promote", champion)]
    # no BentoML model-store copy and no Bento any more (`bentoml serve` makes the empty folders)
    assert not list(settings.bentoml_home.rglob("model.yaml")) and not list(settings.bentoml_home.rglob("bento.yaml"))
    assert get_json(f"{url}/model")["model_version"] == champion  # the live service swapped


@pytest.mark.slow
def test_a_losing_challenger_stops_at_the_gate_and_production_is_untouched(training_runs):
    settings, url, _, champion, losing = training_runs
    got = states(losing)
    assert got["gate"] == "success" and got["train"] == "success"
    assert {got[t] for t in ("release", "deploy", "smoke_test")} == {"skipped"}
    assert production_version(settings) == champion
    assert get_json(f"{url}/model")["model_version"] == champion
