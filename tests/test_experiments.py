"""Live experiments: the split (deterministic, by the configured percentages), the routing of
finished and shadow arms, and end to end through a running service with simulated customers."""

from __future__ import annotations

import time

import pytest

from entrypoints import steps
from services.availability import ItemStates
from services.bundle import CurrentModel
from services.experiments import BUCKETS, Experiments, ImpressionSink, bucket
from services.guards import Limits
from services.recommending import Recommending
from services.resilience import ModelHolder, StoreGuard
from shoprec.config import load_settings
from shoprec.features.online import OnlineFeatures
from shoprec.impressions import read_impressions
from simulator.customers import Customers
from simulator.shop import default_sizes, tastes_of
from tests.experiment_harness import shuffled_variant
from tests.service_harness import READ_TOKEN, WRITE_TOKEN, RedisServer, Server, call, prepare_shop, shop_settings
from training import online_test
from training.registry import production_version, promote

A_PORTS = (3610, 3611)  # this helper's ports: Redis, the service


def experiments(tmp_path, challengers, **extra) -> Experiments:
    """An Experiments whose "bundles" are the version names (the real holders, a trivial loader)."""
    settings = load_settings(home=tmp_path, experiments={"name": "exp", "challengers": challengers, **extra})
    champion = CurrentModel(settings, ModelHolder(lambda v: f"bundle:{v}", lambda: "v1"))
    champion.holder.refresh()
    out = Experiments(settings, champion, load=lambda v: f"bundle:{v}")
    out.refresh()
    return out


TWO = [{"name": "b", "version": "v2", "percent": 30}, {"name": "c", "version": "v3", "percent": 20}]


def test_the_split_is_deterministic_and_follows_the_percentages(tmp_path):
    first, again = experiments(tmp_path, TWO), experiments(tmp_path, TWO)
    users = [f"user-{n}" for n in range(20_000)]
    arms = [first.arm_of(u) for u in users]
    assert arms == [again.arm_of(u) for u in users]  # another worker, another process: the same arms
    shares = {arm: arms.count(arm) / len(users) for arm in ("b", "c", "champion")}
    assert shares == {"b": pytest.approx(0.30, abs=0.015), "c": pytest.approx(0.20, abs=0.015),
                      "champion": pytest.approx(0.50, abs=0.015)}
    assert bucket("exp", "user-1") == bucket("exp", "user-1") and 0 <= bucket("exp", "user-1") < BUCKETS
    renamed = [bucket("exp2", u) for u in users[:2000]]
    assert sum(a != b for a, b in zip(renamed, [bucket("exp", u) for u in users[:2000]])) > 1900  # reshuffled


def test_assignment_routes_by_user_else_session_and_serves_each_arm_its_version(tmp_path):
    exp = experiments(tmp_path, TWO)
    user = next(u for u in (f"u{n}" for n in range(1000)) if exp.arm_of(u) == "b")
    got = exp.assign(user, "any-session")
    assert (got.experiment, got.arm, got.bundle, got.shadow_bundle) == ("exp", "b", "bundle:v2", None)
    session = next(s for s in (f"s{n}" for n in range(1000)) if exp.arm_of(s) == "champion")
    assert (exp.assign(None, session).arm, exp.assign(None, session).bundle) == ("champion", "bundle:v1")
    anonymous = exp.assign(None, None)  # no id to split by: outside the experiment
    assert (anonymous.experiment, anonymous.arm) == (None, "champion")


def test_a_shadow_challenger_scores_but_the_champion_is_shown(tmp_path):
    exp = experiments(tmp_path, TWO, shadow=True)
    user = next(u for u in (f"u{n}" for n in range(1000)) if exp.arm_of(u) == "c")
    got = exp.assign(user, None)
    assert (got.arm, got.bundle, got.shadow_arm, got.shadow_bundle) == ("champion", "bundle:v1", "c", "bundle:v3")


def test_finished_arms_get_no_traffic_and_a_promotion_ends_the_experiment(tmp_path):
    exp = experiments(tmp_path, TWO)
    settings = exp.settings
    b_user = next(u for u in (f"u{n}" for n in range(1000)) if exp.arm_of(u) == "b")
    c_user = next(u for u in (f"u{n}" for n in range(1000)) if exp.arm_of(u) == "c")
    settings.models_dir.mkdir(parents=True)
    online_test._append(online_test.decisions_path(settings),
                        ['{"experiment": "exp", "arm": "b", "verdict": "stop"}'])
    exp.refresh()
    assert (exp.assign(b_user, None).arm, exp.assign(b_user, None).experiment) == ("champion", None)
    assert exp.assign(c_user, None).arm == "c"
    online_test._append(online_test.decisions_path(settings),
                        ['{"experiment": "exp", "arm": "c", "verdict": "promote"}'])
    exp.refresh()
    assert (exp.assign(c_user, None).arm, exp.assign(c_user, None).experiment) == ("champion", None)


# --- end to end ---------------------------------------------------------------------------------


def wait_for(check, timeout: float = 30.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


@pytest.mark.slow
def test_a_better_model_wins_the_experiment_and_a_worse_one_is_stopped(tmp_path):
    """A weak champion (a shuffled-table variant), a strong challenger (the trained model) and
    another weak one; simulated customers shop through the service; the online test promotes
    the strong one, stops the other, and the service then serves the winner to everyone."""
    redis = RedisServer(tmp_path / "redis", port=A_PORTS[0]).start()
    server = None
    try:
        settings = shop_settings(tmp_path / "home", redis.port)
        n_events = 4000
        shop = prepare_shop(settings, n_events=n_events, epochs=3)
        strong = shop["version"]
        weak, other = shuffled_variant(settings, strong, seed=1), shuffled_variant(settings, strong, seed=2)
        promote(weak, settings)
        # seen items may come back (only purchases are left out): with 80 items a user has seen most of
        # their category, and a list of the unseen rest says little about the model
        settings = settings.with_overrides(serving={"exclude": "purchased"}, experiments={
            "name": "e2e", "min_impressions_per_arm": 150, "attribution_window_seconds": 600,
            "challengers": [{"name": "strong", "version": strong, "percent": 40},
                            {"name": "other", "version": other, "percent": 30}]})
        server = Server(settings, port=A_PORTS[1], log_path=tmp_path / "serve.log").start(timeout=300)
        wait_for(lambda: len(call(server, "GET", "/experiments", token=READ_TOKEN)[1]["finished"]) == 0
                 and _arms_loaded(server))
        n_users, n_items = default_sizes(n_events)
        customers = Customers(server.url, tastes_of({"n_users": n_users, "n_items": n_items, "seed": 0}),
                              READ_TOKEN, WRITE_TOKEN, seed=3, history=_histories(shop["events"]))
        run = customers.run(sessions=360, lists_per_session=2, concurrency=8)
        assert run.errors == 0 and set(run.lists_by_arm) == {"champion", "strong", "other"}
        report = wait_for(lambda: _report_with(server, run.lists))
        arms = {a["arm"]: a for a in report["arms"]}
        print(f"\ncustomers: {run.to_dict()}\narms: {[(a, arms[a]['impressions'], arms[a]['ctr']['rate']) for a in arms]}")
        assert arms["strong"]["ctr"]["low"] > arms["champion"]["ctr"]["high"]  # the intervals do not overlap
        strong_user = next(u for u in map(str, customers.tastes.user_ids) if _arm(server, u) == "strong")
        decision = steps.online_experiment(settings)
        verdicts = {a["arm"]: a["verdict"] for a in decision["arms"]}
        assert verdicts == {"strong": "promote", "other": "stop"}, decision
        assert production_version(settings) == strong and decision["promoted"] == strong
        answer = wait_for(lambda: _served(server, strong_user, strong))  # the experiment is over, for everyone
        assert (answer["arm"], answer["experiment"]) == ("champion", None)
        bad_id = {"user_id": strong_user, "item_id": answer["items"][0]["item_id"], "event_type": "view",
                  "recommendation_id": 5}
        assert call(server, "POST", "/events", {"events": [bad_id]}, token=WRITE_TOKEN)[0] == 422
        shadow_answers_are_logged_not_shown(settings, strong_user, champion=strong, challenger=weak)
    finally:
        if server is not None:
            server.stop()
        redis.kill()


def shadow_answers_are_logged_not_shown(settings, user: str, champion: str, challenger: str) -> None:
    """In process, on the same shop: a shadow challenger's list is logged with ``shadow``, the
    champion's is the answer."""
    settings = settings.with_overrides(experiments={
        "name": "shadow-check", "shadow": True, "challengers": [{"name": "weak", "version": challenger, "percent": 100}]})
    model = CurrentModel(settings)
    model.holder.refresh()
    exp = Experiments(settings, model)
    exp.refresh()
    sink = ImpressionSink(settings)
    features, store = OnlineFeatures(settings), StoreGuard()
    recommending = Recommending(settings, model, features, ItemStates(features.item_states, store), store,
                                Limits.from_settings(settings), experiments=exp, impressions=sink)
    answer = recommending.recommend(user, None, 5)
    assert (answer.arm, answer.experiment, answer.model_version) == ("champion", "shadow-check", champion)
    sink.flush()
    logged = read_impressions(settings)
    logged = logged[logged["experiment"] == "shadow-check"].set_index("shadow")
    assert logged.loc[False, "recommendation_id"] == answer.recommendation_id
    assert (logged.loc[True, "arm"], logged.loc[True, "model_version"]) == ("weak", challenger)
    assert list(logged.loc[False, "item_ids"]) == [i.item_id for i in answer.items]


def _histories(events) -> dict[str, list[str]]:
    ordered = events.sort_values("timestamp")
    return {str(u): items.astype(str).tolist()[-5:] for u, items in ordered.groupby("user_id")["item_id"]}


def _arms_loaded(server) -> bool:
    """Every arm answers: the challengers loaded in the background after the champion."""
    seen = {call(server, "POST", "/recommend", {"user_id": f"probe-{n}", "k": 1}, token=READ_TOKEN)[1]["arm"]
            for n in range(60)}
    return seen == {"champion", "strong", "other"}


def _report_with(server, lists: int) -> dict | None:
    """/experiments once every list the customers got is in the impression log (probes included)."""
    status, report = call(server, "GET", "/experiments", token=READ_TOKEN)
    assert status == 200, report
    return report if sum(a["impressions"] for a in report["arms"]) >= lists else None


def _arm(server, user: str) -> str:
    return call(server, "POST", "/recommend", {"user_id": user, "k": 1}, token=READ_TOKEN)[1]["arm"]


def _served(server, user: str, version: str) -> dict | None:
    """The answer once ``version`` serves ``user`` outside any experiment."""
    answer = call(server, "POST", "/recommend", {"user_id": user, "k": 3}, token=READ_TOKEN)[1]
    return answer if answer["model_version"] == version and answer["experiment"] is None else None
