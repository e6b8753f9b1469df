"""The serving contract: what the service reads from and writes to the online store.

One ``OnlineFeatures`` holds one FeatureStore (one per thread on SQLite). Reads: a user's
recent events (``user_recent_items``) and an item's catalog state (``item_stats``:
availability and price, pushed when a catalog batch is ingested:
``shoprec.features.store.push_catalog_state``). A new event updates the user's sequence
through ``sequence.extend_sequence`` (the same rule as the batch table) and is written to
the feature views fed by the PushSource ``user_events_push``, then appended to the offline
event log, so the next ``features build`` includes it. A push is a read-modify-write of
the user's whole row, so updates are serialised per user: across threads, across the
service's worker processes (a file lock on the host), and across hosts when the online
store is Redis (a Redis lock); materialization takes the same locks (``store.push_lock``).
Each event is written once: ``shoprec.features.event_index`` remembers a user's event ids.
What a valid event or id is, is decided by the rules of ``shoprec.validation``, nowhere here.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field

import pandas as pd
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from shoprec import lake, ledger
from shoprec.config import Settings
from shoprec.features import tables
from shoprec.features.sequence import SEQUENCE_COLUMNS, extend_sequence
from shoprec.features.event_index import EventIndex, RedisEventIndex, SqliteEventIndex
from shoprec.features.store import (
    PushLockTimeout,
    feature_store,
    push_lock,
    push_lock_bucket,
)
from shoprec.schema import derived_event_ids
from shoprec.validation import InvalidEvents, ValidEvents, accept_events, check_id, id_rules

log = logging.getLogger(__name__)
PUSH_SOURCE = "user_events_push"
SEQUENCE_REFS = [f"user_recent_items:{c}" for c in SEQUENCE_COLUMNS]
EVENT_REFS = ["user_recent_items:item_ids", "user_recent_items:event_types"]  # what serving needs
ITEM_STATE_REFS = ["item_stats:available", "item_stats:price"]  # what serving filters and shows
USER_VIEWS = ("user_recent_items",)  # the views keyed by user: what erasure deletes
UNAVAILABLE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, sqlite3.OperationalError, OSError)


class FeatureStoreUnavailable(RuntimeError):
    """The online store cannot be reached; the service falls back (e.g. on trending items)."""


class OnlineStoreBusy(RuntimeError):
    """A user's push lock stayed taken (its holder died and the lock has not expired yet): retry."""


class InvalidFeatureRequest(ValueError):
    """Malformed events, unknown feature names or absurd ids; nothing was written."""


@dataclass(frozen=True)
class ItemState:
    """An item's catalog state in the online store (``item_stats``); None where the store has no value."""

    available: bool | None
    price: float | None


@dataclass(frozen=True)
class Pushed:
    """What a push wrote: the event ids written (online and to the event log) and those that
    were there already (written before, or repeated in the same push), in input order."""

    written: list[str]
    duplicates: list[str]
    erased: list[str] = field(default_factory=list)  # events of users the erasure ledger holds: never written


class OnlineFeatures:
    def __init__(self, settings: Settings):
        self.settings = settings
        # Redis clients are thread-safe. Feast's SQLite store keeps one connection per FeatureStore
        # and writes in transactions on it: request threads sharing one got "cannot start a
        # transaction within a transaction". So on SQLite each thread opens its own FeatureStore.
        self._shared_store = feature_store(settings) if settings.online_store.type == "redis" else None
        self._thread_stores = threading.local()
        ttl = settings.serving.idempotency_ttl_seconds
        self.index: EventIndex = (RedisEventIndex(self._redis(), ttl) if self._shared_store is not None
                                  else SqliteEventIndex(settings.feast_dir / "event_index.db", ttl))
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._erased_cache: tuple[tuple[int, int] | None, frozenset[str]] = (None, frozenset())
        self._known_refs: set[str] = set()
        self._push_views: list[str] | None = None

    @property
    def store(self):
        """This thread's FeatureStore (the one store on Redis)."""
        if self._shared_store is not None:
            return self._shared_store
        store = getattr(self._thread_stores, "store", None)
        if store is None:
            store = self._thread_stores.store = feature_store(self.settings)
        return store

    # --- reads ----------------------------------------------------------------
    def recent_items(self, user_ids: list[str]) -> dict[str, list[str]]:
        """Item ids of each user's sequence, oldest first; an unknown user gets []."""
        return {u: [i for i, _ in events] for u, events in self.recent_events(user_ids).items()}

    def recent_events(self, user_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
        """Each user's (item_id, event_type) pairs, oldest first: the serving read, without
        the timestamps (converting them costs a third of the read)."""
        rows = self.features(EVENT_REFS, "user_id", user_ids)
        out = {}
        for user, row in rows.items():
            items = row["item_ids"] or []
            types = row["event_types"] or ["view"] * len(items)
            out[user] = [(str(i), str(t)) for i, t in zip(items, types) if i is not None]
        return out

    def user_sequences(self, user_ids: list[str]) -> dict[str, dict]:
        """Each user's item_ids, event_types and timestamps (UTC), oldest first."""
        rows = self.features(SEQUENCE_REFS, "user_id", user_ids)
        return {
            u: {
                "item_ids": list(row["item_ids"] or []),
                "event_types": list(row["event_types"] or []),
                "timestamps": [pd.Timestamp(t).tz_convert("UTC") for t in row["timestamps"] or []],
            }
            for u, row in rows.items()
        }

    def item_states(self, item_ids: list[str]) -> dict[str, ItemState]:
        """Availability and price per item, in one read: the serving path's item lookup."""
        rows = self.features(ITEM_STATE_REFS, "item_id", item_ids)
        return {
            item: ItemState(None if row["available"] is None else bool(row["available"]),
                            None if row["price"] is None else float(row["price"]))
            for item, row in rows.items()
        }

    def features(self, refs: list[str], key: str, ids: list[str]) -> dict[str, dict]:
        """Any ``view:feature`` references for the ids of one entity key, by id."""
        self._check_refs(refs)
        ids = self._check_ids(ids)
        if not ids:
            return {}
        try:
            result = self.store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_dict()
        except UNAVAILABLE_ERRORS as exc:
            raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc
        names = [r.split(":", 1)[1] for r in refs]
        return {i: {n: result[n][k] for n in names} for k, i in enumerate(ids)}

    # --- writes ---------------------------------------------------------------
    def push_events(self, events: ValidEvents | pd.DataFrame) -> Pushed:
        """Append events to their users' sequences, online now and in the offline event log, once.

        ``ValidEvents`` (what the service's /events made with ``accept_events``) are trusted;
        a plain frame is checked with the same rules first. An event without ``event_id``
        gets a derived one (``schema.derived_event_ids``). An event whose id this user
        already has (``event_index``), or that the push repeats, is not written again.
        Per user, under the user's push lock: the pending record, the online row, the event
        log, the ids - so a push killed at any point is completed or dropped whole by the
        user's next push (a retry: ``_finish_pending``)."""
        events = (events if isinstance(events, ValidEvents) else self._accept(events)).frame
        if not len(events):
            return Pushed([], [])
        events = events.assign(event_id=events["event_id"].fillna(derived_event_ids(events)))
        erased = ledger.erased_mask(events["user_id"], self._erased_keys())
        erased_ids = events.loc[erased.to_numpy(), "event_id"].tolist()
        events = events[~erased.to_numpy()]
        if not len(events):
            return Pushed([], [], erased_ids)
        duplicate_rows: set[int] = set()
        for user_id, user_events in events.groupby("user_id", sort=True):
            with self._lock(user_id):
                if ledger.user_key(user_id) in self._erased_keys():  # erased while this push waited for the lock
                    erased_ids += user_events["event_id"].tolist()
                    events = events.drop(user_events.index)
                    continue
                self._finish_pending(user_id)
                fresh = user_events.drop_duplicates("event_id")
                fresh = fresh[~fresh["event_id"].isin(self._index(self.index.seen, user_id, fresh["event_id"].tolist()))]
                duplicate_rows |= set(user_events.index.difference(fresh.index))
                if len(fresh):
                    self._write_user_events(user_id, fresh)
        ids = events["event_id"].tolist()
        rows = events.index.tolist()
        return Pushed([e for r, e in zip(rows, ids) if r not in duplicate_rows],
                      [e for r, e in zip(rows, ids) if r in duplicate_rows], erased_ids)

    def _erased_keys(self) -> frozenset[str]:
        """The erasure ledger's keys, read again only when the ledger file changed (a stat per push)."""
        path = ledger.ledger_path(self.settings)
        # WAL mode: a new record lands in the -wal file before the main file changes
        stamp = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (path, path.with_name(path.name + "-wal")))
        if self._erased_cache[0] != stamp:
            self._erased_cache = (stamp, ledger.erased_keys(self.settings))
        return self._erased_cache[1]

    def _write_user_events(self, user_id: str, fresh: pd.DataFrame) -> None:
        stored = self.user_sequences([user_id])[user_id]
        updated = extend_sequence(stored, fresh, self.settings.features.sequence_length)
        # Redis keeps a row only if its timestamp is newer than the stored one: stamp the
        # push time, so a late (older) event still replaces the row it was merged into.
        stamp = max(pd.Timestamp.now(tz="UTC"), updated["timestamps"][-1])
        row = pd.DataFrame([{"user_id": user_id, **updated, "event_timestamp": stamp}])
        self._index(self.index.begin, user_id, stamp, fresh)
        try:
            for view in self._views_fed_by_push():
                self.store.write_to_online_store(view, row)
        except UNAVAILABLE_ERRORS as exc:
            raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc
        self._append_to_log(fresh)
        self._index(self.index.commit, user_id, fresh["event_id"].tolist())

    def _finish_pending(self, user_id: str) -> None:
        """A push of this user that died half way: completed if its online row landed (the user's
        sequence holds its events), else dropped (nothing of it was written: the log is written
        after the row; an event too old to stay in the sequence is written again, to the same effect)."""
        pending = self._index(self.index.pending, user_id)
        if pending is None:
            return
        if _holds(self.user_sequences([user_id])[user_id], pending.events):
            self._append_to_log(pending.events)
            self._index(self.index.commit, user_id, pending.events["event_id"].tolist())
        else:
            self._index(self.index.drop_pending, user_id)

    def _append_to_log(self, events: pd.DataFrame) -> None:
        try:
            lake.append_to_log(tables.event_log_dir(self.settings), events)
        except OSError as exc:
            raise FeatureStoreUnavailable(f"event log unwritable: {exc}") from exc

    @staticmethod
    def _index(call, *args):
        try:
            return call(*args)
        except UNAVAILABLE_ERRORS as exc:
            raise FeatureStoreUnavailable(f"event index unreachable: {exc}") from exc

    def warm_up(self) -> None:
        """Pay a push's first-call costs (registry listings) without writing anything: the first
        event after a start took 80 ms instead of 30."""
        self._check_refs(SEQUENCE_REFS + ITEM_STATE_REFS)
        self._views_fed_by_push()

    def _views_fed_by_push(self) -> list[str]:
        """The feature views whose stream source is ``user_events_push``: what ``store.push`` writes.

        ``store.push`` itself also lists every feature service from the registry on each
        call (for precomputed vectors ShopRec does not use): 10 of a push's 12 ms.
        """
        if self._push_views is None:
            views = self.store.list_feature_views(allow_cache=True)
            self._push_views = [v.name for v in views if v.stream_source is not None and v.stream_source.name == PUSH_SOURCE]
            if not self._push_views:
                raise InvalidFeatureRequest(f"no feature view is fed by the push source {PUSH_SOURCE!r}; run feast apply")
        return self._push_views

    def forget_user(self, user_id: str) -> int:
        """Right to erasure, the online part: the user's online row goes (how many stored rows went; 0: there was none).
        Everything offline is ``shoprec.erasure``'s job (outside this lock: a table rewrite
        could outlast it)."""
        (user_id,) = self._check_ids([user_id])
        with self._lock(user_id):
            self._index(self.index.drop_pending, user_id)  # a crashed push's record holds the events
            return self._delete_online(user_id)

    # --- helpers ----------------------------------------------------------------
    @contextmanager
    def _lock(self, user_id: str):
        with self._locks_guard:
            thread_lock = self._locks[user_id]
        with thread_lock, ExitStack() as held:
            try:  # the lock materialize takes too: a flock on the host (SQLite), a Redis lock (Redis)
                held.enter_context(push_lock(self.settings, self.store, push_lock_bucket(user_id)))
            except UNAVAILABLE_ERRORS as exc:
                raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc
            except PushLockTimeout as exc:
                raise OnlineStoreBusy(str(exc)) from exc
            yield

    def _redis(self):
        config = self.store.config
        return self.store._get_provider().online_store._get_client(config.online_store)

    def _delete_online(self, user_id: str) -> int:
        config = self.store.config
        key = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)])
        try:
            if config.online_store.type == "redis":
                client = self._redis()
                deleted = int(client.delete(_redis_key(config.project, key, config.entity_key_serialization_version)))
                _rewrite_append_only_file(client)
                return deleted
            blob = serialize_entity_key(key, entity_key_serialization_version=config.entity_key_serialization_version)
            deleted = 0
            with closing(sqlite3.connect(config.online_store.path)) as conn, conn:
                conn.execute("PRAGMA secure_delete = ON")  # the freed pages are zeroed, not left holding the row
                present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                for view in [v for v in USER_VIEWS if f"{config.project}_{v}" in present]:  # none: never materialized
                    deleted = max(deleted, conn.execute(f'DELETE FROM "{config.project}_{view}" WHERE entity_key = ?', (blob,)).rowcount)
            return deleted
        except UNAVAILABLE_ERRORS as exc:
            raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc

    def _check_refs(self, refs: list[str]) -> None:
        if all(r in self._known_refs for r in refs):  # the registry is read again only for a new name
            return
        views = self.store.list_feature_views(allow_cache=True)
        known = self._known_refs = {f"{fv.name}:{f.name}" for fv in views for f in fv.features}
        unknown = [r for r in refs if r not in known]
        if unknown:
            raise InvalidFeatureRequest(f"unknown feature(s): {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")

    def _check_ids(self, ids: list[str]) -> list[str]:
        rules = id_rules("id", self.settings.validation.max_id_length)
        bad = [i for i in ids if not isinstance(i, str) or check_id(i, rules)[1]]
        if bad:
            shown = ", ".join(repr(b)[:40] for b in bad[:5])
            limit = self.settings.validation.max_id_length
            raise InvalidFeatureRequest(f"invalid id(s) (non-empty strings up to {limit} printable characters): {shown}")
        return list(ids)

    def _accept(self, events: pd.DataFrame) -> ValidEvents:
        if not isinstance(events, pd.DataFrame):
            raise InvalidFeatureRequest(f"events must be a pandas DataFrame, not {type(events).__name__}")
        try:
            return accept_events(events, self.settings)
        except InvalidEvents as exc:
            raise InvalidFeatureRequest(str(exc)) from exc


def _rewrite_append_only_file(client, attempts: int = 50) -> None:
    """Ask Redis to rewrite its persistence files, which still hold the deleted row: the
    append-only file (a rewrite) and, where snapshots are configured, the RDB file (a new one).

    A rewrite already under way may have forked before the delete: wait for it, then start one.
    A managed Redis that refuses CONFIG GET is left to its own retention (logged)."""
    try:
        config = client.config_get("appendonly") | client.config_get("save")
    except redis.exceptions.ResponseError as exc:
        log.warning("erasure: Redis refused CONFIG GET (%s); its persistence files are its own", exc)
        return
    if config.get("save"):
        _retry_in_progress(client.bgsave, attempts)
    if config.get("appendonly") == "yes":
        _retry_in_progress(client.bgrewriteaof, attempts)


def _retry_in_progress(command, attempts: int) -> None:
    for _ in range(attempts):
        try:
            command()
            return
        except redis.exceptions.ResponseError as exc:
            if "in progress" not in str(exc):
                return
            time.sleep(0.1)


def _holds(sequence: dict, events: pd.DataFrame) -> bool:
    """Whether a user's online sequence holds every one of ``events`` (to the second: what it keeps)."""
    online = Counter(zip(sequence["item_ids"], sequence["event_types"], (t.floor("s") for t in sequence["timestamps"])))
    wanted = Counter(zip(events["item_id"], events["event_type"], events["timestamp"].dt.floor("s")))
    return all(online[k] >= n for k, n in wanted.items())

