"""The daily drift and health report: its numbers on frames with known answers, its thresholds,
the files it writes, the real shop it reads (lake, SQLite Feast online store, registry, impression
log), the CLI and the DAG task that run it, and the Prometheus/Grafana configuration.

Airflow reads its configuration once, at first import: as in tests/test_dags.py, this module
points it at the session's home before anything imports Airflow.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from entrypoints import steps
from entrypoints.airflow_env import DAGS_DIR, airflow_variables, migrate_db
from entrypoints.cli import cli
from entrypoints.orchestration import alert_on_failure
from shoprec import lake
from shoprec.adapters.base import Batch
from shoprec.config import REPO_ROOT, load_hyperparameters, load_settings
from shoprec.event_log import EventLog
from shoprec.features import store as feast_store
from shoprec.features import tables
from shoprec.impressions import IMPRESSIONS, Impression, impression_log_dir, impressions_table
from shoprec.monitoring import drift, health
from shoprec.monitoring.render import PLOTS
from shoprec.monitoring.report import (Freshness, InputDrift, ModelQuality, MonitoringReport, VersionDay, breaches,
                                       input_drift, online_ctr, report_dir)
from shoprec.schema import conform_events
from simulator.shop import generate
from training.artifact import save_artifact
from training.data import ItemVocab
from training.models import new_model
from training.registry import promote
from tests.tools import compose_config

_SESSION_SETTINGS = load_settings()
_SESSION_SETTINGS.airflow_home.mkdir(parents=True, exist_ok=True)
os.environ.update(airflow_variables(_SESSION_SETTINGS))
import great_expectations  # noqa: E402,F401  before Airflow, or its logging makes GX chatty
from airflow.dag_processing.dagbag import DagBag  # noqa: E402  after the Airflow variables are set

DAY = date(2026, 10, 8)  # the shop's last day: the report of a normal day
DRIFTED = date(2026, 10, 9)  # a day the test writes: a changed assortment and only purchases
UNKNOWN_ITEMS = 10  # catalog items the tiny served model leaves out of its vocabulary
DATA_END = pd.Timestamp("2026-10-06 12:00", tz="UTC")  # the served model's training data end
DOCS = REPO_ROOT / "docs" / "operations.md"
DEPLOY = REPO_ROOT / "deploy"


def frame(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


# --- drift on frames with known answers -----------------------------------------------------


def test_identical_windows_have_no_drift():
    events = frame(event_type=["view", "view", "add_to_cart", "purchase"], item_id=["a", "b", "a", "c"])
    mix = drift.event_mix(events)
    assert drift.js_divergence(mix, mix) == 0.0 and drift.psi(mix, mix) == 0.0
    reference, current = drift.item_bins(events, events.sample(frac=1, random_state=1), top_n=2)
    assert drift.js_divergence(reference, current) == 0.0 and drift.psi(reference, current) == 0.0


def test_a_shifted_event_mix_has_the_expected_divergence():
    half = drift.event_mix(frame(event_type=["view", "add_to_cart"] * 50))
    views = drift.event_mix(frame(event_type=["view"] * 7))
    # JS(P, Q) of P = (1/2, 1/2), Q = (1, 0): M = (3/4, 1/4), in bits 3/2 - 3/4 log2(3)
    assert drift.js_divergence(half, views) == pytest.approx(1.5 - 0.75 * math.log2(3))
    assert drift.js_divergence(views, half) == pytest.approx(1.5 - 0.75 * math.log2(3))  # symmetric
    assert drift.js_divergence(views, drift.event_mix(frame(event_type=["purchase"]))) == pytest.approx(1.0)


def test_psi_of_a_known_shift_and_of_a_missing_bin():
    reference = pd.Series({"a": 0.5, "b": 0.5})
    # sum (c - r) ln(c / r) = 0.4 ln(1.8) + (-0.4) ln(0.2) = 0.4 ln 9
    assert drift.psi(reference, pd.Series({"a": 0.9, "b": 0.1})) == pytest.approx(0.4 * math.log(9))
    # a bin the day lacks counts as PSI_FLOOR, not as zero (the index would be infinite)
    assert drift.psi(reference, pd.Series({"a": 1.0})) == pytest.approx(
        (1 - 0.5) * math.log(1 / 0.5) + (drift.PSI_FLOOR - 0.5) * math.log(drift.PSI_FLOOR / 0.5))


def test_item_bins_keep_the_reference_top_n_and_pool_the_rest():
    reference = frame(item_id=["a"] * 5 + ["b"] * 3 + ["c"] * 2)
    current = frame(item_id=["a", "new", "new", "c"])
    ref, cur = drift.item_bins(reference, current, top_n=2)
    assert list(ref.index) == ["a", "b", drift.OTHER] == list(cur.index)
    assert ref.tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert cur.tolist() == pytest.approx([0.25, 0.0, 0.75])  # a new item and a rare one land in the rest


def test_unknown_share():
    assert drift.unknown_share(pd.Series(["a", "b", "x", "y"]), {"a", "b"}) == 0.5
    assert drift.unknown_share(pd.Series([], dtype="string"), {"a"}) is None


def test_row_ages_from_online_sequences():
    users = ["u1", "u2", "u3"]
    stamps = [[pd.Timestamp("2026-10-08 10:00", tz="UTC"), pd.Timestamp("2026-10-08 22:00", tz="UTC")],
              [], [pd.Timestamp("2026-10-09 06:00", tz="UTC")]]  # u2: no row; u3: after `now`
    newest = health.newest_per_user(users, stamps)
    assert newest["u1"] == pd.Timestamp("2026-10-08 22:00", tz="UTC") and pd.isna(newest["u2"])
    ages = health.row_ages_hours(newest, pd.Timestamp("2026-10-09 00:00", tz="UTC"))
    assert ages.to_dict() == {"u1": 2.0, "u3": 0.0}


def test_ctr_per_version_and_day():
    served = pd.to_datetime(["2026-10-08 01:00", "2026-10-08 02:00", "2026-10-08 03:00", "2026-10-08 04:00",
                             "2026-10-09 01:00"], utc=True)
    attributed = frame(served_at=served, model_version=["v1", "v1", "v1", "v2", "v1"],
                       clicked=[True, False, False, True, True])
    table = health.ctr_by_version_day(attributed)
    assert table.to_dict("records") == [
        {"day": "2026-10-08", "model_version": "v1", "impressions": 3, "clicks": 1, "ctr": pytest.approx(1 / 3)},
        {"day": "2026-10-08", "model_version": "v2", "impressions": 1, "clicks": 1, "ctr": 1.0},
        {"day": "2026-10-09", "model_version": "v1", "impressions": 1, "clicks": 1, "ctr": 1.0},
    ]


# --- thresholds -----------------------------------------------------------------------------


def drifted(**changes) -> InputDrift:
    steady = frame(event_type=["view"] * 8 + ["purchase"] * 2, item_id=list("aabbccddee"), user_id=list("uuuuuvvvvv"))
    base = input_drift(steady, steady, 3, frozenset("abcde"), pd.Index(["u", "v"]))
    return InputDrift(**{**base.__dict__, **changes})


def fresh(p95: float | None = 1.0, **changes) -> Freshness:
    return Freshness(**{**dict(sampled_users=10, without_row=0, age_hours_p50=p95, age_hours_p95=p95,
                               age_hours_max=p95), **changes})


def test_a_steady_day_breaks_no_threshold(settings):
    assert breaches(drifted(), fresh(), ModelQuality([], []), "v1", "2026-10-08", settings.monitoring) == []


@pytest.mark.parametrize("change, check", [
    ({"events": 0}, "min_events"),
    ({"event_mix_js": 0.051}, "max_event_mix_js"),
    ({"item_psi": 0.51}, "max_item_psi"),
    ({"unknown_item_share": 0.21}, "max_unknown_item_share"),
])
def test_each_drift_beyond_its_threshold_breaks_it(settings, change, check):
    found = breaches(drifted(**change), fresh(), ModelQuality([], []), "v1", "2026-10-08", settings.monitoring)
    assert [b.check for b in found] == [check]
    at_limit = {k: getattr(settings.monitoring, check) for k in change}  # equal to the threshold still holds
    assert breaches(drifted(**at_limit), fresh(), ModelQuality([], []), "v1", "2026-10-08", settings.monitoring) == []


def test_stale_or_missing_online_rows_and_a_low_ctr_break_their_thresholds(settings):
    limits = settings.with_overrides(monitoring={"min_ctr": 0.05, "max_unknown_user_share": 0.3}).monitoring
    quiet = ModelQuality([VersionDay("2026-10-08", "v1", 200, 5, 0.025), VersionDay("2026-10-08", "v0", 200, 1, 0.005),
                          VersionDay("2026-10-07", "v1", 200, 1, 0.005)], [])
    found = breaches(drifted(unknown_user_share=0.4), fresh(49.0), quiet, "v1", "2026-10-08", limits)
    assert [(b.check, b.observed) for b in found] == [("max_unknown_user_share", 0.4), ("max_feature_age_hours", 49.0),
                                                      ("min_ctr", 0.025)]  # only production's CTR of the day counts
    few = ModelQuality([VersionDay("2026-10-08", "v1", 99, 0, 0.0)], [])  # below min_impressions_for_ctr
    assert breaches(drifted(), fresh(), few, "v1", "2026-10-08", limits) == []
    no_rows = breaches(drifted(), fresh(None, without_row=10), quiet, "v1", "2026-10-08", settings.monitoring)
    assert [b.check for b in no_rows] == ["max_feature_age_hours"] and "none of the 10" in no_rows[0].message


# --- a real shop: lake, SQLite Feast online store, a served model -------------------------------


def served_version(settings, items: list[str]) -> str:
    """A tiny real model version with the manifest fields the report reads, promoted."""
    hyperparameters = load_hyperparameters("sasrec", "quick", {"use_text": False, "hidden": 8, "inner": 16,
                                                               "layers": 1, "heads": 1, "max_len": 5})
    net = new_model(hyperparameters, len(ItemVocab(items)), None)
    metadata = {"protocol": "full", "data_end": str(DATA_END), "metrics": {"NDCG@10": 0.12, "HR@10": 0.25}}
    save_artifact(net, items, settings.models_dir, metadata, version="monitored-v1")
    promote("monitored-v1", settings)
    return "monitored-v1"


def drifted_day(events: pd.DataFrame) -> pd.DataFrame:
    """The shop's last day again a day later: only purchases, half of them of items nobody knows,
    the other half of one item (a bot, or a broken feed)."""
    day = events[events["timestamp"] >= pd.Timestamp(DAY.isoformat(), tz="UTC")].copy()
    day["timestamp"] = day["timestamp"] + pd.Timedelta(days=1)
    day["event_type"] = "purchase"
    new = (pd.RangeIndex(len(day)) % 2 == 0)
    day.loc[new, "item_id"] = [f"unseen-{n}" for n in range(int(new.sum()))]
    day.loc[~new, "item_id"] = events["item_id"].value_counts().index[0]
    return conform_events(day.reset_index(drop=True))


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A generated shop in the lake, its feature tables in a SQLite Feast store (materialized),
    a served model that lacks some items; then a drifted day written to the lake only."""
    settings = load_settings(home=tmp_path_factory.mktemp("monitoring-home"))
    batch = generate(8000, seed=3, start="2026-10-01", days=8)
    lake.write_batch(settings.lake_dir, batch)
    tables.build_tables(settings, encode_texts=False)
    feast_store.apply(settings)
    feast_store.materialize(settings)
    vocabulary = batch.items["item_id"].astype(str).tolist()[:-UNKNOWN_ITEMS]
    version = served_version(settings, vocabulary)
    late = drifted_day(batch.events)
    lake.write_batch(settings.lake_dir, Batch.from_frames(late, batch.items))
    return {"settings": settings, "events": batch.events, "late": late, "vocabulary": set(vocabulary),
            "version": version}


@pytest.fixture(scope="module")
def day_report(shop):
    return steps.monitoring_report(shop["settings"], DAY)


def test_the_report_of_a_normal_day_matches_the_frames(shop, day_report):
    events, settings = shop["events"], shop["settings"]
    start = pd.Timestamp(DAY.isoformat(), tz="UTC")
    today = events[events["timestamp"] >= start]
    report = MonitoringReport.from_dict(json.loads(Path(day_report["json"]).read_text()))
    assert report.ok and day_report["ok"], report.breaches
    assert report.model_version == shop["version"] and report.day == DAY.isoformat()
    d = report.drift
    assert (d.events, d.reference_events, d.users) == (len(today), len(events) - len(today), today["user_id"].nunique())
    assert d.unknown_item_share == pytest.approx((~today["item_id"].isin(shop["vocabulary"])).mean())
    assert d.unknown_item_share > 0
    trained_on = set(events.loc[events["timestamp"] <= DATA_END, "user_id"])
    users = today["user_id"].drop_duplicates()
    assert d.unknown_user_share == pytest.approx((~users.isin(trained_on)).mean()) and 0 < d.unknown_user_share < 1
    assert d.event_mix_js == pytest.approx(drift.js_divergence(drift.event_mix(events[events["timestamp"] < start]),
                                                               drift.event_mix(today)))
    assert len(d.item_popularity.labels) == settings.monitoring.top_items + 1


def test_online_rows_of_the_day_are_as_old_as_their_newest_event(shop, day_report):
    report = MonitoringReport.from_dict(json.loads(Path(day_report["json"]).read_text()))
    f = report.freshness
    today = shop["events"][shop["events"]["timestamp"] >= pd.Timestamp(DAY.isoformat(), tz="UTC")]
    assert f.sampled_users == min(today["user_id"].nunique(), 1000) and f.without_row == 0 and f.error is None
    # every user of the day has a row whose newest event is that user's last event: its age at the day's end
    end = pd.Timestamp((DAY + timedelta(days=1)).isoformat(), tz="UTC")
    expected = ((end - today.groupby("user_id")["timestamp"].max()) / pd.Timedelta(hours=1)).sort_values()
    assert sorted(f.ages_hours) == pytest.approx(expected.round(4).tolist(), abs=1e-3)
    assert f.age_hours_p95 == pytest.approx(expected.quantile(0.95), abs=1e-3) and f.age_hours_max <= 24


def test_the_report_files_are_written_and_the_json_is_the_typed_report(shop, day_report):
    folder = report_dir(shop["settings"], DAY)
    assert Path(day_report["folder"]) == folder == shop["settings"].home / "reports" / "monitoring" / "2026-10-08"
    data = json.loads((folder / "report.json").read_text())
    assert MonitoringReport.from_dict(data).to_dict() == data
    for name in PLOTS:
        assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f'src="{name}.png"' in (folder / "index.html").read_text()
    page = (folder / "index.html").read_text()
    assert "All thresholds hold" in page and shop["version"] in page
    offline = MonitoringReport.from_dict(data).quality.offline
    assert [(v.version, v.production, v.metrics) for v in offline] == [(shop["version"], True, {"NDCG@10": 0.12, "HR@10": 0.25})]


def test_a_drifted_day_fails_the_step_with_the_report_written(shop):
    settings, late = shop["settings"], shop["late"]
    with pytest.raises(steps.ThresholdsBroken) as broken:
        steps.monitoring_report(settings, DRIFTED)
    report = MonitoringReport.from_dict(json.loads((report_dir(settings, DRIFTED) / "report.json").read_text()))
    found = {b.check: b.observed for b in report.breaches}
    assert {"max_event_mix_js", "max_item_psi", "max_unknown_item_share"} <= set(found)
    assert found["max_unknown_item_share"] == pytest.approx((~late["item_id"].isin(shop["vocabulary"])).mean())
    assert found["max_event_mix_js"] > 0.5  # the day is all purchases
    assert "item popularity PSI" in str(broken.value) and str(report_dir(settings, DRIFTED) / "index.html") in str(broken.value)
    page = (report_dir(settings, DRIFTED) / "index.html").read_text()
    assert not report.ok and "All thresholds hold" not in page and "item popularity PSI" in page


def test_online_ctr_per_version_from_the_impression_and_event_logs(home):
    """Impressions in the online loop's log and the events that followed, attributed by
    ``shoprec.impressions.attribute``: 3 of v1's 4 shown impressions clicked, v2's 1 not; a
    shadow impression has no CTR."""
    settings = load_settings()
    at = pd.Timestamp("2026-10-08 10:00", tz="UTC")
    shown = [Impression(f"r{n}", at + pd.Timedelta(minutes=n), f"u{n}", None, [f"i{n}", "x"], version, "champion", None,
                        shadow, False)
             for n, (version, shadow) in enumerate([("v1", False)] * 4 + [("v2", False), ("v3", True)])]
    EventLog(impression_log_dir(settings), fmt=IMPRESSIONS).append(impressions_table(shown))
    clicks = conform_events(frame(user_id=["u0", "u1", "u2", "u4"], item_id=["i0", "i1", "i2", "other"],
                                  event_type=["view"] * 4, timestamp=[at + pd.Timedelta(minutes=n, seconds=30) for n in (0, 1, 2, 4)]))
    EventLog(tables.event_log_dir(settings)).append(clicks)
    day = online_ctr(settings, pd.Timestamp("2026-10-08", tz="UTC"), pd.Timestamp("2026-10-09", tz="UTC"))
    assert day == [VersionDay("2026-10-08", "v1", 4, 3, 0.75), VersionDay("2026-10-08", "v2", 1, 0, 0.0)]
    assert online_ctr(settings, pd.Timestamp("2026-10-09", tz="UTC"), pd.Timestamp("2026-10-10", tz="UTC")) == []


# --- the CLI, as docs/operations.md shows it ------------------------------------------------


def documented_commands() -> list[list[str]]:
    """The ``shoprec monitor ...`` lines of the Monitoring section of docs/operations.md."""
    section = DOCS.read_text().split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line.strip())[1:] for line in section.splitlines() if line.strip().startswith("shoprec monitor")]


def test_the_documented_commands_run(shop, monkeypatch):
    monkeypatch.setenv("SHOPREC_HOME", str(shop["settings"].home))
    commands = documented_commands()
    assert ["monitor", "report", "--help"] in commands and len(commands) >= 3
    runner = CliRunner()
    for command in commands:
        result = runner.invoke(cli, command)
        assert result.exit_code == 0, (command, result.output)
        if "--json" in command:
            assert json.loads(result.output)["html"].endswith("2026-10-08/index.html")
    drifted_run = runner.invoke(cli, ["monitor", "report", "--day", DRIFTED.isoformat()])
    assert drifted_run.exit_code == 1 and "item popularity PSI" in drifted_run.output


# --- the DAG ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dagbag():
    migrate_db(_SESSION_SETTINGS)  # the database this process's Airflow was pointed at on import
    return DagBag(dag_folder=str(DAGS_DIR))


def test_the_monitoring_dag_is_one_daily_task_with_the_alert(dagbag):
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("shoprec_monitoring")
    assert [t.task_id for t in dag.tasks] == ["report"]
    assert "0 0 * * *" in str(dag.timetable)
    task = dag.get_task("report")
    assert alert_on_failure in (task.on_failure_callback or []) or task.on_failure_callback is alert_on_failure


def returned_value(run_id: str, task_id: str):
    """A task's XCom return value, from Airflow's metadata database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        [row] = session.scalars(XComModel.get_many(run_id=run_id, task_ids=task_id, key="return_value")).all()
        return XComModel.deserialize_value(row)


@pytest.mark.slow
def test_the_dag_task_writes_the_report_and_fails_with_an_alert_on_drift(dagbag, shop, monkeypatch):
    settings = shop["settings"]
    monkeypatch.setenv("SHOPREC_HOME", str(settings.home))
    dag = dagbag.get_dag("shoprec_monitoring")
    shutil.rmtree(report_dir(settings, DAY), ignore_errors=True)
    # like the features DAG's hours: the run of the interval [10-08, 10-09) is dated by its end
    normal = dag.test(logical_date=datetime(2026, 10, 9, tzinfo=timezone.utc))
    assert "success" in str(normal.state).lower()
    returned = returned_value(normal.run_id, "report")  # the link the task leaves beside its log line
    assert returned["html"] == str(report_dir(settings, DAY) / "index.html") and Path(returned["html"]).is_file()
    drifted_run = dag.test(logical_date=datetime(2026, 10, 20, tzinfo=timezone.utc), run_conf={"day": DRIFTED.isoformat()})
    [ti] = drifted_run.get_task_instances()
    assert "failed" in str(drifted_run.state).lower() and ti.try_number == 1  # no retry: the data stays drifted
    alerts = [json.loads(p.read_text()) for p in settings.alerts_dir.glob("shoprec_monitoring.*.json")]
    assert any(a["task_id"] == "report" and "item popularity PSI" in a["error"] for a in alerts), alerts


# --- Prometheus and Grafana -----------------------------------------------------------------


def dashboard_metrics() -> set[str]:
    """Every metric name a panel of the Grafana dashboard queries (histogram series reduced to the metric)."""
    [path] = (DEPLOY / "grafana" / "dashboards").glob("*.json")
    panels = json.loads(path.read_text())["panels"]
    expressions = [target["expr"] for panel in panels for target in panel.get("targets", [])]
    assert expressions, "the dashboard queries nothing"
    names = {n for e in expressions for n in re.findall(r"\b((?:shoprec|bentoml)_[a-z_]+)\b", e)}
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


EXPOSE = """
from services import metrics
for name in metrics.METRIC_NAMES:
    print(name)
metrics.answers_of_kind("model").inc()
metrics.batch_sizes.observe(2)
metrics.impressions("champion", "v1").inc()
metrics.attributed_events("view", "champion").inc()
metrics.experiment_assignments("exp", "champion").inc()
from bentoml._internal.configuration.containers import BentoMLContainer
print(BentoMLContainer.metrics_client.get().generate_latest().decode())
"""


def test_every_metric_the_dashboard_queries_is_one_the_service_exports(tmp_path):
    """The dashboard's names against what BentoML's metrics client exports for services/metrics.py
    (in a child process: the client needs its multiprocess folder) and BentoML's own request metrics."""
    from services.metrics import BENTOML_METRICS

    result = subprocess.run([sys.executable, "-c", EXPOSE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    exported = {line.split("{")[0].split(" ")[0] for line in result.stdout.splitlines() if line and not line.startswith("#")}
    exported = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    defined = set(result.stdout.split("#", 1)[0].split())
    assert defined <= exported  # every name services/metrics.py declares is what the client exports
    wanted = dashboard_metrics()
    assert {"shoprec_impressions_total", "shoprec_attributed_events_total", "bentoml_service_request_total",
            "bentoml_service_request_duration_seconds"} <= wanted
    assert wanted <= exported | set(BENTOML_METRICS), wanted - exported - set(BENTOML_METRICS)


def test_prometheus_scrapes_the_service_metrics_without_a_token():
    from services.guards import OPEN_PATHS

    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "shoprec"]
    assert job["metrics_path"] == "/metrics" and "/metrics" in OPEN_PATHS and "authorization" not in job
    # each replica on its own (through the balancer every scrape would see another replica's counters)
    assert job["static_configs"][0]["targets"] == ["recommender:3000", "recommender-2:3000"]
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"



def test_the_production_compose_file_runs_prometheus_and_grafana():
    result = compose_config()
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    mounts = {v["target"]: v["source"] for v in prometheus["volumes"] + grafana["volumes"] if isinstance(v, dict)}
    assert mounts["/etc/prometheus/prometheus.yml"] == str(DEPLOY / "prometheus.yml")
    assert mounts["/etc/grafana/provisioning"] == str(DEPLOY / "grafana" / "provisioning")
    assert mounts["/var/lib/grafana/dashboards"] == str(DEPLOY / "grafana" / "dashboards")
    assert "recommender" in prometheus["depends_on"] and "prometheus" in grafana["depends_on"]
    assert "healthcheck" in prometheus and "healthcheck" in grafana
