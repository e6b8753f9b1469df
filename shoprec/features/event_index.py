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


def _events_json(events: pd.DataFrame) -> str:
    return events.to_json(orient="records", date_format="iso", date_unit="ns")


def _events_from_json(text: str) -> pd.DataFrame:
    return conform_events(pd.DataFrame.from_records(json.loads(text)))


class EventIndex:
    """The interface; ``SqliteEventIndex`` and ``RedisEventIndex`` keep the records."""

    def claim_key(self, key: str, fingerprint: str, now: pd.Timestamp) -> KeyClaim:
        raise NotImplementedError

    def remember_answer(self, key: str, answer: dict) -> None:
        raise NotImplementedError

    def seen(self, user_id: str, event_ids: list[str]) -> set[str]:
        raise NotImplementedError

    def pending(self, user_id: str) -> Pending | None:
        raise NotImplementedError

    def begin(self, user_id: str, stamp: pd.Timestamp, events: pd.DataFrame) -> None:
        raise NotImplementedError

    def commit(self, user_id: str, event_ids: list[str]) -> None:
        """The events are online and in the log: remember their ids, drop the pending record."""
        raise NotImplementedError

    def drop_pending(self, user_id: str) -> None:
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

    def seen(self, user_id: str, event_ids: list[str]) -> set[str]:
        keys = {digest(user_id, e): e for e in event_ids}
        found: set[str] = set()
        conn = self._conn()
        items = list(keys)
        for start in range(0, len(items), 500):  # SQLite's bound on parameters
            chunk = items[start:start + 500]
            rows = conn.execute(f"SELECT key FROM seen WHERE key IN ({','.join('?' * len(chunk))}) AND expires_at >= ?",
                                (*chunk, time.time())).fetchall()
            found |= {keys[k] for (k,) in rows}
        return found

    def pending(self, user_id: str) -> Pending | None:
        row = self._conn().execute("SELECT stamp, events FROM pending WHERE user_key = ?", (digest(user_id),)).fetchone()
        return None if row is None else Pending(pd.Timestamp(row[0]), _events_from_json(row[1]))

    def begin(self, user_id: str, stamp: pd.Timestamp, events: pd.DataFrame) -> None:
        self._conn().execute("INSERT OR REPLACE INTO pending (user_key, stamp, events) VALUES (?, ?, ?)",
                             (digest(user_id), stamp.isoformat(), _events_json(events)))

    def commit(self, user_id: str, event_ids: list[str]) -> None:
        conn = self._conn()
        expires = time.time() + self.ttl
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO seen (key, expires_at) VALUES (?, ?)",
                             [(digest(user_id, e), expires) for e in event_ids])
            conn.execute("DELETE FROM pending WHERE user_key = ?", (digest(user_id),))
            conn.execute("DELETE FROM seen WHERE expires_at < ?", (time.time(),))

    def drop_pending(self, user_id: str) -> None:
        self._conn().execute("DELETE FROM pending WHERE user_key = ?", (digest(user_id),))


class RedisEventIndex(EventIndex):
    PREFIX = "shoprec:events"

    def __init__(self, client, ttl_seconds: int):
        self.client = client
        self.ttl = ttl_seconds

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

    def seen(self, user_id: str, event_ids: list[str]) -> set[str]:
        if not event_ids:
            return set()
        found = self.client.mget([self._key("seen", user_id, e) for e in event_ids])
        return {e for e, hit in zip(event_ids, found) if hit is not None}

    def pending(self, user_id: str) -> Pending | None:
        raw = self.client.get(self._key("pending", user_id))
        if raw is None:
            return None
        record = json.loads(raw)
        return Pending(pd.Timestamp(record["stamp"]), _events_from_json(record["events"]))

    def begin(self, user_id: str, stamp: pd.Timestamp, events: pd.DataFrame) -> None:
        record = {"stamp": stamp.isoformat(), "events": _events_json(events)}
        self.client.set(self._key("pending", user_id), json.dumps(record), ex=self.ttl)

    def commit(self, user_id: str, event_ids: list[str]) -> None:
        with self.client.pipeline(transaction=True) as pipe:  # ids and the end of the pending record, at once
            for e in event_ids:
                pipe.set(self._key("seen", user_id, e), 1, ex=self.ttl)
            pipe.delete(self._key("pending", user_id))
            pipe.execute()

    def drop_pending(self, user_id: str) -> None:
        self.client.delete(self._key("pending", user_id))
