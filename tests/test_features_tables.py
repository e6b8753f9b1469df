"""Feature-table builders and profile selection, without the online store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoprec.config import load_settings
from shoprec.features import store, tables
from shoprec.features.sequence import extend_sequence, recent_items
from shoprec.generate import generate


def test_text_embeddings_are_cached_by_text(settings):
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["red lipstick", "blue shampoo"], "category": ["makeup", "hair"], "brand": ["x", "y"]})
    first, encoded = tables.item_text_embedding(items, settings)
    assert encoded == 2 and len(first["embedding"].iloc[0]) == settings.features.text_embedding_dim
    again, encoded = tables.item_text_embedding(items, settings)
    assert encoded == 0 and all((a == b).all() for a, b in zip(first["embedding"], again["embedding"]))
    items.loc[1, "title"] = "green shampoo"
    _, encoded = tables.item_text_embedding(items, settings)
    assert encoded == 1  # only the changed item is re-encoded


def test_sequence_snapshots_follow_recent_items_at_every_time():
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    events = pd.DataFrame({
        "user_id": ["u", "u", "u", "v", "u"],
        "item_id": ["a", "b", "c", "a", "d"],
        "event_type": ["view"] * 5,
        "timestamp": [ts, ts + pd.Timedelta(hours=1), ts + pd.Timedelta(hours=1), ts, ts + pd.Timedelta(hours=2)],
    })
    snaps = tables.sequence_snapshots(events, max_len=2)
    assert len(snaps) == 4  # one per (user, distinct time): u at 3 times, v once
    for row in snaps.itertuples():
        expected = recent_items(events[events["user_id"] == row.user_id], 2, as_of=row.event_timestamp).iloc[0]
        assert row.item_ids == expected["item_ids"]
        assert row.event_types == expected["event_types"] and row.timestamps == expected["timestamps"]


def test_sequence_snapshots_equal_recent_items_on_a_generated_shop():
    events = generate(3000, seed=5).events
    snaps = tables.sequence_snapshots(events, max_len=5)
    assert len(snaps) == len(events.drop_duplicates(["user_id", "timestamp"]))
    for row in snaps.sample(200, random_state=0).itertuples():
        expected = recent_items(events[events["user_id"] == row.user_id], 5, as_of=row.event_timestamp).iloc[0]
        assert (row.item_ids, row.event_types, row.timestamps) == (
            expected["item_ids"], expected["event_types"], expected["timestamps"])


def test_profile_selects_feature_store_yaml(home):
    local = store.resolved_yaml(load_settings()).read_text()
    assert "type: sqlite" in local and str(home.resolve()) in local and "${" not in local
    prod = load_settings(online_store={"type": "redis", "redis_connection_string": "127.0.0.1:6379,db=9"},
                         registry={"type": "sql", "sql_url": "postgresql+psycopg2://postgres@127.0.0.1:5432/x"})
    text = store.resolved_yaml(prod).read_text()
    assert "type: redis" in text and "db=9" in text and "registry_type: sql" in text
    with pytest.raises(ValueError, match="no Feast configuration"):
        store.resolved_yaml(load_settings(registry={"type": "sql"}))  # sqlite online + SQL registry: no template


def test_extend_sequence_follows_recent_items_with_ties_and_late_events():
    """The push path's plain-Python form of the rule gives what recent_items gives on all events."""
    rng = np.random.default_rng(3)
    base = pd.Timestamp("2024-03-01", tz="UTC")
    events = pd.DataFrame({
        "user_id": "u",
        "item_id": [f"i{k}" for k in range(40)],
        "event_type": rng.choice(["view", "add_to_cart", "purchase"], 40),
        "timestamp": base + pd.to_timedelta(rng.integers(0, 10, 40), unit="h"),  # many ties, out of order
    })
    for max_len in (5, None):
        stored = {"item_ids": [], "event_types": [], "timestamps": []}
        for start in range(0, 40, 7):  # pushed in chunks, each merged into what is stored
            stored = extend_sequence(stored, events.iloc[start : start + 7], max_len)
            expected = recent_items(events.iloc[: start + 7], max_len).iloc[0]
            assert stored["item_ids"] == expected["item_ids"]
            assert stored["event_types"] == expected["event_types"]
            assert stored["timestamps"] == list(expected["timestamps"])
