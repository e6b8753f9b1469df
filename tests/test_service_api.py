"""The service against a real ``bentoml serve`` subprocess, a real Redis and a real model.

One session-scoped shop (synthetic data -> Feast with Redis on a private port -> quick
model promoted) and one server, so the whole file stays fast. Redis is killed and
restarted by the test itself to show the fallback and the recovery.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.service_harness import TOKEN, RedisServer, Server, call, env_for, prepare_shop  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def shop(tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("service-home")
    redis = RedisServer(home / "redis").start()
    env = env_for(home, redis.port)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        info = prepare_shop()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    server = Server(env, log_path=home / "serve.log").start()
    yield {"home": home, "redis": redis, "server": server, "env": env, **info}
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
    from shoprec.config import load_settings

    return load_settings(home=shop["home"])


# --- /recommend -------------------------------------------------------------------------
def test_recommend_for_a_known_user(shop, server):
    status, body = call(server, "POST", "/recommend", {"user_id": known_user(shop), "k": 5})
    assert status == 200, body
    assert set(body) == {"user_id", "items", "model_version", "fallback"}
    assert body["fallback"] is False and body["model_version"] == shop["version"] and len(body["items"]) == 5
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(i["reason"].startswith("because you ") for i in body["items"])


def test_concurrent_requests_get_the_answers_they_get_alone(shop, server):
    """Concurrent /recommend calls share one store read and model call (adaptive batching):
    each must still get exactly its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    users = shop["events"]["user_id"].drop_duplicates().astype(str).tolist()[:24]
    history = shop["events"]["item_id"].astype(str).tolist()[:3]
    payloads = [{"user_id": u, "k": 5} for u in users] + [{"history": history, "k": 5}, {"user_id": "nobody-at-all"}]
    alone = [call(server, "POST", "/recommend", p) for p in payloads]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda p: call(server, "POST", "/recommend", p), payloads))
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
    _, body = call(server, "POST", "/recommend", {"user_id": user, "k": 50})
    ids = {i["item_id"] for i in body["items"]}
    assert not ids & unavailable
    assert not ids & seen


def test_anonymous_history_and_reason_names_a_viewed_title(shop, server):
    items = shop["items"].dropna(subset=["title"])
    history = items["item_id"].head(3).tolist()
    status, body = call(server, "POST", "/recommend", {"history": history, "k": 3})
    assert status == 200 and body["user_id"] is None and body["fallback"] is False
    titles = set(items["title"].head(3))
    assert all(any(t in i["reason"] for t in titles) for i in body["items"])


@pytest.mark.parametrize("payload", [{"user_id": "nobody-ever"}, {"history": []}, {"history": ["no-such-item"]}])
def test_unknown_user_or_empty_history_gets_trending(server, payload):
    status, body = call(server, "POST", "/recommend", {**payload, "k": 4})
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
        (json.dumps({"user_id": "u" * 500}).encode(), 422, "longer than"),
        (json.dumps({"history": ["a"] * 5000}).encode(), 422, "at most"),
    ],
)
def test_bad_recommend_requests_get_clear_errors(server, raw, status, message):
    got, body = call(server, "POST", "/recommend", raw=raw)
    assert got == status and message in json.dumps(body)


def declared_oversize_request(server: Server, size: int) -> tuple[int, dict]:
    """Declare a huge body but send only its start: the server must answer without reading it all.
    (Sending it all races the early answer: the client may hit a broken pipe mid-upload.)"""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(f"POST /recommend HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode() + b'{"history": ["aaaa')
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_oversized_body_and_non_json_are_refused(server):
    status, body = declared_oversize_request(server, 2_000_000)
    assert status == 422 and "larger than" in body["error"]
    status, body = call(server, "POST", "/recommend", raw=b"user_id=u1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415


@pytest.mark.parametrize("evil", ["' OR 1=1; DROP TABLE users; --", "<script>alert(1)</script>", "../../etc/passwd", "{{7*7}}"])
def test_injection_like_ids_are_just_unknown_ids(server, evil):
    status, body = call(server, "POST", "/recommend", {"user_id": evil, "k": 3})
    assert status == 200 and body["fallback"] is True and body["user_id"] == evil


# --- /similar_items and /model -----------------------------------------------------------------
def test_similar_items_of_a_known_item(shop, server):
    item = str(shop["events"]["item_id"].value_counts().index[0])
    status, body = call(server, "POST", "/similar_items", {"item_id": item, "k": 5})
    assert status == 200 and len(body["items"]) == 5 and item not in {i["item_id"] for i in body["items"]}


def test_similar_items_of_a_new_item_with_text_only(server):
    status, body = call(server, "POST", "/similar_items", {"item_id": "brand-new-1", "k": 3, "text": "Matte red lipstick | lips"})
    assert status == 200 and body["source"] == "text" and len(body["items"]) == 3
    status, body = call(server, "POST", "/similar_items", {"item_id": "no-such-item", "k": 3})
    assert status == 404 and "unknown item" in body["error"]


def test_model_endpoint_and_builtin_probes(shop, server):
    status, body = call(server, "GET", "/model")
    assert status == 200 and body["model_version"] == shop["version"] and "metrics" in body
    for probe in ("/livez", "/readyz"):
        assert call(server, "GET", probe)[0] == 200
    status, text = call(server, "GET", "/metrics")
    assert status == 200 and "shoprec_recommendations_total" in text


# --- /events and auth ---------------------------------------------------------------------------
def _event(user, item, event_type="view"):
    return {"user_id": user, "item_id": item, "event_type": event_type}


def test_writes_need_the_token_and_write_nothing_without_it(shop, server):
    item = str(shop["items"]["item_id"].iloc[0])
    for token in (None, "wrong"):
        status, _ = call(server, "POST", "/events", {"events": [_event("auth-user", item)]}, token=token)
        assert status == 401
        assert call(server, "POST", "/admin/reload", {}, token=token)[0] == 401
    _, body = call(server, "POST", "/recommend", {"user_id": "auth-user", "k": 3})
    assert body["fallback"] is True  # nothing was written


def test_a_batch_with_one_invalid_event_is_refused_whole(shop, server):
    item = str(shop["items"]["item_id"].iloc[0])
    batch = [_event("half-user", item), _event("half-user", item, "teleport"), {"user_id": "half-user"}]
    status, body = call(server, "POST", "/events", {"events": batch}, token=TOKEN)
    assert status == 422 and [e["index"] for e in body["detail"]] == [1, 2]
    _, body = call(server, "POST", "/recommend", {"user_id": "half-user", "k": 3})
    assert body["fallback"] is True


def test_a_click_changes_the_next_recommendation(shop, server):
    user = "fresh-user-1"
    items = shop["events"]["item_id"].value_counts().index
    before = call(server, "POST", "/recommend", {"user_id": user, "k": 5})[1]
    assert before["fallback"] is True
    status, body = call(server, "POST", "/events", {"events": [_event(user, str(items[5]))]}, token=TOKEN)
    assert status == 200 and body["accepted"] == 1
    after = call(server, "POST", "/recommend", {"user_id": user, "k": 5})[1]
    assert after["fallback"] is False and after["items"] != before["items"]
    assert str(items[5]) not in {i["item_id"] for i in after["items"]}


def test_forget_user_removes_online_and_offline_data(shop, server):
    from shoprec.features.tables import event_log_dir
    from shoprec.lake import read_events

    user = str(shop["events"]["user_id"].value_counts().index[0])  # the most active lake user
    item = str(shop["events"]["item_id"].iloc[0])
    assert call(server, "POST", "/events", {"events": [_event(user, item)]}, token=TOKEN)[0] == 200
    assert call(server, "POST", "/recommend", {"user_id": user, "k": 3})[1]["fallback"] is False
    status, body = call(server, "POST", "/admin/forget_user", {"user_id": user}, token=TOKEN)
    assert status == 200 and body["lake_events_removed"] == int((shop["events"]["user_id"] == user).sum())
    settings = settings_of(shop)
    for folder in (settings.lake_dir, event_log_dir(settings)):
        assert user not in set(read_events(folder)["user_id"])
    assert call(server, "POST", "/recommend", {"user_id": user, "k": 3})[1]["fallback"] is True


def test_deploy_steps_reload_and_smoke_test(shop, server):
    from services.client import ServiceError, reload_service, smoke_test

    settings = settings_of(shop).model_copy(update={"api_token": TOKEN})
    assert reload_service(settings, shop["version"], url=server.url)["status"] == "unchanged"
    assert smoke_test(settings, shop["version"], url=server.url)["items"] == 5
    with pytest.raises(ServiceError, match="not other-version"):
        smoke_test(settings, "other-version", url=server.url)
    with pytest.raises(ServiceError, match="reload of v-missing failed"):
        reload_service(settings, "v-missing", url=server.url)


# --- robustness ---------------------------------------------------------------------------------
def test_a_bad_model_version_does_not_take_the_service_down(shop, server):
    from training.registry import promote

    bad = shop["home"] / "models" / "v-broken"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "metadata.json").write_text("{not json")
    status, body = call(server, "POST", "/admin/reload", {"version": "v-broken"}, token=TOKEN)
    assert status == 200 and body["status"] == "failed" and body["serving"] == shop["version"]
    _, info = call(server, "GET", "/model")
    assert info["model_version"] == shop["version"] and info["last_reload_failure"]["version"] == "v-broken"
    status, body = call(server, "POST", "/admin/reload", {"version": "../../etc"}, token=TOKEN)
    assert status == 422 and "version name" in body["error"]
    settings = settings_of(shop)
    promote("v-broken", settings)  # the watcher finds it, fails to load it and keeps serving
    try:
        time.sleep(1.5)
        assert call(server, "POST", "/recommend", {"user_id": known_user(shop), "k": 3})[1]["fallback"] is False
        assert call(server, "GET", "/model")[1]["model_version"] == shop["version"]
    finally:
        promote(shop["version"], settings)


def test_redis_down_gives_fallback_and_recovers_by_itself(shop, server):
    user = known_user(shop)
    shop["redis"].kill()
    try:
        for _ in range(3):
            status, body = call(server, "POST", "/recommend", {"user_id": user, "k": 3})
            assert status == 200 and body["fallback"] is True and len(body["items"]) == 3
            assert all(i["reason"] == "popular in the shop" for i in body["items"])
        item = str(shop["items"]["item_id"].iloc[0])
        status, body = call(server, "POST", "/events", {"events": [_event("outage-user", item)]}, token=TOKEN)
        assert status == 503 and "online store unavailable" in body["error"]
    finally:
        shop["redis"].start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = call(server, "POST", "/recommend", {"user_id": user, "k": 3})[1]
        if body["fallback"] is False:
            break
        time.sleep(0.2)
    assert body["fallback"] is False
