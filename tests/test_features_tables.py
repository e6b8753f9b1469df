"""Feature-table builders and the Feast configuration, without the online store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from shoprec.config import FEATURE_REPO_DIR, OnlineStoreSettings, RegistrySettings, load_settings
from shoprec.features import store, tables
from shoprec.features.redis_store import STORE_TYPE as REDIS_STORE_TYPE
from shoprec.features.sqlite_store import STORE_TYPE as SQLITE_STORE_TYPE
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
    assert config["online_store"] == {"type": SQLITE_STORE_TYPE, "path": f"{home.resolve()}/feast/online_store.db"}
    assert config["registry"] == f"{home.resolve()}/feast/registry.db" and "${" not in local
    prod = load_settings(online_store={"type": "redis", "redis_connection_string": "127.0.0.1:6379,db=9", "key_ttl_seconds": 60},
                         registry={"type": "sql", "sql_url": "postgresql+psycopg2://postgres@127.0.0.1:5432/x"})
    config = yaml.safe_load(store.write_feast_yaml(prod).read_text())
    assert config["online_store"] == {"type": REDIS_STORE_TYPE, "connection_string": "127.0.0.1:6379,db=9", "key_ttl_seconds": 60}
    assert config["registry"]["registry_type"] == "sql" and config["registry"]["path"].endswith("5432/x")
    mixed = yaml.safe_load(store.feast_yaml(load_settings(registry={"type": "sql"})))  # any pair works
    assert mixed["online_store"]["type"] == SQLITE_STORE_TYPE and mixed["registry"]["registry_type"] == "sql"


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


def test_the_written_snapshot_table_is_sequence_snapshots(tmp_path):
    """The bulk Arrow writer (older rows, then each user's newest; time order within) holds
    exactly the rows of sequence_snapshots, marks each user's newest row, and spans row groups."""
    events = generate(4000, seed=11).events
    path = tmp_path / "user_recent_items.parquet"
    read_at = pd.Timestamp("2030-01-01", tz="UTC")
    rows = tables.write_sequence_snapshots(events, 5, path, read_at)
    written = pq.read_table(path)
    assert rows == written.num_rows and tables.table_read_at(path) == read_at
    expected = pa.Table.from_pandas(tables.sequence_snapshots(events, max_len=5), preserve_index=False)
    key = ["user_id", "event_timestamp"]
    got = written.sort_by([(k, "ascending") for k in key])
    for column in ("user_id", "item_ids", "event_types", "timestamps", "event_timestamp"):
        assert got.column(column).to_pylist() == expected.column(column).to_pylist(), column
    frame = written.to_pandas()
    newest = frame.groupby("user_id")["event_timestamp"].transform("max") == frame["event_timestamp"]
    assert (frame["is_newest"] == newest).all()
    older, latest = frame[~frame["is_newest"]], frame[frame["is_newest"]]
    assert frame["is_newest"].is_monotonic_increasing  # older rows first
    assert older["event_timestamp"].is_monotonic_increasing and latest["event_timestamp"].is_monotonic_increasing


def test_item_stats_count_each_items_events_by_day_and_window():
    events = generate(3000, seed=2, days=20).events
    items = generate(3000, seed=2, days=20).items
    stats = tables.item_stats(events, items, load_settings()).set_index(["item_id", "event_timestamp"])
    day = events["timestamp"].dt.floor("D")
    for item in events["item_id"].value_counts().index[:5]:
        mine = events[events["item_id"] == item]
        for at, row in stats.loc[item].iterrows():
            if at == tables.static_time(load_settings()):
                continue
            today = day[mine.index][mine["timestamp"] <= at].max()
            for days in tables.WINDOWS_DAYS:
                window = mine[(day[mine.index] > today - pd.Timedelta(days=days)) & (day[mine.index] <= today)]
                assert row[f"popularity_{days}d"] == len(window), (item, at, days)
            month = mine[(day[mine.index] > today - pd.Timedelta(days=30)) & (day[mine.index] <= today)]
            assert row["add_to_cart_rate"] == pytest.approx((month["event_type"] == "add_to_cart").mean())
            assert row["purchase_rate"] == pytest.approx((month["event_type"] == "purchase").mean())
