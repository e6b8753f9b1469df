"""Feast's SQLite online store with a bulk ``online_write_batch``: the store ShopRec configures.

Everything is Feast's ``SqliteOnlineStore`` (tables, reads, ``feast apply``, teardown) except
the write: Feast's executes one upsert per feature value in Python, 397,669 ``execute`` calls
and 3.8 s of 8 s writing 59,223 entities (cProfile, 1 M-event shop). This one builds the
same rows (same columns, values, timestamps) and hands them to one ``executemany`` per batch,
in the same transaction, so ``feast get-online-features``, ``store.get_online_features`` and
the push path read exactly what it wrote (a test compares the tables row for row with
Feast's own writer).
"""

from __future__ import annotations

import itertools
import struct
from datetime import timezone
from typing import Any, Callable, Literal

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
    adapt_datetime_epoch,
)
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import to_naive_utc
from feast.value_type import ValueType

STORE_TYPE = "shoprec.features.sqlite_store.ShopRecSqliteOnlineStore"
# SQLite's default page cache is 2 MiB: a 1 GB store written in random key order went to disk for
# almost every row (materializing 59,223 entities: 5 s of CPU, 21 s of wall time).
CACHE_KIB = 256 * 1024


TEXT_KINDS = ("int64_val", "int32_val", "double_val", "float_val", "bool_val")  # Feast's value_text: str(value)
_KEY_PREFIXES: dict[str, bytes] = {}
STRING = int(ValueType.STRING.value)
READ_KEYS_PER_QUERY = 10_000  # SQLite caps the parameters of one statement (32,766)


def entity_key_bytes(entity_key, version: int) -> bytes:
    """``serialize_entity_key`` (a test checks they are equal), without its per-call Python for
    the one case ShopRec has, a single string join key: 27 % of the write's CPU time."""
    if version != 3 or len(entity_key.join_keys) != 1 or entity_key.entity_values[0].WhichOneof("val") != "string_val":
        return serialize_entity_key(entity_key, entity_key_serialization_version=version)
    name = entity_key.join_keys[0]
    prefix = _KEY_PREFIXES.get(name)
    if prefix is None:
        encoded = name.encode("utf8")
        prefix = _KEY_PREFIXES[name] = struct.pack("<III", 1, STRING, len(encoded)) + encoded
    value = entity_key.entity_values[0].string_val.encode("utf8")
    return prefix + struct.pack("<II", STRING, len(value)) + value


class ShopRecSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    type: Literal["shoprec.features.sqlite_store.ShopRecSqliteOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


class ShopRecSqliteOnlineStore(SqliteOnlineStore):
    def online_write_batch(self, config, table, data, progress: Callable[[int], Any] | None) -> None:
        if config.online_store.vector_enabled or getattr(config.online_store, "enable_openai_compatible_store", False):
            return super().online_write_batch(config, table, data, progress)  # columns ShopRec never uses
        conn = self._get_conn(config)
        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        upsert = (f"INSERT INTO {name} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
                  "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                  "value = excluded.value, value_text = excluded.value_text, "
                  "event_ts = excluded.event_ts, created_ts = excluded.created_ts;")
        version = config.entity_key_serialization_version
        rows = []
        for entity_key, values, timestamp, created_ts in data:
            key = entity_key_bytes(entity_key, version)
            # what sqlite3's registered datetime adapter stores, once per entity instead of per value
            stamp = adapt_datetime_epoch(to_naive_utc(timestamp))
            created = adapt_datetime_epoch(to_naive_utc(created_ts)) if created_ts is not None else None
            for feature_name, value in values.items():
                kind = value.WhichOneof("val")
                text = value.string_val if kind == "string_val" else str(getattr(value, kind)) if kind in TEXT_KINDS else None
                rows.append((key, feature_name, value.SerializeToString(), text, stamp, created))
        rows.sort(key=lambda row: (row[0], row[1]))  # in primary-key order: neighbouring B-tree pages
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        with conn:
            conn.executemany(upsert, rows)
        if progress:
            progress(len(data))

    def online_read(self, config, table, entity_keys, requested_features=None):
        """Feast's ``online_read`` (same query, same values), with the keys made by ``entity_key_bytes``:
        Feast's ``serialize_entity_key`` was 1.2 s of 1.5 s reading 39,223 users' rows."""
        version = config.entity_key_serialization_version
        keys = [entity_key_bytes(k, version) for k in entity_keys]
        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        found: dict[bytes, list] = {}
        cursor = self._get_conn(config).cursor()
        for first in range(0, len(keys), READ_KEYS_PER_QUERY):
            part = keys[first:first + READ_KEYS_PER_QUERY]
            cursor.execute(f"SELECT entity_key, feature_name, value, event_ts FROM {name} "
                           f"WHERE entity_key IN ({','.join('?' * len(part))}) ORDER BY entity_key", part)
            for key, group in itertools.groupby(cursor.fetchall(), key=lambda r: r[0]):
                found[key] = list(group)
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
