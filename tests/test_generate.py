"""The synthetic shop: deterministic, canonical, and with the structure a model should learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from shoprec.schema import EVENT_ARROW_SCHEMA, EVENT_COLUMNS, ITEM_ARROW_SCHEMA, ITEM_COLUMNS, conform_events
from simulator.catalog import CATEGORIES
from simulator.shop import Behaviour, default_sizes, generate, generate_window, write_generated

START = pd.Timestamp("2026-01-01", tz="UTC")


@pytest.fixture(scope="module")
def shop():
    """One mid-sized shop shared by the read-only tests."""
    return generate(50_000, seed=3)


def test_same_seed_gives_identical_frames_and_batch_id():
    first, second = generate(3_000, seed=7), generate(3_000, seed=7)
    pd.testing.assert_frame_equal(first.events, second.events)
    pd.testing.assert_frame_equal(first.items, second.items)
    assert first.batch_id == second.batch_id
    assert not first.events.equals(generate(3_000, seed=8).events)


def test_events_and_items_follow_the_canonical_schema(shop):
    assert dict(shop.events.dtypes.astype(str)) == EVENT_COLUMNS
    assert dict(shop.items.dtypes.astype(str)) == ITEM_COLUMNS
    pd.testing.assert_frame_equal(conform_events(shop.events), shop.events)
    assert shop.events.drop(columns="event_id").notna().all().all()
    assert shop.events["event_id"].isna().all()  # batch sources carry no event ids (only /events does)
    assert set(shop.events["event_type"]) == {"view", "add_to_cart", "purchase"}
    assert shop.events["timestamp"].min() >= START
    assert shop.events["timestamp"].max() < START + pd.Timedelta(days=30)
    assert shop.events["timestamp"].is_monotonic_increasing
    assert set(shop.events["item_id"]) <= set(shop.items["item_id"])
    assert (shop.events["price"] > 0).all() and (shop.events["quantity"] >= 1).all()


def test_write_generated_round_trips_through_parquet(shop, tmp_path):
    paths = write_generated(shop, tmp_path / "gen")
    assert paths == {"events": tmp_path / "gen" / "events.parquet", "items": tmp_path / "gen" / "items.parquet"}
    events, items = pq.read_table(paths["events"]), pq.read_table(paths["items"])
    assert events.schema.equals(EVENT_ARROW_SCHEMA) and items.schema.equals(ITEM_ARROW_SCHEMA)
    pd.testing.assert_frame_equal(conform_events(events.to_pandas()), shop.events)
    assert items.column("attributes").to_pylist() == list(shop.items["attributes"])


@pytest.mark.parametrize("n_events", [0, 1, 999, 12_345])
def test_exactly_the_asked_number_of_events(n_events):
    assert len(generate(n_events, seed=1).events) == n_events


def test_exact_count_when_the_first_guess_of_sessions_falls_short():
    bounces = Behaviour(mean_session_views=1.0, add_to_cart=0.0, add_to_cart_taste_bonus=0.0)
    events = generate(5_000, seed=1, behaviour=bounces).events
    assert len(events) == 5_000 and events["session_id"].is_unique


def test_sizes_and_window_parameters_are_respected():
    batch = generate(4_000, seed=2, n_users=37, n_items=120, start="2025-06-01", days=3)
    assert len(batch.items) == 120 and batch.items["item_id"].is_unique
    assert batch.events["user_id"].nunique() <= 37
    assert set(batch.events["user_id"]) <= {f"u{i:02d}" for i in range(37)}
    assert batch.events["timestamp"].min() >= pd.Timestamp("2025-06-01", tz="UTC")
    assert batch.events["timestamp"].max() < pd.Timestamp("2025-06-04", tz="UTC")
    assert batch.metadata["n_users"] == 37 and batch.metadata["seed"] == 2
    assert default_sizes(1_000_000) == (50_000, 20_000)
    assert default_sizes(10_000_000)[1] == 100_000  # the catalog is capped


def test_catalog_is_readable_and_priced_per_category(shop):
    items = shop.items
    assert set(items["category"]) == {c.name for c in CATEGORIES}
    assert all(title.startswith(brand + " ") for title, brand in zip(items["title"], items["brand"]))
    assert items["title"].str.split().str.len().min() >= 3
    median = items.groupby("category")["price"].median()
    assert median["Electronics"] > 3 * median["Personal Care"]
    assert 0 < (~items["available"]).mean() < 0.1
    assert all(f"brand:{b}" in a for b, a in zip(items["brand"], items["attributes"]))


def test_funnel_views_then_carts_then_purchases(shop):
    events = shop.events
    counts = events["event_type"].value_counts()
    assert counts["purchase"] < counts["add_to_cart"] < counts["view"]
    # every cart and purchase comes after a view of the same item in the same session
    key = ["session_id", "item_id"]
    first_view = events[events["event_type"] == "view"].groupby(key)["timestamp"].min().rename("viewed")
    for kind in ("add_to_cart", "purchase"):
        acted = events[events["event_type"] == kind].join(first_view, on=key)
        assert acted["viewed"].notna().all() and (acted["viewed"] <= acted["timestamp"]).all(), kind
    unavailable = set(shop.items.loc[~shop.items["available"], "item_id"])
    carted = set(events.loc[events["event_type"] != "view", "item_id"])
    assert unavailable and not (unavailable & carted)


def next_item_hit_rates(events: pd.DataFrame, k: int = 10) -> tuple[float, float]:
    """HR@k of a first-order Markov predictor and of popularity on each user's last 20% of views."""
    views = events[events["event_type"] == "view"].sort_values(["user_id", "timestamp"], kind="stable")
    by_user = views.groupby("user_id")["item_id"]
    views = views.assign(previous=by_user.shift(), position=by_user.cumcount(), length=by_user.transform("size"))
    in_train = views["position"] < (0.8 * views["length"]).astype(int)
    train, test = views[in_train], views[~in_train & views["previous"].notna()]
    popular = set(train["item_id"].value_counts().index[:k])
    transitions = train.dropna(subset=["previous"]).groupby(["previous", "item_id"]).size().rename("n").reset_index()
    top = transitions.sort_values(["previous", "n"], ascending=[True, False]).groupby("previous").head(k)
    successors = top.groupby("previous")["item_id"].agg(set)
    markov = [nxt in successors.get(prev, popular) for prev, nxt in zip(test["previous"], test["item_id"])]
    return float(np.mean(markov)), float(test["item_id"].isin(popular).mean())


def test_next_item_transitions_are_learnable(shop):
    markov, popularity = next_item_hit_rates(shop.events)
    assert markov > 0.4 and markov > 3 * popularity, (markov, popularity)
    # the signal comes from the next-item transitions: without them the Markov edge shrinks
    no_transitions = generate(50_000, seed=3, behaviour=Behaviour(follow_next_item=0))
    markov_off, _ = next_item_hit_rates(no_transitions.events)
    assert markov_off < markov / 2, (markov_off, markov)


def test_users_have_tastes(shop):
    views = shop.events.loc[shop.events["event_type"] == "view", ["user_id", "item_id"]]
    views = views.join(shop.items.set_index("item_id")["category"], on="item_id")
    per_category = views.groupby(["user_id", "category"]).size()
    per_user = per_category.groupby("user_id")
    active = per_user.sum() >= 10
    favourite_share = (per_user.max() / per_user.sum())[active].mean()
    assert favourite_share > 2 * views["category"].value_counts(normalize=True).iloc[0]


def top_items_overlap(events: pd.DataFrame, top: int = 20) -> float:
    """Share of the first week's top items that are still top items in the last week."""
    views = events[events["event_type"] == "view"]
    first = views[views["timestamp"] < START + pd.Timedelta(days=7)]
    last = views[views["timestamp"] >= START + pd.Timedelta(days=23)]
    top_first = set(first["item_id"].value_counts().index[:top])
    return len(top_first & set(last["item_id"].value_counts().index[:top])) / top


def test_popularity_drifts_over_the_window(shop):
    drifting = top_items_overlap(shop.events)
    steady = top_items_overlap(generate(50_000, seed=3, behaviour=Behaviour(drift=0)).events)
    assert drifting <= 0.4 and steady >= 0.6, (drifting, steady)


def test_windows_are_reproducible_and_share_the_shop():
    day = generate_window("2026-03-01", "2026-03-02", events_per_day=2_000, seed=5)
    again = generate_window("2026-03-01", "2026-03-02", events_per_day=2_000, seed=5)
    next_day = generate_window("2026-03-02", "2026-03-03", events_per_day=2_000, seed=5)
    pd.testing.assert_frame_equal(day.events, again.events)
    assert len(day.events) == 2_000
    assert day.events["timestamp"].min() >= pd.Timestamp("2026-03-01", tz="UTC")
    assert day.events["timestamp"].max() < pd.Timestamp("2026-03-02", tz="UTC")
    assert not set(day.events["session_id"]) & set(next_day.events["session_id"])
    pd.testing.assert_frame_equal(day.items, next_day.items)
    # the same shop as a month-long generate() of that daily volume
    pd.testing.assert_frame_equal(day.items, generate(60_000, seed=5).items)


def test_hourly_windows_follow_the_daily_traffic_curve():
    hours = [
        generate_window(START + pd.Timedelta(hours=h), START + pd.Timedelta(hours=h + 1), events_per_day=24_000, seed=1)
        for h in (3, 20)
    ]
    night, evening = (len(h.events) for h in hours)
    assert evening > 5 * night > 0
    assert hours[1].events["timestamp"].dt.hour.eq(20).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: generate(-1), "n_events"),
        (lambda: generate(100, days=0), "days"),
        (lambda: generate(100, n_items=5), "n_items"),
        (lambda: generate_window("2026-01-02", "2026-01-01", events_per_day=10), "empty window"),
    ],
)
def test_bad_arguments_are_refused_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()
