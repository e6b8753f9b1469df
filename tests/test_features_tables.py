"""Feature-table builders and the Feast configuration, without the online store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml

from shoprec.config import FEATURE_REPO_DIR, OnlineStoreSettings, RegistrySettings, load_settings
from shoprec.features import store, tables
from shoprec.features.sequence import extend_sequence, recent_items
from shoprec.text_embedding import EmbeddingCache
from simulator.shop import generate


def test_item_texts_are_encoded_once_into_the_cache(settings):
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["red lipstick", "blue shampoo"], "category": ["makeup", "hair"], "brand": ["x", "y"]})
    assert tables.encode_item_texts(items, settings) == 2
    assert len(EmbeddingCache(settings.cache_dir / "text_embeddings.parquet")) == 2  # what training reads
    assert tables.encode_item_texts(items, settings) == 0
    items.loc[1, "title"] = "green shampoo"
    assert tables.encode_item_texts(items, settings) == 1  # only the changed item is re-encoded


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


def test_feast_yaml_follows_the_settings(home):
    local = store.write_feast_yaml(load_settings()).read_text()
    config = yaml.safe_load(local)
    assert config["online_store"] == {"type": "sqlite", "path": f"{home.resolve()}/feast/online_store.db"}
    assert config["registry"] == f"{home.resolve()}/feast/registry.db" and "${" not in local
    prod = load_settings(online_store={"type": "redis", "redis_connection_string": "127.0.0.1:6379,db=9", "key_ttl_seconds": 60},
                         registry={"type": "sql", "sql_url": "postgresql+psycopg2://postgres@127.0.0.1:5432/x"})
    config = yaml.safe_load(store.write_feast_yaml(prod).read_text())
    assert config["online_store"] == {"type": "redis", "connection_string": "127.0.0.1:6379,db=9", "key_ttl_seconds": 60}
    assert config["registry"]["registry_type"] == "sql" and config["registry"]["path"].endswith("5432/x")
    mixed = yaml.safe_load(store.feast_yaml(load_settings(registry={"type": "sql"})))  # any pair works
    assert mixed["online_store"]["type"] == "sqlite" and mixed["registry"]["registry_type"] == "sql"


def test_the_repos_feature_store_yaml_is_the_generators_default():
    """feature_repo/feature_store.yaml (what a plain `feast apply` reads) cannot drift from the generator."""
    defaults = load_settings(online_store=OnlineStoreSettings(), registry=RegistrySettings())
    expected = store.feast_yaml(defaults, home=store.HOME_VARIABLE)
    assert (FEATURE_REPO_DIR / "feature_store.yaml").read_text() == expected, (
        "regenerate it: feature_repo/feature_store.yaml = shoprec.features.store.feast_yaml(defaults, home=HOME_VARIABLE)")
    assert sorted(p.name for p in FEATURE_REPO_DIR.glob("*.yaml")) == ["feature_store.yaml"]


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
