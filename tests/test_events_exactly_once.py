"""Events exactly once (#13): retries, repeated ids, concurrent clients and a killed worker,
against the real ``bentoml serve`` on both online stores, plus the push path in-process.

Each store gets one small shop (synthetic events -> Feast -> a 1-epoch model) and one
service with two workers; clients send events with their own timestamps (unique per
event), so an event is found by (user, item, timestamp) online and offline.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import psutil
import pytest

from entrypoints import steps
from services.bundle import CurrentModel
from services.events import EventIngest
from services.guards import Limits, RequestError
from services.resilience import StoreGuard
from shoprec import event_log, lake
from shoprec.features import store as feature_store_module
from shoprec.features.online import OnlineFeatures
from shoprec.adapters.base import Batch
from shoprec.features.tables import build_tables, event_log_dir
from tests.service_harness import READ_TOKEN, WRITE_TOKEN, RedisServer, Server, call, prepare_shop, shop_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def shop(request, tmp_path_factory, redis_server):
    home = tmp_path_factory.mktemp(f"exactly-once-{request.param}")
    settings = shop_settings(home, redis_server.port).with_overrides(
        online_store={"type": request.param}, serving={"workers": 2, "threads": 16, "store_retry_seconds": 30})
    info = prepare_shop(settings, n_events=2000, epochs=1)
    items = info["items"]["item_id"].astype(str).tolist()
    server = Server(settings, log_path=home / "serve.log").start()
    yield {"settings": settings, "server": server, "items": items, "events": info["events"], "store": request.param}
    server.stop()


def post_events(shop, events, key: str | None = None):
    headers = {"Idempotency-Key": key} if key else None
    return call(shop["server"], "POST", "/events", {"events": events}, token=WRITE_TOKEN, headers=headers)


def make_event(shop, user: str, n: int, **extra) -> dict:
    """A unique event of ``user``: its timestamp is unique per (user, n)."""
    base = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=2)
    stamp = base + pd.Timedelta(seconds=n)  # the online sequence keeps whole seconds
    return {"user_id": user, "item_id": shop["items"][n % len(shop["items"])], "event_type": "view",
            "timestamp": stamp.isoformat(), **extra}


def online_counts(settings, users: list[str]) -> dict[tuple, int]:
    """(user, item, timestamp) -> how often it is in the user's online sequence."""
    sequences = OnlineFeatures(settings).user_sequences(users)
    counts: dict[tuple, int] = {}
    for user, seq in sequences.items():
        for item, ts in zip(seq["item_ids"], seq["timestamps"]):
            counts[(user, item, ts)] = counts.get((user, item, ts), 0) + 1
    return counts


def offline_counts(settings, users: list[str], raw: bool = False) -> dict[tuple, int]:
    """The same in the offline event log: as readers see it, or (``raw``) row by row in its files."""
    folder = event_log_dir(settings)
    frame = event_log.raw_events(folder) if raw else event_log.read_events(folder)
    frame = frame[frame["user_id"].isin(users)]
    keys = zip(frame["user_id"], frame["item_id"], pd.to_datetime(frame["timestamp"], utc=True))
    counts: dict[tuple, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return counts


def key_of(event: dict) -> tuple:
    return event["user_id"], event["item_id"], pd.Timestamp(event["timestamp"]).tz_convert("UTC")


def new_user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- against the real service, each store --------------------------------------------------
def test_the_same_request_twice_counts_once(shop):
    user = new_user("retry")
    events = [make_event(shop, user, n) for n in range(3)] + [{"user_id": user, "item_id": shop["items"][5],
                                                               "event_type": "view"}]  # server-stamped
    key = str(uuid.uuid4())
    first = post_events(shop, events, key)
    again = post_events(shop, events, key)
    assert first[0] == 200 and first[1]["accepted"] == 4 and first[1]["duplicates"] == 0, first
    assert again == first  # the first answer again
    online = online_counts(shop["settings"], [user])
    offline = offline_counts(shop["settings"], [user], raw=True)
    assert sum(online.values()) == 4 and set(online.values()) == {1}
    assert sum(offline.values()) == 4 and set(offline.values()) == {1}
    for event in events[:3]:
        assert online[key_of(event)] == 1 and offline[key_of(event)] == 1

    changed = post_events(shop, events[:2], key)  # the key again, with another body
    assert changed[0] == 422 and "different request" in changed[1]["error"], changed


def test_a_repeated_event_id_is_accepted_once(shop):
    user = new_user("repeat")
    event = make_event(shop, user, 7, event_id="order-17-line-1")
    status, first = post_events(shop, [event])
    assert status == 200 and first == {"accepted": 1, "duplicates": 0, "written": ["order-17-line-1"], "duplicate_ids": [],
                                    "erased_ids": []}
    other = make_event(shop, user, 8)
    # the same event_id in another request (even with another timestamp), next to a new event
    status, second = post_events(shop, [{**event, "timestamp": other["timestamp"]}, other], str(uuid.uuid4()))
    assert status == 200 and second["accepted"] == 1 and second["duplicate_ids"] == ["order-17-line-1"], second
    # the same event without id twice in one request: once
    third_event = make_event(shop, user, 9)
    status, third = post_events(shop, [third_event, third_event])
    assert status == 200 and (third["accepted"], third["duplicates"]) == (1, 1), third
    online = online_counts(shop["settings"], [user])
    assert online == {key_of(event): 1, key_of(other): 1, key_of(third_event): 1}
    assert offline_counts(shop["settings"], [user], raw=True) == online


def test_32_concurrent_clients_get_no_5xx_and_every_event_is_written_once(shop):
    users = [new_user("crowd") for _ in range(8)]
    jobs = [(c, k) for c in range(32) for k in range(5)]  # 160 single-event requests, 20 per user

    def send(job):
        client, k = job
        n = client * 5 + k
        event = make_event(shop, users[n % len(users)], n)
        return event, post_events(shop, [event], key=str(uuid.uuid4()) if k % 2 else None)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(send, jobs))
    failures = [(s, b) for _, (s, b) in results if s != 200]
    assert not failures, failures[:3]
    assert all(body["accepted"] == 1 for _, (_, body) in results)
    online = online_counts(shop["settings"], users)
    offline = offline_counts(shop["settings"], users, raw=True)
    sent = [key_of(event) for event, _ in results]
    assert sorted(online) == sorted(sent) and set(online.values()) == {1}
    assert sorted(offline) == sorted(sent) and set(offline.values()) == {1}


def worker_pids(server: Server) -> list[int]:
    children = psutil.Process(server.service.process.pid).children(recursive=True)
    return [p.pid for p in children if "worker" in " ".join(p.cmdline())]


PER_CLIENT = 30


def test_a_killed_worker_loses_no_acknowledged_event_and_doubles_none(shop):
    """Clients stream single-event pushes; one worker is killed with SIGKILL in the middle. A
    client whose request failed retries it with the same Idempotency-Key until it is answered."""
    workers = worker_pids(shop["server"])
    assert len(workers) == 2, workers
    users = [new_user("kill") for _ in range(4)]
    acknowledged: list[tuple] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 45

    def client(c: int) -> None:
        for k in range(PER_CLIENT):
            n = c * PER_CLIENT + k
            event = make_event(shop, users[n % len(users)], n)
            key = str(uuid.uuid4())
            while time.monotonic() < deadline:
                try:
                    status, body = post_events(shop, [event], key)
                except OSError:  # the connection died with the worker
                    status, body = None, None
                if status == 200:
                    with lock:
                        acknowledged.append((key_of(event), body))
                    break
                time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(6)]
    for t in threads:
        t.start()
    while len(acknowledged) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    with lock:
        before_kill = len(acknowledged)
    os.kill(workers[0], signal.SIGKILL)
    for t in threads:
        t.join()
    total = 6 * PER_CLIENT
    assert before_kill < total, "the worker must die in the middle of the stream"
    assert len(acknowledged) == total, f"only {len(acknowledged)} of {total} events were acknowledged in time"
    sent = sorted(k for k, _ in acknowledged)
    online = online_counts(shop["settings"], users)
    offline = offline_counts(shop["settings"], users)
    assert sorted(online) == sent and set(online.values()) == {1}
    assert sorted(offline) == sent and set(offline.values()) == {1}


def test_a_huge_quantity_or_a_refused_request_is_a_4xx_and_recommend_still_uses_the_model(shop):
    user = new_user("huge")
    for bad in ({"quantity": 2**63}, {"quantity": 10**30}, {"price": 1e308}, {"event_id": "id\x00"}):
        status, body = post_events(shop, [make_event(shop, user, 1, **bad)])
        assert status == 422, (bad, body)
    status, body = post_events(shop, [make_event(shop, user, 2)], key="k" * 500)  # longer than an id may be
    assert status == 422, body
    known = str(shop["events"]["user_id"].value_counts().index[0])
    for _ in range(4):  # each worker: the breaker is closed
        status, body = call(shop["server"], "POST", "/recommend", {"user_id": known, "k": 3}, token=READ_TOKEN)
        assert status == 200 and body["fallback"] is False, body
    assert online_counts(shop["settings"], [user]) == {}


# --- the push path, in-process ------------------------------------------------------------
def test_a_push_that_failed_after_its_online_write_is_completed_once_by_the_retry(shop):
    """The event log cannot be written (a file stands where its segments' folder goes) after the
    online row was: 503; the retry finds the pending push landed, logs it and counts it once."""
    settings = shop["settings"]
    online = OnlineFeatures(settings)  # a new writer: it opens a segment of its own
    user = new_user("pending")
    event = make_event(shop, user, 3)
    blocker = event_log_dir(settings) / event_log.WAL
    moved = blocker.with_name(blocker.name + ".moved")
    if blocker.exists():
        blocker.rename(moved)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    frame = pd.DataFrame([event])
    try:
        with pytest.raises(Exception, match="event log unwritable"):
            online.push_events(frame)
        assert online_counts(settings, [user]) == {key_of(event): 1}  # online, not logged yet
    finally:
        blocker.unlink()
        if moved.exists():
            moved.rename(blocker)
    pushed = online.push_events(frame)
    assert pushed.written == [] and len(pushed.duplicates) == 1
    assert online_counts(settings, [user]) == {key_of(event): 1}
    assert offline_counts(settings, [user], raw=True) == {key_of(event): 1}


def test_compacting_while_clients_stream_events_keeps_each_one_once(shop):
    """The features DAG's compaction step runs while the service appends: every acknowledged
    event is in the log once afterwards (raw rows, not only as readers count), in few files."""
    users = [new_user("compact") for _ in range(6)]
    sent: list[tuple] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(c: int) -> None:
        n = 0
        while not stop.is_set() or n < 10:
            events = [make_event(shop, users[(c + k) % len(users)], 1000 * c + 3 * n + k) for k in range(3)]
            status, body = post_events(shop, events, key=str(uuid.uuid4()))
            assert status == 200 and body["accepted"] == 3, body
            with lock:
                sent.extend(key_of(e) for e in events)
            n += 1

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(client, c) for c in range(4)]
        reports = []
        for _ in range(3):
            time.sleep(0.5)
            reports.append(steps.compact_event_log(shop["settings"]))
        stop.set()
        for r in running:
            r.result()
    assert any(r["rows_read"] for r in reports), reports
    offline = offline_counts(shop["settings"], users, raw=True)
    assert sorted(offline) == sorted(sent) and set(offline.values()) == {1}
    steps.compact_event_log(shop["settings"])
    assert offline_counts(shop["settings"], users, raw=True) == offline
    days = {p.parent for p in (event_log_dir(shop["settings"]) / "events").rglob("*.parquet")}
    assert event_log.file_count(event_log_dir(shop["settings"])) == len(days)  # one file per day, no segment


def test_materialize_never_overwrites_a_newer_pushed_row(shop):
    settings = shop["settings"]
    online = OnlineFeatures(settings)
    user = str(shop["events"]["user_id"].iloc[0])  # a user of the offline table
    event = make_event(shop, user, 11)
    online.push_events(pd.DataFrame([event]))
    # re-materialize the whole history: the table's row of this user is older than the push
    feature_store_module.materialize(settings, start=pd.Timestamp("2000-01-01", tz="UTC"))
    assert online_counts(settings, [user]).get(key_of(event)) == 1


def test_a_build_after_a_push_brings_backfilled_events_online_too(shop):
    """A table built after a push holds the push's events (the event log) and a late batch's
    older ones: its row replaces the pushed one, so the backfill reaches serving."""
    settings = shop["settings"]
    online = OnlineFeatures(settings)
    user = new_user("backfill")
    pushed = make_event(shop, user, 30)
    online.push_events(pd.DataFrame([pushed]))
    late = make_event(shop, user, 20)  # older than the pushed event, arriving later in a batch
    lake.write_batch(settings.lake_dir, Batch.from_frames(pd.DataFrame([late]), None, source="late batch"))
    time.sleep(1.1)  # online stamps come back in whole seconds
    build_tables(settings)
    feature_store_module.materialize(settings, start=pd.Timestamp("2000-01-01", tz="UTC"))
    assert online_counts(settings, [user]) == {key_of(late): 1, key_of(pushed): 1}


def test_materialize_waits_for_a_push_in_flight(shop):
    settings = shop["settings"]
    online = OnlineFeatures(settings)
    user = str(shop["events"]["user_id"].iloc[1])
    done = threading.Event()
    with online._lock(user):  # a push of this user in flight
        thread = threading.Thread(target=lambda: (feature_store_module.materialize(
            settings, start=pd.Timestamp("2000-01-01", tz="UTC")), done.set()))
        thread.start()
        assert not done.wait(3.0)
    thread.join(60)
    assert done.is_set()


def test_a_non_store_error_is_a_4xx_and_leaves_the_store_guard_closed(shop):
    """A bug in the push (a TypeError, as a 2**63 quantity once raised) answers 422 and trips nothing."""

    class BrokenPush(OnlineFeatures):
        def push_records(self, records):
            raise TypeError("int too big to convert")

    settings = shop["settings"]
    guard = StoreGuard(cooldown_s=30)
    model = CurrentModel(settings)
    model.holder.refresh()
    ingest = EventIngest(settings, model, BrokenPush(settings), guard, Limits.from_settings(settings))
    with pytest.raises(RequestError) as refused:
        ingest.ingest([make_event(shop, new_user("bug"), 1)])
    assert refused.value.status == 422
    assert guard.should_try() and guard.last_error is None
