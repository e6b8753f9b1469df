"""ShopRec's online-store writers store exactly what Feast's own writers store.

``value_bytes`` encodes table columns byte for byte as Feast's conversion and ``SerializeToString``
do; ``ShopRecRedisOnlineStore`` leaves the same hashes as Feast's ``RedisOnlineStore``, through
``online_write_batch`` (the push path) and ``write_encoded`` (materialization), newer-wins rule
included. (The SQLite writer: ``test_the_bulk_sqlite_writer_stores_what_feasts_writer_stores``.)
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.utils import _convert_arrow_to_proto
from feast.value_type import ValueType

from shoprec import lake
from shoprec.config import load_settings
from shoprec.features import store as feast_store
from shoprec.features import tables
from shoprec.features.redis_store import ShopRecRedisOnlineStore
from shoprec.features.value_bytes import encode_column, encode_rows
from simulator.shop import generate
from tests.service_harness import RedisServer

UTC = timezone.utc


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Settings of a small generated shop with its tables built (nothing online)."""
    settings = load_settings(home=tmp_path_factory.mktemp("writers"), features={"sequence_length": 7})
    lake.write_batch(settings.lake_dir, generate(3_000, seed=5, days=10))
    tables.build_tables(settings, encode_texts=False)
    feast_store.apply(settings)
    return settings


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("writers-redis")).start()
    yield server
    server.kill()


def _rows(settings, view) -> pa.Table:
    """The view's newest table rows, with an all-null row and an empty-list or NaN row added."""
    key = view.entity_columns[0].name
    rows = feast_store.latest_rows(tables.table_path(settings, view.name), key).rows
    rows = rows.select([key, *[f.name for f in view.features], "event_timestamp"])
    odd = {f.name: pa.nulls(2, rows.schema.field(f.name).type) for f in view.features}
    first = view.features[0]
    if pa.types.is_list(rows.schema.field(first.name).type):
        odd[first.name] = pa.array([None, []], rows.schema.field(first.name).type)
    else:
        odd["price"] = pa.array([None, float("nan")])
    extra = pa.table({key: ["odd-null", "odd-empty"], **odd, "event_timestamp": rows.column("event_timestamp").slice(0, 2)},
                     schema=rows.schema)
    return pa.concat_tables([rows, extra]).combine_chunks()  # Feast converts only the first record batch


def _feasts(view, rows: pa.Table) -> list[tuple]:
    return _convert_arrow_to_proto(rows, view, {view.entity_columns[0].name: view.entity_columns[0].dtype.to_value_type()})


def _features(view) -> list[tuple[str, ValueType]]:
    return [(f.name, f.dtype.to_value_type()) for f in view.features]


def test_encoded_rows_are_feasts_serialized_rows(built):
    fs = feast_store.feature_store(built)
    for name in tables.TABLES:
        view = fs.get_feature_view(name)
        rows = _rows(built, view)
        ours = encode_rows(_features(view), view.entity_columns[0].name, rows, feast_store._row_times(rows))
        feasts = _feasts(view, rows)
        assert len(ours) == len(feasts) > 50
        assert ours.keys == [serialize_entity_key(k, entity_key_serialization_version=3) for k, _, _, _ in feasts]
        for feature, _ in _features(view):
            assert ours.values[feature] == [v[feature].SerializeToString() for _, v, _, _ in feasts], (name, feature)
        assert ours.nanos == [int(t.replace(tzinfo=UTC).timestamp() * 1_000_000) * 1_000 for _, _, t, _ in feasts]


EDGE_COLUMNS = [
    (pa.array([["a", "ü" * 70, ""], [], None, ["x" * 300, "y"], ["b"]], pa.list_(pa.string())).slice(1), ValueType.STRING_LIST,
     lambda v: None if v is None else ValueProto(string_list_val={"val": v})),
    (pa.array([[datetime(1969, 12, 31, 23, 59, 58, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 1, 999_999, tzinfo=UTC)], [], None,
               [datetime(1970, 1, 1, tzinfo=UTC)]], pa.list_(pa.timestamp("us", tz="UTC"))), ValueType.UNIX_TIMESTAMP_LIST,
     lambda v: None if v is None else ValueProto(unix_timestamp_list_val={"val": [int(t.timestamp() // 1) for t in v]})),
    (pa.array([1, None, -3, 0, 2**62]), ValueType.INT64, lambda v: None if v is None else ValueProto(int64_val=v)),
    (pa.array([1.5, None, float("nan"), -0.0, 0.0, 1e300]), ValueType.DOUBLE,
     lambda v: None if v is None or v != v else ValueProto(double_val=v)),
    (pa.array([True, None, False]), ValueType.BOOL, lambda v: None if v is None else ValueProto(bool_val=v)),
    (pa.array(["a", None, ""]), ValueType.STRING, lambda v: None if v is None else ValueProto(string_val=v)),
]


@pytest.mark.parametrize("array,value_type,expected", EDGE_COLUMNS, ids=[str(c[1]).split(".")[1] for c in EDGE_COLUMNS])
def test_encoded_values_are_serialized_value_protos(array, value_type, expected):
    """Empty and null lists, long and non-ASCII strings (2-byte lengths), times before 1970 and in
    the same second, extreme numbers, NaN (no value, as Feast's conversion), a sliced array."""
    blobs, texts = encode_column(array, value_type)
    protos = [expected(v) for v in array.to_pylist()]
    assert blobs == [b"" if p is None else p.SerializeToString() for p in protos]
    kinds = [None if p is None else p.WhichOneof("val") for p in protos]
    assert texts == [str(getattr(p, k)) if k in ("int64_val", "double_val", "bool_val") else p.string_val if k == "string_val"
                     else None for p, k in zip(protos, kinds)]
    if value_type in (ValueType.INT64, ValueType.BOOL, ValueType.STRING):  # Feast's own conversion agrees
        assert blobs == [v.SerializeToString() for v in python_values_to_proto_values(array.to_numpy(zero_copy_only=False), value_type)]


def _redis_config(built, server, db: int):
    settings = built.model_copy(update={"online_store": built.online_store.model_copy(update={
        "type": "redis", "redis_connection_string": f"127.0.0.1:{server.port},db={db}"})})
    return feast_store.feature_store(settings).config


def _dump(server, db: int) -> dict:
    client = redis.Redis(port=server.port, db=db)
    return {key: client.hgetall(key) for key in client.scan_iter(count=1_000)}


def test_the_redis_writer_stores_what_feasts_writer_stores(built, redis_server):
    """Feast's writer into db 1; ours through online_write_batch into db 2 and through write_encoded
    into db 3 (several batches, as materialization calls it): the same keys, fields and bytes."""
    fs = feast_store.feature_store(built)
    feasts, ours = RedisOnlineStore(), ShopRecRedisOnlineStore()
    for name in tables.TABLES:
        view = fs.get_feature_view(name)
        rows = _rows(built, view)
        data = _feasts(view, rows)
        feasts.online_write_batch(_redis_config(built, redis_server, 1), view, data, None)
        ours.online_write_batch(_redis_config(built, redis_server, 2), view, data, None)
        stamps = feast_store._row_times(rows)
        for lo in range(0, rows.num_rows, 700):
            encoded = encode_rows(_features(view), view.entity_columns[0].name, rows.slice(lo, 700), stamps[lo:lo + 700])
            ShopRecRedisOnlineStore().write_encoded(_redis_config(built, redis_server, 3), view, encoded)
    reference = _dump(redis_server, 1)
    assert len(reference) > 100
    assert _dump(redis_server, 2) == reference
    assert _dump(redis_server, 3) == reference


def test_the_redis_writer_keeps_feasts_newer_wins_rule(built, redis_server):
    """Older or equally old rows never replace a stored row, newer ones do, and of one key's rows in
    a batch the newest wins whatever their order; Feast's writer and ours agree on every step."""
    view = feast_store.feature_store(built).get_feature_view("user_recent_items")
    rows = _rows(built, view).slice(0, 50)
    base = _feasts(view, rows)
    shifted = lambda data, seconds: [(k, v, t + timedelta(seconds=seconds), c) for k, v, t, c in data]  # noqa: E731
    other = [(k, base[(i + 1) % len(base)][1], t, c) for i, (k, _, t, c) in enumerate(base)]  # other values, same keys
    steps = [base, shifted(other, -5), other, shifted(other, 0.000_001),
             [*shifted(base, 10), *shifted(other, 20), *shifted(base, 15)]]
    for db, store in ((4, RedisOnlineStore()), (5, ShopRecRedisOnlineStore())):
        config = _redis_config(built, redis_server, db)
        for data in steps:
            store.online_write_batch(config, view, data, None)
    RedisOnlineStore().online_write_batch(_redis_config(built, redis_server, 7), view, shifted(other, 20), None)
    final = _dump(redis_server, 5)
    assert final == _dump(redis_server, 4) == _dump(redis_server, 7)  # the batch's newest rows, 20 s on
    assert len(final) == len(base)


def test_materialized_redis_rows_read_back_through_feast(built, redis_server):
    """A full materialization into the ShopRec Redis store reads back through get_online_features
    as the table's newest rows."""
    settings = built.model_copy(update={"online_store": built.online_store.model_copy(update={
        "type": "redis", "redis_connection_string": f"127.0.0.1:{redis_server.port},db=6"})})
    feast_store.apply(settings)
    report = feast_store.materialize(settings)
    newest = feast_store.latest_rows(tables.table_path(settings, "user_recent_items"), "user_id").rows.to_pandas()
    got = feast_store.feature_store(settings).get_online_features(
        features=["user_recent_items:item_ids", "user_recent_items:event_types"],
        entity_rows=[{"user_id": u} for u in newest["user_id"]]).to_dict()
    assert report.views["user_recent_items"].written == len(newest) > 100
    assert got["item_ids"] == [list(v) for v in newest["item_ids"]]
    assert got["event_types"] == [list(v) for v in newest["event_types"]]
    assert np.all(np.array([len(v) for v in got["item_ids"]]) <= 7)
