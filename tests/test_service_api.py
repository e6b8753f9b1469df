"""The service against a real ``bentoml serve`` subprocess, a real Redis and a real model.

One session-scoped shop (synthetic data -> Feast with Redis on a private port -> quick
model promoted) and one server, so the whole file stays fast. Redis is killed and
restarted by the test itself to show the fallback and the recovery.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from services.client import ServiceError, reload_service, smoke_test
from shoprec.features.store import materialize
from shoprec.features.tables import build_tables, event_log_dir
from shoprec.ingest import ingest
from shoprec import event_log
from shoprec.lake import read_events
from tests.service_harness import READ_TOKEN, TOKEN, RedisServer, Server, call, prepare_shop, shop_settings
from training.artifact import ArtifactError
from training.registry import POINTER, promote

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def shop(tmp_path_factory):
    home = tmp_path_factory.mktemp("service-home")
    redis = RedisServer(home / "redis").start()
    settings = shop_settings(home, redis.port)
    info = prepare_shop(settings)
    server = Server(settings, log_path=home / "serve.log").start()
    yield {"home": home, "redis": redis, "server": server, "settings": settings, **info}
    server.stop()
    redis.kill()


@pytest.fixture
def server(shop):
    return shop["server"]


def known_user(shop) -> str:
    """A user with a few events, so that excluding seen items leaves most of the tiny catalog."""
    counts = shop["events"]["user_id"].value_counts()
    return str(counts[counts >= 5].index[-1])


def settings_of(shop):
    return shop["settings"]


# --- /recommend -------------------------------------------------------------------------
def test_recommend_for_a_known_user(shop, server):
    status, body = call(server, "POST", "/recommend", {"user_id": known_user(shop), "k": 5}, token=READ_TOKEN)
    assert status == 200, body
    assert set(body) == {"user_id", "items", "model_version", "fallback", "recommendation_id", "arm", "experiment"}
    assert len(body["recommendation_id"]) == 32 and (body["arm"], body["experiment"]) == ("champion", None)
    assert body["fallback"] is False and body["model_version"] == shop["version"] and len(body["items"]) == 5
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(i["reason"].startswith("because you ") for i in body["items"])
    prices = shop["items"].set_index("item_id")["price"]
    for item in body["items"]:  # the catalog's price, read online with the availability
        assert item["price"] == (None if pd.isna(prices[item["item_id"]]) else pytest.approx(prices[item["item_id"]]))


def test_concurrent_requests_get_the_answers_they_get_alone(shop, server):
    """Concurrent /recommend calls share one store read and model call (adaptive batching):
    each must still get exactly its own answer."""
    users = shop["events"]["user_id"].drop_duplicates().astype(str).tolist()[:24]
    history = shop["events"]["item_id"].astype(str).tolist()[:3]
    payloads = [{"user_id": u, "k": 5} for u in users] + [{"history": history, "k": 5}, {"user_id": "nobody-at-all"}]
    alone = [call(server, "POST", "/recommend", p, token=READ_TOKEN) for p in payloads]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda p: call(server, "POST", "/recommend", p, token=READ_TOKEN), payloads))
    for (status_a, a), (status_t, t) in zip(alone, together):
        assert status_a == status_t == 200
        assert (a["user_id"], a["fallback"]) == (t["user_id"], t["fallback"])
        assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in t["items"]]
        assert [i["score"] for i in a["items"]] == pytest.approx([i["score"] for i in t["items"]], abs=1e-4)
    batches, requests = _batch_metrics(server)
    assert requests >= 2 * len(payloads) and batches < requests  # some calls were batched


def _batch_metrics(server) -> tuple[float, float]:
    """(batches, requests) of the batch-size histogram on /metrics."""
    text = call(server, "GET", "/metrics")[1]
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("shoprec_recommend_batch_size_")}
    return values["shoprec_recommend_batch_size_count"], values["shoprec_recommend_batch_size_sum"]


def test_recommend_excludes_seen_items_and_unavailable_ones(shop, server):
    user = known_user(shop)
    seen = set(shop["events"].loc[shop["events"]["user_id"] == user, "item_id"])
    unavailable = set(shop["items"].loc[~shop["items"]["available"].fillna(True).astype(bool), "item_id"])
    _, body = call(server, "POST", "/recommend", {"user_id": user, "k": 50}, token=READ_TOKEN)
    ids = {i["item_id"] for i in body["items"]}
    assert not ids & unavailable
    assert not ids & seen


def test_anonymous_history_and_reason_names_a_viewed_title(shop, server):
    items = shop["items"].dropna(subset=["title"])
    history = items["item_id"].head(3).tolist()
    status, body = call(server, "POST", "/recommend", {"history": history, "k": 3}, token=READ_TOKEN)
    assert status == 200 and body["user_id"] is None and body["fallback"] is False
    titles = set(items["title"].head(3))
    assert all(any(t in i["reason"] for t in titles) for i in body["items"])


@pytest.mark.parametrize("payload", [{"user_id": "nobody-ever"}, {"history": []}, {"history": ["no-such-item"]}])
def test_unknown_user_or_empty_history_gets_trending(server, payload):
    status, body = call(server, "POST", "/recommend", {**payload, "k": 4}, token=READ_TOKEN)
    assert status == 200 and body["fallback"] is True and len(body["items"]) == 4
    assert all(i["reason"] == "trending now" for i in body["items"])


@pytest.mark.parametrize(
    "raw, status, message",
    [
        (b'{"user_id": "u1", "k":', 400, "Invalid JSON"),
        (b'[1, 2]', 400, "object"),
        (b'{"user_id": "u1", "k": "ten"}', 400, "valid integer"),
        (b'{"history": [1, 2]}', 400, "valid string"),
        (b'{"k": 5}', 422, "either user_id or history"),
        (b'{"user_id": "u1", "k": 100000000000000000000}', 422, "k must be between 1 and"),
        (b'{"user_id": "u1", "k": 0}', 422, "k must be between 1 and"),
        (json.dumps({"user_id": "u" * 500}).encode(), 422, "user_id must be 1 to"),
        (json.dumps({"history": ["ok", "bad\u0001"]}).encode(), 422, "history[1] contains control characters"),
        (json.dumps({"history": ["a"] * 5000}).encode(), 422, "at most"),
    ],
)
def test_bad_recommend_requests_get_clear_errors(server, raw, status, message):
    got, body = call(server, "POST", "/recommend", raw=raw, token=READ_TOKEN)
    assert got == status and message in json.dumps(body)


def declared_oversize_request(server: Server, size: int) -> tuple[int, dict]:
    """Declare a huge body but send only its start: the server must answer without reading it all.
    (Sending it all races the early answer: the client may hit a broken pipe mid-upload.)"""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(f"POST /recommend HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {READ_TOKEN}\r\n"
                     f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode() + b'{"history": ["aaaa')
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_oversized_body_and_non_json_are_refused(server):
    status, body = declared_oversize_request(server, 2_000_000)
    assert status == 422 and "larger than" in body["error"]
    status, body = call(server, "POST", "/recommend", raw=b"user_id=u1", headers={"Content-Type": "application/x-www-form-urlencoded"}, token=READ_TOKEN)
    assert status == 415


@pytest.mark.parametrize("evil", ["' OR 1=1; DROP TABLE users; --", "<script>alert(1)</script>", "../../etc/passwd", "{{7*7}}"])
def test_injection_like_ids_are_just_unknown_ids(server, evil):
    status, body = call(server, "POST", "/recommend", {"user_id": evil, "k": 3}, token=READ_TOKEN)
    assert status == 200 and body["fallback"] is True and body["user_id"] == evil


# --- /similar_items and /model -----------------------------------------------------------------
def test_similar_items_of_a_known_item(shop, server):
    item = str(shop["events"]["item_id"].value_counts().index[0])
    status, body = call(server, "POST", "/similar_items", {"item_id": item, "k": 5}, token=READ_TOKEN)
    assert status == 200 and len(body["items"]) == 5 and item not in {i["item_id"] for i in body["items"]}


def test_similar_items_of_a_new_item_with_text_only(server):
    status, body = call(server, "POST", "/similar_items", {"item_id": "brand-new-1", "k": 3, "text": "Matte red lipstick | lips"}, token=READ_TOKEN)
    assert status == 200 and body["source"] == "text" and len(body["items"]) == 3
    status, body = call(server, "POST", "/similar_items", {"item_id": "no-such-item", "k": 3}, token=READ_TOKEN)
    assert status == 404 and "unknown item" in body["error"]


def test_model_endpoint_and_builtin_probes(shop, server):
    status, body = call(server, "GET", "/model", token=READ_TOKEN)
    assert status == 200 and body["model_version"] == shop["version"] and "metrics" in body
    for probe in ("/livez", "/readyz"):
        assert call(server, "GET", probe)[0] == 200
    status, text = call(server, "GET", "/metrics")
    assert status == 200 and "shoprec_recommendations_total" in text


def test_a_real_scrape_has_what_the_grafana_dashboard_reads(shop, server):
    """BentoML's request metrics the dashboard queries (``services.metrics.BENTOML_METRICS``, which
    tests/test_monitoring.py checks the dashboard against) and the impression counter, scraped."""
    from services.metrics import BENTOML_METRICS

    assert call(server, "POST", "/recommend", {"user_id": known_user(shop), "k": 3}, token=READ_TOKEN)[0] == 200
    status, text = call(server, "GET", "/metrics")
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    names = {name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name in samples}
    assert status == 200 and set(BENTOML_METRICS) | {"shoprec_impressions_total"} <= names, sorted(names)


# --- /events and auth ---------------------------------------------------------------------------
def _event(user, item, event_type="view"):
    return {"user_id": user, "item_id": item, "event_type": event_type}


def test_writes_need_the_token_and_write_nothing_without_it(shop, server):
    item = str(shop["items"]["item_id"].iloc[0])
    for token in (None, "wrong"):
        status, _ = call(server, "POST", "/events", {"events": [_event("auth-user", item)]}, token=token)
        assert status == 401
        assert call(server, "POST", "/admin/reload", {}, token=token)[0] == 401
    _, body = call(server, "POST", "/recommend", {"user_id": "auth-user", "k": 3}, token=READ_TOKEN)
    assert body["fallback"] is True  # nothing was written


def test_a_batch_with_one_invalid_event_is_refused_whole(shop, server):
    item = str(shop["items"]["item_id"].iloc[0])
    batch = [_event("half-user", item), _event("half-user", item, "teleport"), {"user_id": "half-user"}]
    status, body = call(server, "POST", "/events", {"events": batch}, token=TOKEN)
    assert status == 422 and [e["index"] for e in body["detail"]] == [1, 2]
    _, body = call(server, "POST", "/recommend", {"user_id": "half-user", "k": 3}, token=READ_TOKEN)
    assert body["fallback"] is True


def test_events_with_out_of_range_numbers_are_refused_clearly(shop, server):
    item = str(shop["items"]["item_id"].iloc[0])
    batch = [{**_event("numbers-user", item), "quantity": 2**63}, {**_event("numbers-user", item), "price": -1}]
    status, body = call(server, "POST", "/events", {"events": batch}, token=TOKEN)
    assert status == 422 and [e["index"] for e in body["detail"]] == [0, 1]
    assert "quantity is below 1 or above" in body["detail"][0]["errors"][0]


def test_a_click_changes_the_next_recommendation(shop, server):
    user = "fresh-user-1"
    items = shop["events"]["item_id"].value_counts().index
    before = call(server, "POST", "/recommend", {"user_id": user, "k": 5}, token=READ_TOKEN)[1]
    assert before["fallback"] is True
    status, body = call(server, "POST", "/events", {"events": [_event(user, str(items[5]))]}, token=TOKEN)
    assert status == 200 and body["accepted"] == 1
    after = call(server, "POST", "/recommend", {"user_id": user, "k": 5}, token=READ_TOKEN)[1]
    assert after["fallback"] is False and after["items"] != before["items"]
    assert str(items[5]) not in {i["item_id"] for i in after["items"]}


def test_forget_user_removes_online_and_offline_data(shop, server):
    user = str(shop["events"]["user_id"].value_counts().index[0])  # the most active lake user
    item = str(shop["events"]["item_id"].iloc[0])
    assert call(server, "POST", "/events", {"events": [_event(user, item)]}, token=TOKEN)[0] == 200
    assert call(server, "POST", "/recommend", {"user_id": user, "k": 3}, token=READ_TOKEN)[1]["fallback"] is False
    status, body = call(server, "POST", "/admin/forget_user", {"user_id": user}, token=TOKEN)
    assert status == 202 and body["status"] == "pending", body
    deadline = time.monotonic() + 60
    while (job := call(server, "GET", f"/admin/erasures/{body['job_id']}", token=TOKEN)[1])["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["status"] == "done" and job["places"]["lake"]["rows"] == int((shop["events"]["user_id"] == user).sum()), job
    assert job["places"]["event_log"]["rows"] >= 1 and job["places"]["online_store"]["rows"] >= 1, job
    settings = settings_of(shop)
    assert user not in set(read_events(settings.lake_dir)["user_id"])
    assert user not in set(event_log.read_events(event_log_dir(settings))["user_id"])
    assert call(server, "POST", "/recommend", {"user_id": user, "k": 3}, token=READ_TOKEN)[1]["fallback"] is True


def _catalog_batch(shop, folder, unavailable: str, skip_users: set[str]):
    """The shop's next export: 500 later events of other users, and the catalog with one item out of stock.

    (A catalog-only export, items and no events, is the lighter case of the same path.)"""
    events = shop["events"][~shop["events"]["user_id"].isin(skip_users)].tail(500)
    events = events.assign(timestamp=events["timestamp"] + pd.Timedelta(seconds=1))
    items = shop["items"].copy()
    items.loc[items["item_id"] == unavailable, "available"] = False
    folder.mkdir()
    events.to_parquet(folder / "events.parquet")
    items.to_parquet(folder / "items.parquet")
    return folder


def _answer_without(server, user: str, item: str, seconds: float = 5) -> dict:
    """The first /recommend answer without ``item``, or the last one tried within ``seconds``
    (a worker reuses an item's state for up to a second)."""
    deadline = time.monotonic() + seconds
    while True:
        answer = call(server, "POST", "/recommend", {"user_id": user, "k": 5}, token=READ_TOKEN)[1]
        if item not in {i["item_id"] for i in answer["items"]} or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_an_item_out_of_stock_leaves_the_next_answer_without_a_model_swap(shop, server, tmp_path):
    """The catalog marks an item unavailable; ingesting the batch alone (no build, no
    materialization) brings it online, and the running service drops it within seconds:
    same model, no reload. The features run that follows keeps it that way."""
    user = known_user(shop)
    before = call(server, "POST", "/recommend", {"user_id": user, "k": 5}, token=READ_TOKEN)[1]
    loaded = call(server, "GET", "/model", token=READ_TOKEN)[1]
    gone = before["items"][0]["item_id"]
    settings = settings_of(shop)
    top_user = str(shop["events"]["user_id"].value_counts().index[0])
    report = ingest(_catalog_batch(shop, tmp_path / "export", gone, {user, top_user}), "events", settings)
    assert report.status == "accepted", report.failures
    assert report.item_states_pushed == 1  # only the item whose state changed
    after = _answer_without(server, user, gone)
    assert after["model_version"] == before["model_version"] == shop["version"]
    assert call(server, "GET", "/model", token=READ_TOKEN)[1]["loaded_at"] == loaded["loaded_at"]  # no swap, no reload
    ids = [i["item_id"] for i in after["items"]]
    assert gone not in ids
    assert ids[:4] == [i["item_id"] for i in before["items"][1:]]  # the rest in order, the next one fills in
    _, similar = call(server, "POST", "/similar_items", {"item_id": ids[0], "k": 50}, token=READ_TOKEN)
    assert gone not in {i["item_id"] for i in similar["items"]}
    build_tables(settings)  # the hourly features run: nothing to change, nothing rolled back
    assert materialize(settings).item_state_pushed == 0
    time.sleep(1.1)  # past the state reuse: the answer reads the store again
    assert [i["item_id"] for i in call(server, "POST", "/recommend", {"user_id": user, "k": 5}, token=READ_TOKEN)[1]["items"]] == ids


def test_deploy_steps_reload_and_smoke_test(shop, server):
    settings = settings_of(shop).model_copy(update={"api_token": TOKEN})
    assert reload_service(settings, shop["version"], url=server.url).status == "unchanged"
    assert smoke_test(settings, shop["version"], url=server.url).items == 5
    with pytest.raises(ServiceError, match="not other-version"):
        smoke_test(settings, "other-version", url=server.url)
    with pytest.raises(ServiceError, match="reload of v-missing failed"):
        reload_service(settings, "v-missing", url=server.url)


# --- robustness ---------------------------------------------------------------------------------
def test_a_bad_model_version_does_not_take_the_service_down(shop, server):
    bad = shop["home"] / "models" / "v-broken"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "metadata.json").write_text("{not json")
    status, body = call(server, "POST", "/admin/reload", {"version": "v-broken"}, token=TOKEN)
    assert status == 200 and body["status"] == "failed" and body["serving"] == shop["version"]
    _, info = call(server, "GET", "/model", token=READ_TOKEN)
    assert info["model_version"] == shop["version"] and info["last_reload_failure"]["version"] == "v-broken"
    for not_a_name in ("../../etc", shop["version"] + "\n"):  # a path, a name with a trailing newline
        status, body = call(server, "POST", "/admin/reload", {"version": not_a_name}, token=TOKEN)
        assert status == 422 and "version name" in body["error"], (not_a_name, body)
    settings = settings_of(shop)
    with pytest.raises(ArtifactError):
        promote("v-broken", settings)  # the registry refuses it ...
    # ... but a pointer can still name a broken version (edited by hand, or the files changed
    # after promotion): the watcher finds it, fails to load it and keeps serving
    (settings.models_dir / POINTER).write_text("v-broken\n")
    try:
        time.sleep(1.5)
        assert call(server, "POST", "/recommend", {"user_id": known_user(shop), "k": 3}, token=READ_TOKEN)[1]["fallback"] is False
        assert call(server, "GET", "/model", token=READ_TOKEN)[1]["model_version"] == shop["version"]
    finally:
        promote(shop["version"], settings)


def test_redis_down_gives_fallback_and_recovers_by_itself(shop, server):
    user = known_user(shop)
    shop["redis"].kill()
    try:
        for _ in range(3):
            status, body = call(server, "POST", "/recommend", {"user_id": user, "k": 3}, token=READ_TOKEN)
            assert status == 200 and body["fallback"] is True and len(body["items"]) == 3
            assert all(i["reason"] == "popular in the shop" for i in body["items"])
        item = str(shop["items"]["item_id"].iloc[0])
        status, body = call(server, "POST", "/events", {"events": [_event("outage-user", item)]}, token=TOKEN)
        assert status == 503 and "online store unavailable" in body["error"]
    finally:
        shop["redis"].start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = call(server, "POST", "/recommend", {"user_id": user, "k": 3}, token=READ_TOKEN)[1]
        if body["fallback"] is False:
            break
        time.sleep(0.2)
    assert body["fallback"] is False


# --- a 100,000-item catalog ----------------------------------------------------------------------
LARGE_CATALOG = 100_000


@pytest.fixture(scope="module")
def large_catalog(tmp_path_factory):
    """A shop whose catalog has 100,000 items (all in the model's vocabulary, scored per request),
    with its own Redis and server; ids only (MiniLM over 100,000 titles would take minutes)."""
    home = tmp_path_factory.mktemp("large-catalog-home")
    redis = RedisServer(home / "redis").start()
    settings = shop_settings(home, redis.port)
    info = prepare_shop(settings, 4000, epochs=1, n_items=LARGE_CATALOG, hyperparameters={"use_text": False})
    server = Server(settings, log_path=home / "serve.log").start(timeout=300)
    yield {"server": server, "settings": settings, **info}
    server.stop()
    redis.kill()


def test_a_100k_item_catalog_serves_valid_items_through_bentoml(large_catalog):
    server, events, items = large_catalog["server"], large_catalog["events"], large_catalog["items"]
    status, model = call(server, "GET", "/model", token=READ_TOKEN)
    assert status == 200 and model["n_items"] == LARGE_CATALOG
    manifest = json.loads((large_catalog["settings"].models_dir / model["model_version"] / "metadata.json").read_text())
    assert manifest["loss"]["loss"] == "sampled"  # the auto choice above the threshold
    catalog = set(items["item_id"].astype(str))
    unavailable = set(items.loc[~items["available"].fillna(True).astype(bool), "item_id"].astype(str))
    counts = events["user_id"].value_counts()
    for user in counts.index[:5].astype(str):
        status, body = call(server, "POST", "/recommend", {"user_id": user, "k": 20}, token=READ_TOKEN)
        assert status == 200 and body["fallback"] is False, body
        ids = [i["item_id"] for i in body["items"]]
        seen = set(events.loc[events["user_id"] == user, "item_id"].astype(str))
        assert len(ids) == len(set(ids)) == 20 and set(ids) <= catalog
        assert not set(ids) & (seen | unavailable)
        scores = [i["score"] for i in body["items"]]
        assert scores == sorted(scores, reverse=True)
    status, body = call(server, "POST", "/similar_items", {"item_id": ids[0], "k": 5}, token=READ_TOKEN)
    assert status == 200 and len(body["items"]) == 5 and {i["item_id"] for i in body["items"]} <= catalog
