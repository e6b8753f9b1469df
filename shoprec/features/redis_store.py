"""Feast's Redis online store with a bulk ``online_write_batch``: the store ShopRec configures for Redis.

Everything is Feast's ``RedisOnlineStore`` (keys, hashes, reads, ``feast apply``, teardown)
except the write, which keeps its bytes (the same hash fields and values; a test compares them
with Feast's own writer) and its rule (a row replaces the stored one only if its time is newer,
to the nanosecond; ``skip_dedup`` writes regardless), so ``feast get-online-features``,
``store.get_online_features`` and the push path read what it wrote. Feast's write cost ~60 µs
of CPU per entity in Python (cProfile, 1 M-event shop): ``serialize_entity_key``, a
``Timestamp`` from a datetime, a murmur hash per feature value, and redis-py's pack and parse
per command, twice (a pipelined timestamp read, then one HSET per entity). This one takes the
rows already serialized (``value_bytes.EncodedRows``), hashes the field names once per batch
and sends ``WRITE_SCRIPT``: one call per ``ROWS_PER_SCRIPT`` rows that compares and writes on
the server, so the read and the write of a key are atomic together (no writer slips between).
Each HSET is atomic, so a reader sees an entity's old row or its new one, never a mix.
Cluster and Sentinel deployments keep Feast's own ``online_write_batch``; materialization's
bulk write (``write_encoded``) refuses them (ShopRec configures a single server).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Literal

from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType, _versioned_fv_name
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import NoScriptError

from shoprec.features.value_bytes import EncodedRows, from_feast

STORE_TYPE = "shoprec.features.redis_store.ShopRecRedisOnlineStore"
# Rows per script call: the server runs a call alone (~6 µs a row: 0.25 s of its CPU for 39,223
# users), so a reader waits at most ~3 ms behind one, while per-call costs stay small.
ROWS_PER_SCRIPT = 500

# KEYS: the rows' Redis keys. ARGV: the time field, the number of feature fields n, the key TTL
# (0: none), skip_dedup (1: write without comparing), the n feature fields, then per row its
# Timestamp bytes, their seconds and nanos, and its n values. Feast's rule: a row is written
# unless the stored time is set and as new or newer (rows of one key in a call: in order, so
# each compares with the one written before it). Timestamp bytes: 0x08 varint(seconds), then
# 0x10 varint(nanos) unless 0; seconds (after 1970: ``write_encoded`` refuses earlier times) and
# nanos each fit a Lua number exactly.
WRITE_SCRIPT = """
local function varint(s, i)
  local v, m = 0, 1
  while true do
    local b = string.byte(s, i)
    v, i = v + (b % 128) * m, i + 1
    if b < 128 then return v, i end
    m = m * 128
  end
end
local function stored_time(s)
  local seconds, nanos, i = 0, 0, 1
  while s and i <= #s do
    local tag = string.byte(s, i)
    local v
    v, i = varint(s, i + 1)
    if tag == 8 then seconds = v elseif tag == 16 then nanos = v end
  end
  return seconds, nanos
end
local ts_field, n, ttl, always = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local at, written = 5 + n, 0
for k = 1, #KEYS do
  local seconds, nanos = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local write = always
  if not write then
    local old_s, old_n = stored_time(redis.call('HGET', KEYS[k], ts_field))
    write = (old_s == 0 and old_n == 0) or seconds > old_s or (seconds == old_s and nanos > old_n)
  end
  if write then
    local hash = {ts_field, ARGV[at]}
    for f = 1, n do
      hash[2 * f + 1], hash[2 * f + 2] = ARGV[4 + f], ARGV[at + 2 + f]
    end
    redis.call('HSET', KEYS[k], unpack(hash))
    if ttl > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
    written = written + 1
  end
  at = at + 3 + n
end
return written
"""
WRITE_SCRIPT_SHA = hashlib.sha1(WRITE_SCRIPT.encode()).hexdigest()  # the digest Redis caches it under


class ShopRecRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    type: Literal["shoprec.features.redis_store.ShopRecRedisOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


class ShopRecRedisOnlineStore(RedisOnlineStore):
    def online_write_batch(self, config, table, data, progress: Callable[[int], Any] | None) -> None:
        if config.online_store.redis_type != RedisType.redis:
            return super().online_write_batch(config, table, data, progress)  # cluster, sentinel: Feast's own
        self.write_encoded(config, table, from_feast(data, config.entity_key_serialization_version))
        if progress:
            progress(len(data))

    def write_encoded(self, config, table, rows: EncodedRows) -> None:
        """Each row's hash (the event time and every feature value), where it is newer than what is stored."""
        store_config = config.online_store
        if store_config.redis_type != RedisType.redis:  # one script call spans many keys: one server only
            raise ValueError(f"the bulk write needs a single Redis server, not {store_config.redis_type}")
        view = _versioned_fv_name(table, config)
        fields = [_mmh3(f"{view}:{name}") for name in rows.values]
        columns = list(rows.values.values())
        project = config.project.encode()
        head = [f"_ts:{view}", len(fields), store_config.key_ttl_seconds or 0, int(store_config.skip_dedup), *fields]
        if rows.nanos and min(rows.nanos) < 0:
            raise ValueError("event times before 1970 cannot be compared by WRITE_SCRIPT (its numbers hold no 10-byte varint)")
        client = self._get_client(store_config)
        calls = lambda: (self._script_call(head, rows, first, project, columns)  # noqa: E731
                         for first in range(0, len(rows), ROWS_PER_SCRIPT))
        try:
            self._send_overlapped(client, calls())
        except NoScriptError:  # the server's script cache is empty (restarted, flushed): load it, write again
            client.script_load(WRITE_SCRIPT)
            self._send_overlapped(client, calls())  # rows written already are as new as these: skipped or equal

    @staticmethod
    def _script_call(head: list, rows: EncodedRows, first: int, project: bytes, columns: list) -> list:
        last = min(first + ROWS_PER_SCRIPT, len(rows))
        args = list(head)
        for i in range(first, last):
            seconds, nanos = divmod(rows.nanos[i], 1_000_000_000)
            args += (Timestamp(seconds=seconds, nanos=nanos).SerializeToString(), seconds, nanos)
            args += [column[i] for column in columns]
        return ["EVALSHA", WRITE_SCRIPT_SHA, last - first, *[key + project for key in rows.keys[first:last]], *args]

    @staticmethod
    def _send_overlapped(client, calls) -> None:
        """Each call sent before the previous one's reply is read, on one pooled connection: the server
        runs a call while this process builds the next (one after the other, the server's script time
        and ours added up: 1.3 s for 39,223 users, each about half). An error reply raises, after the
        connection is dropped (it may hold unread replies)."""
        pool = client.connection_pool
        connection = pool.get_connection()
        try:
            waiting = False
            for call in calls:
                connection.send_command(*call)
                if waiting:
                    connection.read_response()
                waiting = True
            if waiting:
                connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)
