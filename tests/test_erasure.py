"""Erasure against the real ``bentoml serve`` (two workers) on each online store.

A shop (lake, Feast, a quick model) gets two users through every path that writes data:
an hourly inbox batch (validate_and_ingest + build_features + materialize), a refused batch
(quarantine: input copy, validation JSON, Data Docs), real-time /events (event log, online
row), a training set under models/runs/, an alert file and a log line. Two erasures are
then requested at the same time; afterwards no file under SHOPREC_HOME (Parquet tables read,
JSON, HTML, logs, every SQLite table's text and blobs, any other file's bytes) and no Redis
key or value holds either id, also after re-running the hour and after a late batch for an
earlier hour.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis

from entrypoints import steps
from entrypoints.inbox import inbox_folder
from shoprec import ledger
from shoprec.adapters.base import Batch
from shoprec.erasure import request_erasure, run_job
from shoprec.lake import read_events, write_batch
from shoprec.schema import conform_events
from shoprec.validation import check_id, id_rules
from simulator.shop import generate
from tests.service_harness import TOKEN, RedisServer, Server, call, prepare_shop, shop_settings
from tests.test_registry import N_ITEMS, tiny_model
from training.artifact import load_recommender, save_artifact
from training.champion import build_training_set

pytestmark = pytest.mark.slow

ALPHA, BETA = "erase-me-alpha-7f3a", "erase-me-beta-91c2"
HOUR = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def shop(request, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"erasure-{request.param}")
    redis_server = RedisServer(tmp_path_factory.mktemp("redis-data")).start() if request.param == "redis" else None
    settings = shop_settings(home, redis_server.port if redis_server else 1).with_overrides(serving={"workers": 2})
    if request.param == "sqlite":
        settings = settings.with_overrides(online_store={"type": "sqlite"})
    info = prepare_shop(settings, n_events=2000, epochs=1)
    server = Server(settings, log_path=home / "serve.log").start(timeout=180)
    yield {"settings": settings, "server": server, "redis": redis_server, **info}
    server.stop()
    if redis_server:
        redis_server.kill()


def _as_user(events: pd.DataFrame, user: str) -> pd.DataFrame:
    return events.assign(user_id=user)


def _inbox_batch(shop, arrived: datetime, name: str, users: list[str], unknown_items: bool = False) -> Path:
    """An inbox folder: 300 later events of other users plus events of ``users``, and the catalog."""
    later = shop["events"].tail(300).assign(timestamp=lambda f: f["timestamp"] + pd.Timedelta(seconds=1))
    own = [_as_user(shop["events"].head(12), user) for user in users]
    events = pd.concat([later, *own], ignore_index=True)
    if unknown_items:
        events = events.assign(item_id="no-such-item")
    folder = inbox_folder(shop["settings"], arrived, name)
    folder.mkdir(parents=True)
    events.to_parquet(folder / "events.parquet")
    shop["items"].to_parquet(folder / "items.parquet")
    return folder


def _features_run(settings, start: datetime) -> None:
    """The features DAG's steps for the hour starting at ``start``."""
    ingested = steps.validate_and_ingest(settings, steps.pick_batches(settings, start, start + timedelta(hours=1)))
    steps.build_features(settings)
    steps.materialize(settings, ingested, end=datetime.now(timezone.utc))


# --- what holds an id -------------------------------------------------------------------------


def _sqlite_hits(path: Path, needle: str) -> list[str]:
    hits = []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if (isinstance(value, str) and needle in value) or (isinstance(value, bytes) and needle.encode() in value):
                        hits.append(f"{path}:{table}")
    return hits


def files_holding(home: Path, needle: str) -> list[str]:
    """Every file under ``home`` that holds ``needle``: Parquet by its rows, SQLite by its tables, the rest by bytes."""
    hits = []
    for folder, _, names in os.walk(home):
        for name in names:
            path = Path(folder) / name
            data = path.read_bytes()
            if path.suffix == ".parquet":
                found = needle in json.dumps(pq.read_table(path).to_pylist(), default=str)
            elif data[:16] == b"SQLite format 3\x00":
                found = bool(_sqlite_hits(path, needle)) or needle.encode() in data
            else:
                found = needle.encode() in data
            if found:
                hits.append(str(path.relative_to(home)))
    return sorted(hits)


def redis_holding(shop, needle: str) -> list[bytes]:
    if shop["redis"] is None:
        return []
    client = redis.Redis(port=shop["redis"].port)
    hits = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values = client.hgetall(key) if kind == b"hash" else {b"": client.dump(key) or b""}
        blob = key + b"".join(k + v for k, v in values.items())
        if needle.encode() in blob:
            hits.append(key)
    return hits


def aof_holding(shop, needle: str) -> bool:
    """Whether Redis's append-only files still hold ``needle`` (once its rewrites finished)."""
    if shop["redis"] is None:
        return False
    client = redis.Redis(port=shop["redis"].port)
    deadline = time.monotonic() + 30
    while client.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return any(needle.encode() in p.read_bytes() for p in shop["redis"].data_dir.rglob("*") if p.is_file())


def _recommend(shop, user: str) -> dict:
    return call(shop["server"], "POST", "/recommend", {"user_id": user, "k": 3}, token=TOKEN)[1]


def _wait_done(shop, job_id: str, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status, body = call(shop["server"], "GET", f"/admin/erasures/{job_id}", token=TOKEN)
        assert status == 200, body
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.3)


# --- the test ----------------------------------------------------------------------------------


def test_an_erased_user_is_nowhere_and_stays_out(shop):
    settings, home = shop["settings"], shop["settings"].home
    _inbox_batch(shop, HOUR, "hourly", [ALPHA, BETA])
    _features_run(settings, HOUR)
    refused = _inbox_batch(shop, HOUR + timedelta(minutes=70), "refused", [ALPHA], unknown_items=True)
    with pytest.raises(steps.BatchRefused):
        steps.validate_and_ingest(settings, [str(refused)])
    item = str(shop["items"]["item_id"].iloc[0])
    for user in (ALPHA, BETA):
        status, body = call(shop["server"], "POST", "/events", {"events": [{"user_id": user, "item_id": item, "event_type": "view"}]}, token=TOKEN)
        assert status == 200, body
    build_training_set(settings, "before-erasure")
    (settings.alerts_dir).mkdir(parents=True, exist_ok=True)
    (settings.alerts_dir / "features-failed.json").write_text(json.dumps({"dag": "shoprec_features", "detail": f"user {ALPHA} broke it"}))
    (settings.reports_dir / "demo").mkdir(parents=True, exist_ok=True)
    (settings.reports_dir / "demo" / "features.log").write_text(f"ok line\nrecommending for {ALPHA}\nanother ok line\n")
    before = files_holding(home, ALPHA)
    for place in ("lake/", "inbox/", "quarantine/", "feast/offline/event_log/", "feast/offline/user_recent_items",
                  "models/runs/", "alerts/", "reports/demo/"):
        assert any(h.startswith(place) for h in before), (place, before)
    assert _recommend(shop, ALPHA)["fallback"] is False
    assert shop["redis"] is None or redis_holding(shop, ALPHA)

    with ThreadPoolExecutor(2) as pool:  # two erasures at once, in the service's two workers
        answers = list(pool.map(lambda u: call(shop["server"], "POST", "/admin/forget_user", {"user_id": u}, token=TOKEN),
                                [ALPHA, f"  {BETA} "]))
    assert [status for status, _ in answers] == [202, 202], answers
    reports = [_wait_done(shop, body["job_id"]) for _, body in answers]
    assert [r["status"] for r in reports] == ["done", "done"], reports
    places = reports[0]["places"]
    for place in ("lake", "inbox", "quarantine", "event_log", "feature_tables", "model_runs", "alerts", "reports"):
        assert place in places, (place, places)
    assert places["online_store"]["rows"] >= 1 and places["lake"]["rows"] >= 1 and places["quarantine"]["rows"] == 12
    assert ALPHA not in json.dumps(reports) and BETA not in json.dumps(reports)

    def assert_gone(when: str) -> None:
        for user in (ALPHA, BETA):
            assert files_holding(home, user) == [], (when, user)
            assert redis_holding(shop, user) == [], (when, user)
            assert not aof_holding(shop, user), (when, user)
            assert _recommend(shop, user)["fallback"] is True, (when, user)

    assert_gone("after the erasure")
    _features_run(settings, HOUR)  # the hour that first ingested them, again
    assert_gone("after re-running the hour")
    _inbox_batch(shop, HOUR - timedelta(hours=3), "late", [ALPHA, BETA])  # a backfill of an earlier hour
    _features_run(settings, HOUR - timedelta(hours=3))
    assert_gone("after a backfill")
    item = _recommend(shop, "u-not-erased")["items"][0]["item_id"]
    status, written = call(shop["server"], "POST", "/events", {"events": [{"user_id": ALPHA, "item_id": item,
                                                                          "event_type": "view"}]}, token=TOKEN)
    assert status == 200 and written["accepted"] == 0 and len(written["erased_ids"]) == 1, written
    assert_gone("after a late real-time event")
    assert call(shop["server"], "GET", "/admin/erasures/" + "0" * 32, token=TOKEN)[0] == 404
    assert call(shop["server"], "GET", f"/admin/erasures/{answers[0][1]['job_id']}")[0] == 401


# --- without a server ---------------------------------------------------------------------------


def test_a_short_numeric_id_leaves_manifests_models_and_other_data_intact(settings):
    """Erasing user "11" must not touch "2026-11-01" in a manifest, item "11" of a model version,
    or "i11"; only the user's own rows and whole-token quotes go."""
    events = pd.DataFrame({"user_id": ["11", "12", "12"], "item_id": ["11", "i11", "11"], "event_type": ["view"] * 3,
                           "timestamp": ["2026-11-01T10:00:00Z", "2026-11-01T11:00:00Z", "2026-11-01T12:00:00Z"]})
    write_batch(settings.lake_dir, Batch.from_frames(events, source="numeric ids"))
    items = ["11", "i11"] + [f"x{i}" for i in range(N_ITEMS - 2)]
    save_artifact(tiny_model(), items, settings.models_dir, {"protocol": "full"}, version="m-v1")
    untouched = {p: p.read_bytes() for p in [*settings.lake_dir.joinpath("batches").glob("*.json"),
                                             *settings.models_dir.joinpath("m-v1").iterdir()]}
    alerts = settings.alerts_dir / "a.json"
    alerts.parent.mkdir(parents=True, exist_ok=True)
    alerts.write_text(json.dumps({"error": "user 11 failed", "run": "2026-11-01", "user": "11"}))
    report = run_job(settings, request_erasure(settings, "11").job_id)
    assert report.status == "done"
    assert {p: p.read_bytes() for p in untouched} == untouched
    load_recommender("m-v1", settings)  # checksums still hold
    left = read_events(settings.lake_dir)
    assert sorted(left["user_id"]) == ["12", "12"] and sorted(left["item_id"]) == ["11", "i11"]
    assert json.loads(alerts.read_text()) == {"error": "user [erased] failed", "run": "2026-11-01", "user": "[erased]"}


def test_a_job_a_crash_left_pending_is_finished_by_the_next_features_run(settings):
    batch = generate(600, seed=3)
    write_batch(settings.lake_dir, batch)
    user = str(batch.events["user_id"].value_counts().index[0])
    job = request_erasure(settings, user)  # recorded, then the process died before the job ran
    assert ledger.job(settings, job.job_id).status == "pending"
    steps.validate_and_ingest(settings, [])
    finished = ledger.job(settings, job.job_id)
    assert finished.status == "done" and finished.removed["places"]["lake"]["rows"] == int((batch.events["user_id"] == user).sum())
    assert user not in set(read_events(settings.lake_dir)["user_id"])
    assert not any(user in p.read_text() for p in (settings.home / "erasure").rglob("*.json"))


@pytest.mark.parametrize("raw", ["u1", "  u1", "u1\t\n", "\u00a0u1\u2003"])
def test_one_user_is_one_key_on_the_batch_and_real_time_paths(raw):
    batch_id = conform_events(pd.DataFrame({"user_id": [raw], "item_id": ["i"], "event_type": ["view"],
                                            "timestamp": ["2026-01-01T00:00:00Z"]}))["user_id"].iloc[0]
    request_id, errors = check_id(raw, id_rules("user_id", 128))
    assert not errors
    assert ledger.normalise_id(raw) == batch_id == request_id == "u1"
    assert ledger.user_key(raw) == ledger.user_key(batch_id) == ledger.user_key("u1")
    assert ledger.erased_mask(pd.Series([raw, "u2"]), frozenset({ledger.user_key("u1")})).tolist() == [True, False]
