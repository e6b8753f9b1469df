"""What makes a real-time event count once: a small durable index next to the online store.

Three records, in the online store's own backend (Redis keys with a TTL in production, a
SQLite file beside the local online store), all keyed by hashes (no raw user id is a key):

- ``seen``: (user, event_id) pairs already written online and to the event log;
- ``pending``: per user, the events of a push between its start and its end, with the
  time stamp its online row gets. A push that died half way (a killed worker) leaves
  one; the user's next push (a retry) resolves it first: if the online row carries that
  stamp the write landed, and the push is completed (event log, ``seen``); otherwise it
  is dropped, and nothing of it was written (the log is written after the online row);
- ``keys``: per ``Idempotency-Key``, a fingerprint of its request, the server time stamped
  on its first attempt (events without a timestamp get it again on a retry, so they get
  the same derived event_id) and the first answer (a replay gets it again).

Everything is remembered for ``serving.idempotency_ttl_seconds``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shoprec.schema import conform_events

SQLITE_TIMEOUT_S = 10.0


class IdempotencyKeyReused(ValueError):
    """The Idempotency-Key came with a different request body before."""


@dataclass(frozen=True)
class KeyClaim:
    """An Idempotency-Key's first server time stamp, and its first answer once there is one."""

    stamp: pd.Timestamp
    answer: dict | None


@dataclass(frozen=True)
class Pending:
    """A push that started and did not finish: its events and the stamp of its online row."""

    stamp: pd.Timestamp
    events: pd.DataFrame


def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def events_json(events: pd.DataFrame) -> str:
    return events.to_json(orient="records", date_format="iso", date_unit="ns")


def _events_from_json(text: str) -> pd.DataFrame:
    """The events of a pending record (``events_json``, or a JSON list of such records)."""
    return conform_events(pd.DataFrame.from_records(json.loads(text)))


class EventIndex:
    """The interface; ``SqliteEventIndex`` and ``RedisEventIndex`` keep the records.

    The push path works on a whole group of users at once (``seen_pairs``, ``pending_of``,
    ``begin_many``, ``commit_many``, ``drop_pending_many``: one query or pipeline each); the
    one-user calls are those with one user."""

    def seen_pairs(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """The (user, event_id) pairs already written."""
        raise NotImplementedError

    def pending_of(self, user_ids: list[str]) -> dict[str, Pending]:
        raise NotImplementedError

    def begin_many(self, records: list[tuple[str, pd.Timestamp, str]]) -> None:
        """(user, stamp of the online row, the user's events as ``events_json``) per user, at once."""
        raise NotImplementedError

    def commit_many(self, event_ids: dict[str, list[str]]) -> None:
        """The events are online and in the log: remember their ids, drop the users' pending records."""
        raise NotImplementedError

    def drop_pending_many(self, user_ids: list[str]) -> None:
        raise NotImplementedError

    # the one-user calls
    def seen(self, user_id: str, event_ids: list[str]) -> set[str]:
        return {e for _, e in self.seen_pairs([(user_id, e) for e in event_ids])}

    def pending(self, user_id: str) -> Pending | None:
        return self.pending_of([user_id]).get(user_id)

    def begin(self, user_id: str, stamp: pd.Timestamp, events: pd.DataFrame) -> None:
        self.begin_many([(user_id, stamp, events_json(events))])

    def commit(self, user_id: str, event_ids: list[str]) -> None:
        self.commit_many({user_id: event_ids})

    def drop_pending(self, user_id: str) -> None:
        self.drop_pending_many([user_id])

    def claim_key(self, key: str, fingerprint: str, now: pd.Timestamp) -> KeyClaim:
        raise NotImplementedError

    def remember_answer(self, key: str, answer: dict) -> None:
        raise NotImplementedError


class SqliteEventIndex(EventIndex):
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS seen_expiry ON seen (expires_at)",
        "CREATE TABLE IF NOT EXISTS pending (user_key TEXT PRIMARY KEY, stamp TEXT NOT NULL, events TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, stamp TEXT NOT NULL,"
        " answer TEXT, expires_at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS keys_expiry ON keys (expires_at)",
    )

    def __init__(self, path: Path, ttl_seconds: int):
        self.path = Path(path)
        self.ttl = ttl_seconds
        self._local = threading.local()  # one connection per thread: a connection's transaction is its own

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=SQLITE_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an acknowledged id survives a power cut
            for statement in self.SCHEMA:
                conn.execute(statement)
            self._local.conn = conn
        return conn

    def claim_key(self, key: str, fingerprint: str, now: pd.Timestamp) -> KeyClaim:
        conn = self._conn()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM keys WHERE expires_at < ?", (time.time(),))
            conn.execute("INSERT OR IGNORE INTO keys (key, fingerprint, stamp, answer, expires_at) VALUES (?, ?, ?, NULL, ?)",
                         (digest(key), fingerprint, now.isoformat(), time.time() + self.ttl))
            stored_fingerprint, stamp, answer = conn.execute(
                "SELECT fingerprint, stamp, answer FROM keys WHERE key = ?", (digest(key),)).fetchone()
        if stored_fingerprint != fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used before with a different request")
        return KeyClaim(pd.Timestamp(stamp), None if answer is None else json.loads(answer))

    def remember_answer(self, key: str, answer: dict) -> None:
        conn = self._conn()
        conn.execute("UPDATE keys SET answer = ? WHERE key = ? AND answer IS NULL", (json.dumps(answer), digest(key)))

    def _select(self, sql: str, keys: list[str], *extra) -> list[tuple]:
        rows: list[tuple] = []
        conn = self._conn()
        for start in range(0, len(keys), 500):  # SQLite's bound on parameters
            chunk = keys[start:start + 500]
            rows += conn.execute(sql.format(marks=",".join("?" * len(chunk))), (*chunk, *extra)).fetchall()
        return rows

    def seen_pairs(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        keys = {digest(u, e): (u, e) for u, e in pairs}
        rows = self._select("SELECT key FROM seen WHERE key IN ({marks}) AND expires_at >= ?", list(keys), time.time())
        return {keys[k] for (k,) in rows}

    def pending_of(self, user_ids: list[str]) -> dict[str, Pending]:
        keys = {digest(u): u for u in user_ids}
        rows = self._select("SELECT user_key, stamp, events FROM pending WHERE user_key IN ({marks})", list(keys))
        return {keys[k]: Pending(pd.Timestamp(stamp), _events_from_json(events)) for k, stamp, events in rows}

    def begin_many(self, records: list[tuple[str, pd.Timestamp, str]]) -> None:
        conn = self._conn()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO pending (user_key, stamp, events) VALUES (?, ?, ?)",
                             [(digest(u), stamp.isoformat(), events) for u, stamp, events in records])

    def commit_many(self, event_ids: dict[str, list[str]]) -> None:
        conn = self._conn()
        expires = time.time() + self.ttl
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO seen (key, expires_at) VALUES (?, ?)",
                             [(digest(u, e), expires) for u, ids in event_ids.items() for e in ids])
            conn.executemany("DELETE FROM pending WHERE user_key = ?", [(digest(u),) for u in event_ids])
            conn.execute("DELETE FROM seen WHERE expires_at < ?", (time.time(),))

    def drop_pending_many(self, user_ids: list[str]) -> None:
        conn = self._conn()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("DELETE FROM pending WHERE user_key = ?", [(digest(u),) for u in user_ids])


# One command for a whole group's records: redis-py packs each pipelined command in Python,
# which cost 14 ms for the 830 commands of a 400-user group; a script is one command (and
# atomic, as the transaction it replaces).
SET_ALL = "for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1]) end return #KEYS"
COMMIT = """local seen = tonumber(ARGV[1])
for i = 1, seen do redis.call('SET', KEYS[i], '1', 'EX', ARGV[2]) end
for i = seen + 1, #KEYS do redis.call('DEL', KEYS[i]) end
return #KEYS"""


class RedisEventIndex(EventIndex):
    PREFIX = "shoprec:events"

    def __init__(self, client, ttl_seconds: int):
        self.client = client
        self.ttl = ttl_seconds
        self._set_all = client.register_script(SET_ALL)
        self._commit = client.register_script(COMMIT)

    def _key(self, kind: str, *parts: str) -> str:
        return f"{self.PREFIX}:{kind}:{digest(*parts)}"

    def claim_key(self, key: str, fingerprint: str, now: pd.Timestamp) -> KeyClaim:
        name = self._key("key", key)
        self.client.set(name, json.dumps({"fingerprint": fingerprint, "stamp": now.isoformat()}), nx=True, ex=self.ttl)
        claimed, answer = self.client.mget(name, self._key("answer", key))
        claimed = json.loads(claimed)
        if claimed["fingerprint"] != fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used before with a different request")
        return KeyClaim(pd.Timestamp(claimed["stamp"]), None if answer is None else json.loads(answer))

    def remember_answer(self, key: str, answer: dict) -> None:
        self.client.set(self._key("answer", key), json.dumps(answer), nx=True, ex=self.ttl)

    def seen_pairs(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        if not pairs:
            return set()
        found = self.client.mget([self._key("seen", u, e) for u, e in pairs])
        return {pair for pair, hit in zip(pairs, found) if hit is not None}

    def pending_of(self, user_ids: list[str]) -> dict[str, Pending]:
        if not user_ids:
            return {}
        out = {}
        for user, raw in zip(user_ids, self.client.mget([self._key("pending", u) for u in user_ids])):
            if raw is not None:
                record = json.loads(raw)
                out[user] = Pending(pd.Timestamp(record["stamp"]), _events_from_json(record["events"]))
        return out

    def begin_many(self, records: list[tuple[str, pd.Timestamp, str]]) -> None:
        if records:
            self._set_all(keys=[self._key("pending", u) for u, _, _ in records],
                          args=[self.ttl, *(json.dumps({"stamp": stamp.isoformat(), "events": events})
                                            for _, stamp, events in records)])

    def commit_many(self, event_ids: dict[str, list[str]]) -> None:
        seen = [self._key("seen", u, e) for u, ids in event_ids.items() for e in ids]
        if seen or event_ids:  # the ids and the end of the pending records, at once
            self._commit(keys=seen + [self._key("pending", u) for u in event_ids], args=[len(seen), self.ttl])

    def drop_pending_many(self, user_ids: list[str]) -> None:
        if user_ids:
            self.client.delete(*[self._key("pending", u) for u in user_ids])
