"""Feast feature store end to end, on the embedded default (SQLite) and on real Redis + PostgreSQL.

A tiny synthetic shop (a few users, items and days) goes through lake -> tables ->
apply -> materialize; then online reads, pushes, leakage and bad input are checked.
"""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from feast import FeatureService, FeatureView, Field
from feast.types import Int64
from sqlalchemy import create_engine, text

from shoprec import event_log, lake
from shoprec.adapters.base import Batch
from shoprec.config import load_settings
from shoprec.erasure import request_erasure
from shoprec.features import store as feast_store
from shoprec.features import tables
from shoprec.features.online import FeatureStoreUnavailable, InvalidFeatureRequest, ItemState, OnlineFeatures
from shoprec.features.sequence import recent_items
from simulator.shop import generate
from training.data import feature_store_events

REDIS_DB = 7
REDIS = f"127.0.0.1:6379,db={REDIS_DB}"
PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/shoprec_test_features"
SEQ_LEN = 4
ITEM_REFS = [f"item_stats:{c}" for c in ("price", "available", "popularity_1d", "popularity_7d", "popularity_30d")]
NO_EVENTS = pd.DataFrame(columns=["user_id", "item_id", "event_type", "timestamp"])


def synthetic_shop() -> tuple[pd.DataFrame, pd.DataFrame]:
    start = pd.Timestamp("2024-03-01", tz="UTC")
    rows = []
    for u in range(5):
        for k in range(3 + 2 * u):  # users with 3..11 events: some longer than SEQ_LEN
            rows.append(
                {
                    "user_id": f"u{u}",
                    "item_id": f"i{(u + 3 * k) % 7}",
                    "event_type": ("view", "add_to_cart", "purchase")[k % 3],
                    "timestamp": start + pd.Timedelta(hours=13 * k + u),
                }
            )
    items = pd.DataFrame(
        {
            "item_id": [f"i{j}" for j in range(8)],  # i7 is never interacted with
            "title": [f"item {j}" for j in range(8)],
            "category": ["makeup", "hair", "body", "makeup", "hair", "nails", "body", "makeup"],
            "price": [float(j) + 0.5 for j in range(8)],
            "available": [j != 2 for j in range(8)],
        }
    )
    return pd.DataFrame(rows), items


def backend_settings(backend: str, home, sequence_length: int = SEQ_LEN):
    overrides = {"home": home, "features": {"sequence_length": sequence_length}}
    if backend == "redis":
        overrides |= {
            "online_store": {"type": "redis", "redis_connection_string": REDIS},
            "registry": {"type": "sql", "sql_url": PG_URL},
        }
    return load_settings(**overrides)


def _drop_test_database() -> None:
    engine = create_engine(PG_URL.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text('DROP DATABASE IF EXISTS "shoprec_test_features" WITH (FORCE)'))
    engine.dispose()


def _flush_redis() -> None:
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def shop(request, tmp_path_factory):
    """(settings, events, items) of a built, applied and materialized feature store."""
    backend = request.param
    if backend == "redis":
        _flush_redis()
        _drop_test_database()
    settings = backend_settings(backend, tmp_path_factory.mktemp(f"feast-{backend}"))
    events, items = synthetic_shop()
    lake.write_batch(settings.lake_dir, Batch.from_frames(events, items))
    tables.build_tables(settings)
    feast_store.apply(settings)
    feast_store.materialize(settings, end=pd.Timestamp("2024-04-01", tz="UTC"))
    yield settings, lake.read_events(settings.lake_dir), items
    if backend == "redis":
        _flush_redis()
        _drop_test_database()


@pytest.fixture(scope="module")
def online(shop):
    return OnlineFeatures(shop[0])


def as_list(value) -> list:
    """A list feature from a training set: missing values (None/NaN) are the empty sequence."""
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else []


def online_snapshot(online: OnlineFeatures, users: list[str], items: list[str]) -> tuple[dict, dict]:
    return online.user_sequences(users), item_features(online, items)


def item_features(online: OnlineFeatures, item_ids: list[str]) -> dict[str, dict]:
    return online.features(ITEM_REFS, "item_id", item_ids)


def test_apply_registers_the_repo_and_drops_what_it_no_longer_defines(shop):
    settings = shop[0]
    fs = feast_store.feature_store(settings)
    assert sorted(v.name for v in fs.list_feature_views()) == sorted(tables.TABLES)
    assert fs.list_feature_services() == []
    # a registry from before the unread views were dropped
    old_view = FeatureView(name="user_stats", entities=[fs.get_entity("user")], schema=[Field(name="n_events", dtype=Int64)],
                           source=fs.get_feature_view("user_recent_items").batch_source)
    fs.apply([old_view, FeatureService(name="recommender_v1", features=[old_view])])
    report = feast_store.apply(settings)
    assert report.deleted == ["recommender_v1", "user_stats"]
    assert report.feature_views == sorted(tables.TABLES) and report.feature_services == []
    assert report.to_dict()["deleted"] == report.deleted  # the step's XCom keeps the report's keys
    assert feast_store.apply(settings).deleted == []


def test_online_read_equals_offline_value(shop, online):
    settings, events, items = shop
    users = sorted(events["user_id"].unique())
    as_of = pd.Timestamp("2024-03-31", tz="UTC")
    offline = feast_store.training_set(
        pd.DataFrame({"user_id": users, "event_timestamp": as_of}), settings,
        ["user_recent_items:item_ids", "user_recent_items:event_types"],
    ).set_index("user_id")
    sequences = online.user_sequences(users)
    expected = recent_items(events, SEQ_LEN).set_index("user_id")
    for u in users:
        assert sequences[u]["item_ids"] == list(offline.loc[u, "item_ids"]) == expected.loc[u, "item_ids"]
        assert sequences[u]["event_types"] == list(offline.loc[u, "event_types"])
    item_ids = sorted(items["item_id"])
    offline_items = feast_store.training_set(
        pd.DataFrame({"item_id": item_ids, "event_timestamp": as_of}), settings,
        ["item_stats:popularity_30d", "item_stats:price"],
    ).set_index("item_id")
    online_items = item_features(online, item_ids)
    assert {i: online_items[i]["popularity_30d"] for i in item_ids} == offline_items["popularity_30d"].to_dict()
    assert {i: online_items[i]["price"] for i in item_ids} == offline_items["price"].to_dict()


def test_item_features_online(online):
    feats = item_features(online, ["i0", "i2", "i7", "nope"])
    assert feats["i0"]["price"] == 0.5 and feats["i0"]["available"] is True
    assert feats["i2"]["available"] is False
    assert feats["i7"]["popularity_30d"] == 0  # in the catalog, never interacted with
    assert feats["nope"]["price"] is None
    assert online.item_states(["i0", "i2", "nope"]) == {
        "i0": ItemState(True, 0.5), "i2": ItemState(False, 2.5), "nope": ItemState(None, None)}


def _catalog_change(settings, items: pd.DataFrame, **changes) -> None:
    """A new catalog snapshot in the lake, then the features pipeline's build and materialization."""
    changed = items.copy()
    for item, (column, value) in changes.items():
        changed.loc[changed["item_id"] == item, column] = value
    lake.write_batch(settings.lake_dir, Batch.from_frames(NO_EVENTS, changed))
    tables.build_tables(settings)


def test_a_catalog_change_reaches_the_online_store_at_the_next_materialization(shop, online):
    """An item's new availability or price arrives without a new event for it (Redis keeps
    only newer rows, so materializing the item's old rows again would not carry it)."""
    settings, _, items = shop
    end = pd.Timestamp("2024-04-01", tz="UTC")
    try:
        _catalog_change(settings, items, i0=("available", False), i3=("price", 99.0))
        report = feast_store.materialize(settings, end=end)
        assert report.item_state_pushed == 2
        assert online.item_states(["i0", "i3", "i1"]) == {
            "i0": ItemState(False, 0.5), "i3": ItemState(True, 99.0), "i1": ItemState(True, 1.5)}
        assert feast_store.materialize(settings, end=end).item_state_pushed == 0  # a re-run writes nothing
        _catalog_change(settings, items, i0=("available", True))  # back in stock
        assert feast_store.materialize(settings, end=end).item_state_pushed == 2
        assert online.item_states(["i0", "i3"]) == {"i0": ItemState(True, 0.5), "i3": ItemState(True, 3.5)}
    finally:
        lake.write_batch(settings.lake_dir, Batch.from_frames(NO_EVENTS, items))
        tables.build_tables(settings)
        feast_store.materialize(settings, end=end)


def test_an_ingested_catalog_state_is_online_at_once_and_materialize_keeps_it(shop, online):
    """The ingest fast path: the batch's state online without a build or a materialization;
    the next build and materialize find it already there and leave it."""
    settings, _, items = shop
    end = pd.Timestamp("2024-04-01", tz="UTC")
    changed = items.copy()
    changed.loc[changed["item_id"] == "i1", "available"] = False
    changed.loc[changed["item_id"] == "i4", "price"] = 42.0
    new_item = pd.DataFrame({"item_id": ["i-new"], "title": ["new"], "category": ["hair"], "price": [7.0], "available": [True]})
    try:
        lake.write_batch(settings.lake_dir, Batch.from_frames(NO_EVENTS, changed))
        assert feast_store.push_catalog_state(settings, pd.concat([changed, new_item], ignore_index=True)) == 3
        expected = {"i1": ItemState(False, 1.5), "i4": ItemState(True, 42.0), "i-new": ItemState(True, 7.0),
                    "i0": ItemState(True, 0.5)}
        assert online.item_states(list(expected)) == expected
        assert feast_store.push_catalog_state(settings, changed) == 0  # the same state again: nothing written
        lake.write_batch(settings.lake_dir, Batch.from_frames(NO_EVENTS, new_item))
        tables.build_tables(settings)
        assert feast_store.materialize(settings, start=pd.Timestamp("2024-03-01", tz="UTC"), end=end).item_state_pushed == 0
        assert online.item_states(list(expected)) == expected  # a full re-materialization does not roll it back
    finally:
        lake.write_batch(settings.lake_dir, Batch.from_frames(NO_EVENTS, items))
        tables.build_tables(settings)
        feast_store.materialize(settings, end=end)


def test_no_catalog_push_before_the_feature_store_is_set_up(tmp_path):
    settings = backend_settings("sqlite", tmp_path)
    _, items = synthetic_shop()
    assert feast_store.push_catalog_state(settings, items) is None  # the next build + materialize bring it online


def test_materialize_twice_gives_the_same_state(shop, online):
    settings, events, _ = shop
    users, items = sorted(events["user_id"].unique()), [f"i{j}" for j in range(8)]
    before = online_snapshot(online, users, items)
    window = dict(start=pd.Timestamp("2024-03-01", tz="UTC"), end=pd.Timestamp("2024-04-01", tz="UTC"))
    feast_store.materialize(settings, **window)
    feast_store.materialize(settings, **window)
    assert online_snapshot(online, users, items) == before
    again = feast_store.materialize(settings, end=window["end"])  # incremental: nothing new
    assert all(v.chunks == 0 for v in again.views.values())
    assert again.to_dict()["views"]["item_stats"]["chunks"] == 0


def test_leakage_features_at_t_never_include_later_events(shop):
    settings, events, _ = shop
    probes = events.assign(event_timestamp=events["timestamp"] - pd.Timedelta(seconds=1))[["user_id", "event_timestamp"]]
    probes = pd.concat([probes, events[["user_id"]].assign(event_timestamp=events["timestamp"])], ignore_index=True)
    got = feast_store.training_set(probes, settings, ["user_recent_items:item_ids", "user_recent_items:timestamps"])
    assert set(zip(got["user_id"], got["event_timestamp"])) == set(zip(probes["user_id"], probes["event_timestamp"]))
    for row in got.itertuples():
        stamps = [pd.Timestamp(t).tz_localize(None).tz_localize("UTC") for t in as_list(row.timestamps)]
        assert all(t <= row.event_timestamp for t in stamps)
        expected = recent_items(events[events["user_id"] == row.user_id], SEQ_LEN, as_of=row.event_timestamp)
        assert as_list(row.item_ids) == (expected["item_ids"].iloc[0] if len(expected) else [])


def test_training_events_from_the_feature_store_are_the_sequences_as_of_the_cutoff(shop):
    settings, events, _ = shop
    cutoff = events["timestamp"].quantile(0.6)
    users = sorted(events["user_id"].unique())
    got = feature_store_events(settings, users, cutoff)
    assert got["timestamp"].max() <= cutoff and got["timestamp"].dt.tz is not None
    expected = recent_items(events[events["timestamp"] <= cutoff], SEQ_LEN)
    got_sequences = recent_items(got, None).set_index("user_id")
    for row in expected.itertuples():
        assert got_sequences.loc[row.user_id, "item_ids"] == row.item_ids
        assert got_sequences.loc[row.user_id, "event_types"] == row.event_types
    assert set(got_sequences.index) == set(expected["user_id"])  # users with nothing before the cutoff: absent
    with pytest.raises(ValueError, match="no user sequence"):
        feature_store_events(settings, users, pd.Timestamp("2000-01-01", tz="UTC"))


def test_push_then_read_sees_the_new_event(shop, online):
    settings, events, _ = shop
    now = pd.Timestamp.now(tz="UTC").floor("s")
    online.push_events(pd.DataFrame({"user_id": ["u0"], "item_id": ["i5"], "event_type": ["view"], "timestamp": [now]}))
    seq = online.user_sequences(["u0"])["u0"]
    assert seq["item_ids"][-1] == "i5" and seq["timestamps"][-1] == now and len(seq["item_ids"]) <= SEQ_LEN
    logged = event_log.read_events(tables.event_log_dir(settings))
    assert ((logged["user_id"] == "u0") & (logged["item_id"] == "i5")).any()


def test_batch_and_push_paths_agree(shop, online):
    """A new user's events pushed one by one give what recent_items gives on the same events."""
    _, events, _ = shop
    mine = events[events["user_id"] == "u4"].assign(user_id="fresh-user")
    for _, event in mine.iterrows():
        online.push_events(event.to_frame().T)
    expected = recent_items(mine, SEQ_LEN).iloc[0]
    seq = online.user_sequences(["fresh-user"])["fresh-user"]
    assert seq["item_ids"] == expected["item_ids"] and seq["event_types"] == expected["event_types"]
    snapshots = tables.sequence_snapshots(mine, SEQ_LEN)
    assert snapshots.iloc[-1]["item_ids"] == expected["item_ids"]


def test_concurrent_pushes_for_one_user_lose_nothing(online):
    base = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(minutes=1)
    pushes = [
        pd.DataFrame({"user_id": ["busy"], "item_id": [f"c{k}"], "event_type": ["view"], "timestamp": [base + pd.Timedelta(seconds=k)]})
        for k in range(SEQ_LEN)
    ]
    threads = [threading.Thread(target=online.push_events, args=(p,)) for p in pushes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert online.recent_items(["busy"])["busy"] == [f"c{k}" for k in range(SEQ_LEN)]


BAD_EVENTS = {
    "missing column": pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": ["2024-03-05"]}),
    "extra column": pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"], "timestamp": ["2024-03-05"], "x": [1]}),
    "unparseable time": pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"], "timestamp": ["yesterday-ish"]}),
    "unknown type": pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "event_type": ["teleport"], "timestamp": ["2024-03-05"]}),
    "future": pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"], "timestamp": ["2999-01-01"]}),
    "absurd user id": pd.DataFrame({"user_id": ["x" * 10_000], "item_id": ["i1"], "event_type": ["view"], "timestamp": ["2024-03-05"]}),
    "control chars": pd.DataFrame({"user_id": ["u1\x00"], "item_id": ["i1"], "event_type": ["view"], "timestamp": ["2024-03-05"]}),
    "quantity beyond Int64": pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"], "timestamp": ["2024-03-05"],
                                           "quantity": [2**63]}),
    "not a frame": [{"user_id": "u1"}],
}


@pytest.mark.parametrize("case", sorted(BAD_EVENTS))
def test_malformed_events_are_rejected_and_change_nothing(shop, online, case):
    settings = shop[0]
    before = online.user_sequences(["u1"])
    log_before = len(event_log.read_events(tables.event_log_dir(settings)))
    with pytest.raises(InvalidFeatureRequest):
        online.push_events(BAD_EVENTS[case])
    assert online.user_sequences(["u1"]) == before
    assert len(event_log.read_events(tables.event_log_dir(settings))) == log_before


def test_unknown_features_and_absurd_ids_give_clear_errors(online):
    with pytest.raises(InvalidFeatureRequest, match="unknown feature.*user_recent_items:nope"):
        online.features(["user_recent_items:nope"], "user_id", ["u1"])
    with pytest.raises(InvalidFeatureRequest, match="invalid id"):
        online.recent_items(["u1", "y" * 1000])
    with pytest.raises(InvalidFeatureRequest, match="invalid id"):
        online.item_states([""])
    assert online.recent_items(["never-seen"]) == {"never-seen": []}


def test_forget_user_removes_the_online_row_only(shop, online):
    """The online part of an erasure; the offline files are shoprec.erasure's (tests/test_erasure.py)."""
    settings = shop[0]
    online.push_events(pd.DataFrame({"user_id": ["leaver"], "item_id": ["i1"], "event_type": ["view"], "timestamp": [pd.Timestamp.now(tz="UTC")]}))
    online.push_events(pd.DataFrame({"user_id": ["u3"], "item_id": ["i1"], "event_type": ["view"], "timestamp": [pd.Timestamp.now(tz="UTC")]}))
    assert online.recent_items(["leaver"])["leaver"] == ["i1"]
    assert online.forget_user("leaver") >= 1  # SQLite stores a row per feature
    assert online.recent_items(["leaver"])["leaver"] == []
    assert online.forget_user("leaver") == 0
    assert online.recent_items(["u3"])["u3"][-1] == "i1"  # others untouched


def test_events_of_an_erased_user_are_never_pushed(shop, online):
    settings = shop[0]
    request_erasure(settings, "gone-user")
    pushed = online.push_events(pd.DataFrame({"user_id": ["gone-user", "u4"], "item_id": ["i1", "i1"],
                                              "event_type": ["view", "view"], "timestamp": [pd.Timestamp.now(tz="UTC")] * 2}))
    assert len(pushed.erased) == 1 and len(pushed.written) == 1
    assert online.recent_items(["gone-user"])["gone-user"] == []
    assert "gone-user" not in set(event_log.read_events(tables.event_log_dir(settings))["user_id"])


@pytest.mark.redis
def test_unreachable_redis_raises_feature_store_unavailable(shop):
    settings = shop[0]
    if settings.online_store.type != "redis":
        pytest.skip("Redis-only")
    down = settings.model_copy(update={"online_store": settings.online_store.model_copy(update={"redis_connection_string": "127.0.0.1:1,db=7"})})
    with pytest.raises(FeatureStoreUnavailable):
        OnlineFeatures(down).recent_items(["u1"])


def _push_from_another_process(home: str, backend: str, offset: int, n: int, start) -> None:
    online = OnlineFeatures(backend_settings(backend, home, sequence_length=64))
    online.recent_items(["race"])  # connect and load the registry before the race starts
    start.wait(60)
    base = pd.Timestamp("2024-03-20", tz="UTC")
    for k in range(offset, offset + 2 * n, 2):  # the two processes interleave in time
        online.push_events(pd.DataFrame({"user_id": ["race"], "item_id": [f"r{k}"], "event_type": ["view"],
                                         "timestamp": [base + pd.Timedelta(seconds=k)]}))


def test_pushes_from_two_worker_processes_for_one_user_lose_nothing(shop, online):
    """The service's worker processes share the online store: the per-user lock must hold across them."""
    settings = shop[0]
    backend = "redis" if settings.online_store.type == "redis" else "sqlite"
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(2)
    workers = [spawn.Process(target=_push_from_another_process, args=(str(settings.home), backend, offset, 12, start))
               for offset in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert online.recent_items(["race"])["race"] == [f"r{k}" for k in range(24)]


# --- bulk materialization ------------------------------------------------------------------
BULK_REDIS_DB = 6  # not the `shop` fixture's db: both module fixtures can be alive at once
BULK_SEQ_LEN = 6
USER_REFS = [f"user_recent_items:{c}" for c in ("item_ids", "event_types", "timestamps")]
ITEM_STAT_REFS = [f"item_stats:{c}" for c in ("popularity_1d", "popularity_7d", "popularity_30d", "add_to_cart_rate",
                                                "purchase_rate", "price", "available")]


def _bulk_settings(backend: str, home):
    overrides = {"home": home, "features": {"sequence_length": BULK_SEQ_LEN}}
    if backend == "redis":  # a file registry: this fixture must not share the `shop` fixture's PostgreSQL database
        overrides["online_store"] = {"type": "redis", "redis_connection_string": f"127.0.0.1:6379,db={BULK_REDIS_DB}"}
    return load_settings(**overrides)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def bulk_shop(request, tmp_path_factory):
    """(settings, report) of a generated shop (hundreds of users, ties, long histories) built,
    applied and materialized in full with the bulk path."""
    if request.param == "redis":
        redis.Redis(host="127.0.0.1", port=6379, db=BULK_REDIS_DB).flushdb()
    settings = _bulk_settings(request.param, tmp_path_factory.mktemp(f"bulk-{request.param}"))
    batch = generate(6_000, seed=3, days=10)
    lake.write_batch(settings.lake_dir, batch)
    tables.build_tables(settings, encode_texts=False)
    feast_store.apply(settings)
    yield settings, feast_store.materialize(settings)
    if request.param == "redis":
        redis.Redis(host="127.0.0.1", port=6379, db=BULK_REDIS_DB).flushdb()


def _online_users(settings, users: list[str]) -> pd.DataFrame:
    """Every user's online row, read through Feast's get_online_features."""
    fs = feast_store.feature_store(settings)
    parts = [pd.DataFrame(fs.get_online_features(features=USER_REFS, entity_rows=[{"user_id": u} for u in users[k:k + 500]]).to_dict())
             for k in range(0, len(users), 500)]
    return pd.concat(parts, ignore_index=True).set_index("user_id")


def assert_online_users_equal_recent_items(settings) -> int:
    events = tables.all_events(settings)
    expected = recent_items(events, BULK_SEQ_LEN).set_index("user_id")
    online = _online_users(settings, sorted(expected.index))
    for user, row in expected.iterrows():
        got = online.loc[user]
        assert got["item_ids"] == row["item_ids"], user
        assert got["event_types"] == row["event_types"], user
        # Array(UnixTimestamp) is stored in whole seconds
        assert [pd.Timestamp(t).tz_convert("UTC") if pd.Timestamp(t).tzinfo else pd.Timestamp(t, tz="UTC") for t in got["timestamps"]] == [
            t.floor("s") for t in row["timestamps"]], user
    return len(expected)


def test_bulk_materialization_puts_every_users_recent_items_online(bulk_shop):
    settings, report = bulk_shop
    users = assert_online_users_equal_recent_items(settings)
    assert users > 200
    view = report.views["user_recent_items"]
    assert view.entities == view.written == users  # each user's newest row, once
    assert view.rows_read == len(pd.read_parquet(tables.table_path(settings, "user_recent_items")))


def test_bulk_materialization_puts_every_items_newest_stats_online(bulk_shop):
    settings, report = bulk_shop
    offline = pd.read_parquet(tables.table_path(settings, "item_stats"))
    newest = offline.sort_values(["item_id", "event_timestamp"], kind="stable").drop_duplicates("item_id", keep="last")
    fs = feast_store.feature_store(settings)
    online = pd.DataFrame(fs.get_online_features(features=ITEM_STAT_REFS,
                                                 entity_rows=[{"item_id": i} for i in newest["item_id"]]).to_dict())
    columns = [r.split(":")[1] for r in ITEM_STAT_REFS]
    pd.testing.assert_frame_equal(online[["item_id", *columns]].reset_index(drop=True),
                                  newest[["item_id", *columns]].reset_index(drop=True), check_dtype=False)
    assert report.views["item_stats"].entities == len(newest)


def test_incremental_materialization_writes_the_changed_users_only(bulk_shop):
    settings, _ = bulk_shop
    events = tables.all_events(settings)
    changed = sorted(events["user_id"].unique())[::7][:40]
    at = events["timestamp"].max() + pd.Timedelta(hours=1)
    new = pd.DataFrame({"user_id": [*changed, "brand-new-user"], "item_id": events["item_id"].iloc[0],
                        "event_type": "view", "timestamp": [at + pd.Timedelta(seconds=k) for k in range(len(changed) + 1)]})
    lake.write_batch(settings.lake_dir, Batch.from_frames(new, None, source="hourly"))
    tables.build_tables(settings, encode_texts=False)
    report = feast_store.materialize(settings, since=new["timestamp"].min())
    assert report.views["user_recent_items"].entities == len(changed) + 1
    assert report.views["user_recent_items"].rows_read == len(changed) + 1
    assert report.views["item_stats"].entities == 1  # the one item of the new events
    assert_online_users_equal_recent_items(settings)
    again = feast_store.materialize(settings)  # nothing new since
    assert again.views["user_recent_items"].entities == 0 and again.views["item_stats"].entities == 0


def test_the_bulk_sqlite_writer_stores_what_feasts_writer_stores(bulk_shop, tmp_path):
    import sqlite3

    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.utils import _convert_arrow_to_proto

    settings, _ = bulk_shop
    if settings.online_store.type != "sqlite":
        pytest.skip("SQLite-only")
    fs = feast_store.feature_store(settings)
    other = _bulk_settings("sqlite", tmp_path)
    feast_store.apply(other)
    feasts = feast_store.feature_store(other)
    dumps = []
    for name in tables.TABLES:
        view = fs.get_feature_view(name)
        key = view.entity_columns[0]
        rows = feast_store.latest_rows(tables.table_path(settings, name), key.name).rows
        data = _convert_arrow_to_proto(rows, view, {key.name: key.dtype.to_value_type()})  # Feast's conversion, Feast's writer
        SqliteOnlineStore().online_write_batch(feasts.config, view, data, None)
    for config in (fs.config, feasts.config):
        with sqlite3.connect(config.online_store.path) as conn:
            dumps.append({name: conn.execute(f"SELECT entity_key, feature_name, value, value_text, event_ts, created_ts "
                                             f"FROM shoprec_{name} ORDER BY entity_key, feature_name").fetchall()
                          for name in tables.TABLES})
    # the bulk shop's own store (written by ShopRecSqliteOnlineStore) minus what the incremental test added
    for name in tables.TABLES:
        keys = {r[:2] for r in dumps[1][name]}
        assert [r for r in dumps[0][name] if r[:2] in keys] == dumps[1][name]
        assert len(dumps[1][name]) > 100


def test_latest_rows_in_a_window_are_each_entitys_newest(bulk_shop, tmp_path):
    """Windows ending inside the data take the comparison path; a table without the is_newest mark too."""
    settings, _ = bulk_shop
    for name, key in (("user_recent_items", "user_id"), ("item_stats", "item_id")):
        path = tables.table_path(settings, name)
        frame = pd.read_parquet(path)
        times = frame["event_timestamp"]
        unmarked = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(frame.drop(columns=["is_newest"], errors="ignore"), preserve_index=False),
                       unmarked, row_group_size=97)
        for start, end in [(None, None), (times.quantile(0.2), times.quantile(0.7)), (times.quantile(0.5), None)]:
            mask = np.ones(len(frame), bool)
            if start is not None:
                mask &= (times >= start).to_numpy()
            if end is not None:
                mask &= (times < end).to_numpy()
            inside = frame[mask]
            expected = inside.sort_values("event_timestamp", kind="stable").drop_duplicates(key, keep="last")
            expected = expected.sort_values(key).reset_index(drop=True)
            for source in (path, unmarked):
                got = feast_store.latest_rows(source, key, start, end)
                got_frame = got.rows.to_pandas().sort_values(key).reset_index(drop=True)
                assert got.rows_read == len(inside)
                assert got_frame[key].tolist() == expected[key].tolist()
                assert (got_frame["event_timestamp"] == expected["event_timestamp"]).all()


def test_the_sqlite_stores_entity_keys_are_feasts():
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from shoprec.features.value_bytes import entity_key_bytes

    keys = [EntityKey(join_keys=[name], entity_values=[Value(string_val=value)])
            for name in ("user_id", "item_id") for value in ("u1", "", "ünïcødé-ü", "x" * 300)]
    keys.append(EntityKey(join_keys=["n"], entity_values=[Value(int64_val=7)]))  # other kinds: Feast's own function
    keys.append(EntityKey(join_keys=["b", "a"], entity_values=[Value(string_val="1"), Value(string_val="2")]))
    assert [entity_key_bytes(k, 3) for k in keys] == [serialize_entity_key(k, entity_key_serialization_version=3) for k in keys]
