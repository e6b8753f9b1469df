"""Unit tests of the service's pure logic (no server, no model): limits, rules, reasons,
fallback rankings, picking only available items, model swapping, the store guard, adaptive
batching, request guards, erasure in the lake. ``top_k`` here is the oracle
the picking is checked against."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from services.availability import Candidates, ItemStates, pick_available
from services.batching import AsyncBatcher
from services.catalog import Catalog, CatalogState, Popularity
from services.guards import Limits, RequestError, RequestGuard, authorized
from services.ranking import TRENDING, excluded_items, explain, unit_rows
from services.resilience import ModelHolder, StoreGuard
from shoprec.config import Settings
from shoprec.features.online import ItemState
from shoprec.features.tables import item_stats

LIMITS = Limits(max_k=50, max_history=5, max_events=3, max_id_length=10, max_body_bytes=100)


# --- limits -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "user_id, history, k, message",
    [
        ("u1", None, 0, "k must be between 1 and 50"),
        ("u1", None, 10**12, "k must be between 1 and 50"),
        ("u1", None, True, "k must be an integer"),
        (None, None, 5, "give either user_id or history"),
        ("u1", ["a"], 5, "give either user_id or history"),
        ("x" * 11, None, 5, "user_id must be 1 to 10 characters"),
        ("   ", None, 5, "user_id must be 1 to 10 characters"),
        ("u\x00", None, 5, "control characters"),
        ("u\x7f", None, 5, "control characters"),
        (None, list("abcdef"), 5, "history has 6 items; at most 5"),
        (None, ["a", 3], 5, r"history\[1\] must be a string"),
    ],
)
def test_limits_refuse_with_a_clear_message(user_id, history, k, message):
    with pytest.raises(RequestError, match=message) as err:
        LIMITS.check_recommend(user_id, history, k)
    assert err.value.status == 422


def test_limits_accept_and_clean_a_valid_request():
    assert LIMITS.check_recommend(" u1 ", None, 50) == ("u1", None, 50)
    assert LIMITS.check_recommend(None, ["a", "b"], 1) == (None, ["a", "b"], 1)
    assert LIMITS.check_recommend(None, [], 3) == (None, [], 3)  # empty session: trending later


def test_event_count_limits():
    with pytest.raises(RequestError, match="non-empty"):
        LIMITS.check_events([])
    with pytest.raises(RequestError, match="4 events in one request; at most 3"):
        LIMITS.check_events([{}] * 4)


# --- rules ------------------------------------------------------------------------------
HISTORY = [("a", "view"), ("b", "purchase"), ("c", "add_to_cart")]


@pytest.mark.parametrize(
    "exclude, exclude_seen, expected",
    [
        ("seen", True, {"a", "b", "c"}),
        ("seen", False, {"b"}),
        ("purchased", True, {"b"}),
        ("none", True, set()),
    ],
)
def test_excluded_items(exclude, exclude_seen, expected):
    assert excluded_items(HISTORY, exclude, exclude_seen) == expected


def top_k(scores: np.ndarray, k: int, *, banned: np.ndarray, categories: np.ndarray | None = None,
          max_per_category: int = 0) -> list[int]:
    """The oracle: the whole ranking sorted (best first, equal scores by index), walked greedily."""
    picked: list[int] = []
    per_category: Counter = Counter()
    for idx in np.lexsort((np.arange(len(scores)), -scores)).tolist():
        category = categories[idx] if categories is not None else None
        if banned[idx] or (max_per_category and category is not None and per_category[category] >= max_per_category):
            continue
        per_category[category] += 1
        picked.append(idx)
        if len(picked) == k:
            break
    return picked


def test_the_top_k_oracle_orders_best_first_and_skips_banned():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    banned = np.array([False, True, False, False, False])
    assert top_k(scores, 3, banned=banned) == [3, 2, 4]
    assert top_k(scores, 10, banned=banned) == [3, 2, 4, 0]  # fewer allowed than k
    assert top_k(scores, 3, banned=np.ones(5, bool)) == []


def test_a_category_cap_reaches_deep_candidates():
    n = 200
    scores = np.linspace(1, 0, n)
    categories = np.array(["big"] * (n - 2) + ["x", "y"], dtype=object)
    problem = Candidates([f"x{j}" for j in range(n)], scores, 3, np.zeros(n, bool), categories, max_per_category=1)
    (picked,), _ = pick_available([problem], lambda item_ids: {})  # no state known: every item available
    assert picked == [0, n - 2, n - 1]


# --- catalog, popularity, reasons ---------------------------------------------------------
ITEMS = pd.DataFrame(
    {
        "item_id": ["a", "b", "new"],
        "title": ["Red lipstick", "Blue mascara", "Green serum"],
        "category": ["lips", "eyes", "skin"],
        "brand": ["L", "M", None],
        "available": [True, False, True],
    }
)


def test_catalog_aligns_with_the_model_vocabulary():
    cat = Catalog.build(["b", "a", "z"], ITEMS)
    assert cat.categories.tolist() == ["eyes", "lips", None]
    assert cat.title("a") == "Red lipstick" and cat.title("z") == "z"
    assert cat.texts["new"] == "Green serum | skin"
    assert cat.indices(["a", "unknown", "z"]) == [1, 2]


def _item_stats(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The offline item_stats table the features pipeline builds, as serving reads it."""
    events = events.assign(user_id="u", event_type="view")
    return item_stats(events, items.assign(price=[1.0, 2.0, 3.0][: len(items)]), Settings())


def test_trending_uses_the_last_days_before_the_newest_event():
    t = pd.Timestamp("2024-01-10", tz="UTC")
    events = pd.DataFrame(
        {"item_id": ["a"] * 5 + ["b", "b"], "timestamp": [t - pd.Timedelta(days=30)] * 5 + [t, t]}
    )
    table = _item_stats(events, ITEMS.assign(item_id=["a", "b", "c"]))
    pop = Popularity.from_item_stats(table, {"a": 0, "b": 1, "c": 2}, days=7)
    assert pop.trending.tolist() == [0.0, 1.0, 0.0]
    assert pop.overall.tolist() == pytest.approx([1.0, 0.4, 0.0])


def test_last_known_state_is_the_newest_row_of_the_offline_table():
    t = pd.Timestamp("2024-01-10", tz="UTC")
    events = pd.DataFrame({"item_id": ["a", "a", "b"], "timestamp": [t - pd.Timedelta(days=3), t, t]})
    table = _item_stats(events, ITEMS)  # b unavailable; "new" never interacted with
    state = CatalogState.from_item_stats(table, {"b": 0, "a": 1, "z": 2, "new": 3})
    assert state.available.tolist() == [False, True, True, True]  # z is in no table: assumed available
    assert state.state("a") == ItemState(True, 1.0) and state.state("b") == ItemState(False, 2.0)
    assert state.state("z") == ItemState(True, None) and state.state("nope") == ItemState(None, None)


def test_reason_names_the_closest_history_item_with_its_event():
    emb = unit_rows(np.array([[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]], dtype=np.float32))
    titles = ["Lipstick", "Mascara", "Gloss", "Liner"]
    reasons = explain([2, 3], [(0, "purchase"), (1, "view")], emb, titles.__getitem__)
    assert reasons == ["because you bought Lipstick", "because you viewed Mascara"]
    assert explain([2], [], emb, titles.__getitem__) == [TRENDING]


# --- only available items -------------------------------------------------------------------
IDS = [f"i{n}" for n in range(12)]


class CatalogOnline:
    """The item states an online store would hold (a dict), counting the reads it gets."""

    def __init__(self, unavailable=(), prices=None):
        self.unavailable = set(unavailable)
        self.prices = prices or {}
        self.reads: list[list[str]] = []

    def read(self, item_ids):
        self.reads.append(list(item_ids))
        return {i: ItemState(i not in self.unavailable, self.prices.get(i)) for i in item_ids}


def _problem(k, banned=(), categories=None, cap=0):
    mask = np.zeros(len(IDS), dtype=bool)
    mask[list(banned)] = True
    return Candidates(IDS, np.linspace(1, 0, len(IDS)), k, mask, categories, cap)


def test_an_item_marked_unavailable_leaves_the_answer_and_the_next_one_fills_in():
    """The catalog changes between two answers of the same model: the second one drops the item."""
    catalog = CatalogOnline(prices={"i0": 9.5})
    (before,), states = pick_available([_problem(3)], catalog.read)
    assert before == [0, 1, 2] and states["i0"].price == 9.5
    catalog.unavailable.add("i1")
    (after,), _ = pick_available([_problem(3)], catalog.read)
    assert after == [0, 2, 3]
    (shown,), _ = pick_available([_problem(3)], catalog.read, hide_unavailable=False)
    assert shown == [0, 1, 2]  # the shop shows unavailable items: states are read, nothing skipped


def test_one_read_per_batch_with_the_next_candidates_prefetched():
    catalog = CatalogOnline(unavailable={"i1", "i6"})
    picks, _ = pick_available([_problem(4), _problem(4, banned=[0, 2])], catalog.read)
    assert picks == [[0, 2, 3, 4], [3, 4, 5, 7]]
    assert len(catalog.reads) == 1  # the unavailable picks were replaced from prefetched candidates
    assert set(catalog.reads[0]) >= {"i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7"}


def test_many_unavailable_items_are_read_in_more_rounds_until_k_are_found():
    catalog = CatalogOnline(unavailable={f"i{n}" for n in range(8)})
    (picks,), _ = pick_available([_problem(3)], catalog.read)
    assert picks == [8, 9, 10] and len(catalog.reads) > 1
    (few,), _ = pick_available([_problem(3)], CatalogOnline(unavailable=set(IDS[:10])).read)
    assert few == [10, 11]  # fewer available than k: all of them


def test_picks_equal_the_full_ranking_without_unavailable_items_under_a_category_cap():
    rng = np.random.default_rng(0)
    categories = np.array(rng.choice(["a", "b", "c", None], len(IDS)), dtype=object)
    for trial in range(30):
        unavailable = set(rng.choice(IDS, rng.integers(0, 8), replace=False))
        problem = _problem(4, categories=categories, cap=1)
        problem.scores = rng.random(len(IDS))
        (picks,), _ = pick_available([problem], CatalogOnline(unavailable).read)
        banned = np.array([i in unavailable for i in IDS])
        assert picks == top_k(problem.scores, 4, banned=banned, categories=categories, max_per_category=1), trial


def test_item_states_are_reused_briefly_and_last_known_stands_in_for_a_store_outage():
    now = [0.0]
    catalog = CatalogOnline(prices={"i0": 5.0})
    states = ItemStates(catalog.read, StoreGuard(cooldown_s=10, clock=lambda: now[0]), ttl_s=1.0, clock=lambda: now[0])
    last_known = CatalogState({"i0": 0, "i1": 1}, np.array([True, False]), np.array([4.0, 3.0]))
    read = states.reader(last_known)
    assert read(["i0", "i1"]) == {"i0": ItemState(True, 5.0), "i1": ItemState(True, None)}  # online wins
    catalog.unavailable.add("i0")
    now[0] = 0.5
    assert read(["i0"])["i0"].available is True and len(catalog.reads) == 1  # within the TTL: no read
    now[0] = 1.5
    assert read(["i0"])["i0"].available is False and len(catalog.reads) == 2  # the change arrives

    def down(item_ids):
        raise ConnectionError("store down")

    outage = ItemStates(down, StoreGuard(cooldown_s=10, clock=lambda: now[0]), clock=lambda: now[0])
    assert outage.reader(last_known)(["i0", "i1", "x"]) == {
        "i0": ItemState(True, 4.0), "i1": ItemState(False, 3.0), "x": ItemState(None, None)}
    assert "store down" in outage.store.last_error


# --- model holder ---------------------------------------------------------------------------
def test_failed_version_keeps_the_old_one_serving_and_is_reported():
    pointer = {"v": "v1"}

    def load(version):
        if version == "bad":
            raise ValueError("weights are corrupt")
        return f"model-{version}"

    holder = ModelHolder(load, lambda: pointer["v"])
    assert holder.refresh().status == "swapped" and holder.current == "model-v1"
    assert holder.refresh().status == "unchanged"
    pointer["v"] = "bad"
    report = holder.refresh()
    assert report.status == "failed" and holder.current == "model-v1" and holder.version == "v1"
    assert "weights are corrupt" in holder.last_failure["error"]
    assert report.to_json() == {"status": "failed", "serving": "v1", "failure": holder.last_failure}
    pointer["v"] = "v2"
    assert holder.refresh().to_json() == {"status": "swapped", "serving": "v2"} and holder.last_failure is None


def test_requests_see_the_old_model_until_the_new_one_is_complete():
    release = threading.Event()

    def slow_load(version):
        release.wait(5)
        return version

    holder = ModelHolder(slow_load, lambda: "v2")
    holder._current, holder._version = "v1", "v1"
    loader = threading.Thread(target=holder.refresh)
    loader.start()
    time.sleep(0.05)
    assert holder.current == "v1"  # still serving while v2 loads
    release.set()
    loader.join(5)
    assert holder.current == "v2"


# --- store guard -----------------------------------------------------------------------------
def test_store_guard_skips_then_retries_by_itself():
    now = [0.0]
    guard = StoreGuard(cooldown_s=1.0, clock=lambda: now[0])
    assert guard.should_try()
    guard.failed(ConnectionError("refused"))
    assert not guard.should_try() and "refused" in guard.last_error
    now[0] = 1.5
    assert guard.should_try()
    guard.succeeded()
    assert guard.last_error is None


# --- adaptive batching -------------------------------------------------------------------------
def _record_doubles(calls):
    def double(batch):
        calls.append(list(batch))
        return [x * 2 for x in batch]

    return double


def test_async_batcher_groups_concurrent_calls_and_keeps_order():
    calls, sizes = [], []

    async def main():
        batcher = AsyncBatcher(_record_doubles(calls), max_batch=8, on_batch=sizes.append)
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    assert asyncio.run(main()) == [i * 2 for i in range(20)]
    assert [len(c) for c in calls] == sizes == [8, 8, 4]
    assert [x for c in calls for x in c] == list(range(20))


def test_async_batcher_runs_a_lone_request_at_once():
    calls = []

    async def main():
        batcher = AsyncBatcher(_record_doubles(calls), max_batch=8)
        return [await batcher.submit(1), await batcher.submit(2)]

    assert asyncio.run(main()) == [2, 4]
    assert calls == [[1], [2]]


def test_async_batcher_passes_errors_to_every_caller_and_goes_on():
    async def main():
        batcher = AsyncBatcher(lambda batch: [1 / x for x in batch], max_batch=4)
        failed = await asyncio.gather(*(batcher.submit(x) for x in (1, 0, 2)), return_exceptions=True)
        return failed, await batcher.submit(4)

    failed, after = asyncio.run(main())
    assert all(isinstance(f, ZeroDivisionError) for f in failed)
    assert after == 0.25


def test_async_batcher_skips_callers_that_went_away():
    calls = []

    async def main():
        batcher = AsyncBatcher(_record_doubles(calls), max_batch=8)
        gone, staying = (asyncio.ensure_future(batcher.submit(x)) for x in (1, 2))
        await asyncio.sleep(0)  # both are queued
        gone.cancel()
        return await staying

    assert asyncio.run(main()) == 4
    assert calls == [[2]]


# --- request guard (ASGI) ---------------------------------------------------------------------
def _call(guard_kwargs, path, headers=(), body_chunks=(b"{}",), method="POST"):
    seen = {}

    async def app(scope, receive, send):
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        seen["body"] = body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = list(body_chunks)
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "path": path, "method": method, "headers": [(k.encode(), v.encode()) for k, v in headers]}
    asyncio.run(RequestGuard(app, **guard_kwargs)(scope, receive, send))
    body = sent[1]["body"]
    return sent[0]["status"], (json.loads(body) if body != b"ok" else "ok"), seen


GUARD = {"max_body_bytes": 10, "api_token": "s3cret"}
AUTH = ("authorization", "Bearer s3cret")  # the API token opens /recommend too (scopes: tests/test_auth.py)


def test_writes_need_the_bearer_token_and_never_reach_the_app_without_it():
    for headers in [(), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)]:
        status, body, seen = _call(GUARD, "/events", headers)
        assert status == 401 and "bearer token" in body["error"] and not seen
    status, _, seen = _call(GUARD, "/admin/reload", [("authorization", "Bearer s3cret")])
    assert status == 200 and seen["body"] == b"{}"
    assert not authorized("Bearer ", "")  # no token configured: no writes


def test_oversized_bodies_are_refused_declared_or_streamed():
    status, body, seen = _call(GUARD, "/recommend", [AUTH, ("content-length", "11")], [b"x" * 11])
    assert status == 422 and "larger than 10 bytes" in body["error"] and not seen
    status, body, seen = _call(GUARD, "/recommend", [AUTH], [b"x" * 6, b"y" * 6])
    assert status == 422 and not seen
    status, _, seen = _call(GUARD, "/recommend", [AUTH], [b"12345", b"678"])
    assert status == 200 and seen["body"] == b"12345678"


def test_non_json_bodies_are_refused():
    status, body, seen = _call(GUARD, "/recommend", [AUTH, ("content-type", "application/x-www-form-urlencoded")])
    assert status == 415 and "application/json" in body["error"] and not seen
    assert _call(GUARD, "/recommend", [AUTH, ("content-type", "application/json; charset=utf-8")])[0] == 200
