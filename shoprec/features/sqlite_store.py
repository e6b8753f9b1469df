"""Feast's SQLite online store with a bulk ``online_write_batch``: the store ShopRec configures.

Everything is Feast's ``SqliteOnlineStore`` (tables, reads, ``feast apply``, teardown) except
the write: Feast's executes one upsert per feature value in Python, 397,669 ``execute`` calls
and 3.8 s of 8 s writing 59,223 entities (cProfile, 1 M-event shop). This one takes the same
rows already serialized (``value_bytes.EncodedRows``: from Feast's tuples, or straight from a
table's columns during materialization) and hands them to one ``executemany`` per batch, in
primary-key order, in one transaction, so ``feast get-online-features``,
``store.get_online_features`` and the push path read exactly what it wrote (a test compares
the tables row for row with Feast's own writer). ``online_times`` reads only the rows' times.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Literal

import pandas as pd
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
    adapt_datetime_epoch,
)
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import to_naive_utc

from shoprec.features.value_bytes import EncodedRows, entity_key_bytes, from_feast, string_key_bytes

STORE_TYPE = "shoprec.features.sqlite_store.ShopRecSqliteOnlineStore"
# SQLite's default page cache is 2 MiB: a 1 GB store written in random key order went to disk for
# almost every row (materializing 59,223 entities: 5 s of CPU, 21 s of wall time).
CACHE_KIB = 256 * 1024


READ_KEYS_PER_QUERY = 10_000  # SQLite caps the parameters of one statement (32,766)


class ShopRecSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    type: Literal["shoprec.features.sqlite_store.ShopRecSqliteOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


class ShopRecSqliteOnlineStore(SqliteOnlineStore):
    def online_write_batch(self, config, table, data, progress: Callable[[int], Any] | None) -> None:
        if config.online_store.vector_enabled or getattr(config.online_store, "enable_openai_compatible_store", False):
            return super().online_write_batch(config, table, data, progress)  # columns ShopRec never uses
        self.write_encoded(config, table, from_feast(data, config.entity_key_serialization_version))
        if progress:
            progress(len(data))

    def write_encoded(self, config, table, rows: EncodedRows) -> None:
        """``rows`` upserted in one transaction (a crash leaves the batch all written or not at all)."""
        conn = self._get_conn(config)
        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        upsert = (f"INSERT INTO {name} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
                  "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                  "value = excluded.value, value_text = excluded.value_text, "
                  "event_ts = excluded.event_ts, created_ts = excluded.created_ts;")
        # what sqlite3's registered datetime adapter stores, once per entity instead of per value
        stamps = [adapt_datetime_epoch(t) for t in pd.to_datetime(rows.nanos).to_pydatetime()]  # naive UTC
        created = [adapt_datetime_epoch(to_naive_utc(t)) if t is not None else None for t in rows.created]
        order = sorted(range(len(rows)), key=rows.keys.__getitem__)  # primary-key order: neighbouring B-tree pages
        keys, stamps, created = ([column[i] for i in order] for column in (rows.keys, stamps, created))
        per_feature = [zip(keys, itertools.repeat(feature), [rows.values[feature][i] for i in order],
                           [rows.texts[feature][i] for i in order], stamps, created) for feature in sorted(rows.values)]
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        with conn:
            conn.executemany(upsert, itertools.chain.from_iterable(zip(*per_feature)))  # by (key, feature)

    def online_times(self, config, table, ids: list[str]) -> list[int | None]:
        """The event time (ns) of the row of each id (the view's one string join key) that has a value,
        as ``online_read`` returns it (None: no such row), without reading the values."""
        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        (join_key,) = [column.name for column in table.entity_columns]
        keys = string_key_bytes(join_key, ids)
        rows = _select_in(self._get_conn(config).cursor(), f"SELECT entity_key, MAX(event_ts) FROM {name} WHERE "
                          "length(value) > 0 AND entity_key IN ({keys}) GROUP BY entity_key", keys)
        # the stored seconds read back as online_read's converter does (local time, then taken as UTC)
        found = {key: pd.Timestamp(datetime.fromtimestamp(int(ts)), tz="UTC").value for key, ts in rows}
        return [found.get(key) for key in keys]

    def online_read(self, config, table, entity_keys, requested_features=None):
        """Feast's ``online_read`` (same query, same values), with the keys made by ``entity_key_bytes``:
        Feast's ``serialize_entity_key`` was 1.2 s of 1.5 s reading 39,223 users' rows."""
        version = config.entity_key_serialization_version
        keys = [entity_key_bytes(k, version) for k in entity_keys]
        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        rows = _select_in(self._get_conn(config).cursor(), f"SELECT entity_key, feature_name, value, event_ts FROM {name} "
                          "WHERE entity_key IN ({keys}) ORDER BY entity_key", keys)
        # a key's rows are together: each key is in one query, and the query orders by key
        found = {key: list(group) for key, group in itertools.groupby(rows, key=lambda r: r[0])}
        result = []
        for key in keys:
            values, stamp = {}, None
            for _, feature_name, blob, ts in found.get(key, []):
                value = ValueProto()
                value.ParseFromString(blob)
                values[feature_name] = value
                stamp = ts.astimezone(timezone.utc) if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
            result.append((stamp, values) if values else (None, None))
        return result


def _select_in(cursor, query: str, keys: list[bytes]) -> Iterator[tuple]:
    """The rows of ``query`` (its ``{keys}``: the ``IN (...)`` placeholders) for ``keys``,
    ``READ_KEYS_PER_QUERY`` keys per query (SQLite caps the parameters of one statement)."""
    for first in range(0, len(keys), READ_KEYS_PER_QUERY):
        part = keys[first:first + READ_KEYS_PER_QUERY]
        cursor.execute(query.format(keys=",".join("?" * len(part))), part)
        yield from cursor.fetchall()
