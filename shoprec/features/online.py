"""The serving contract: what the service reads from and writes to the online store.

One ``OnlineFeatures`` holds one FeatureStore. Reads: a user's recent events
(``user_recent_items``) and an item's catalog state (``item_stats``: availability and
price, pushed when a catalog batch is ingested: ``shoprec.features.store.push_catalog_state``).
A new event updates the user's sequence through ``sequence.extend_sequence`` (the same rule as the
batch table) and is written to the feature views fed by the PushSource
``user_events_push``; the event is first appended to the offline event log, so the next
``features build`` includes it. A push is a read-modify-write of the user's whole row,
so updates are serialised per user: across threads, across the service's worker
processes (a file lock on the host), and across hosts when the online store is Redis (a
Redis lock). What a valid event or id is, is decided by the rules of
``shoprec.validation``, nowhere here.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pandas as pd
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from shoprec import lake
from shoprec.config import Settings
from shoprec.features import tables
from shoprec.features.sequence import SEQUENCE_COLUMNS, extend_sequence
from shoprec.features.store import feature_store
from shoprec.locks import exclusive_lock
from shoprec.validation import InvalidEvents, ValidEvents, accept_events, check_id, id_rules

PUSH_SOURCE = "user_events_push"
SEQUENCE_REFS = [f"user_recent_items:{c}" for c in SEQUENCE_COLUMNS]
EVENT_REFS = ["user_recent_items:item_ids", "user_recent_items:event_types"]  # what serving needs
ITEM_STATE_REFS = ["item_stats:available", "item_stats:price"]  # what serving filters and shows
USER_VIEWS = ("user_recent_items",)  # the views keyed by user: what erasure deletes
LOCK_BUCKETS = 64  # users share lock files: a bounded number of files, rare contention
LOCK_TIMEOUT_S = 10
UNAVAILABLE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, sqlite3.OperationalError, OSError)


class FeatureStoreUnavailable(RuntimeError):
    """The online store cannot be reached; the service falls back (e.g. on trending items)."""


class InvalidFeatureRequest(ValueError):
    """Malformed events, unknown feature names or absurd ids; nothing was written."""


@dataclass(frozen=True)
class ItemState:
    """An item's catalog state in the online store (``item_stats``); None where the store has no value."""

    available: bool | None
    price: float | None


class OnlineFeatures:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = feature_store(settings)
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._known_refs: set[str] = set()
        self._push_views: list[str] | None = None

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
    def push_events(self, events: ValidEvents | pd.DataFrame) -> None:
        """Append events to their users' sequences, online now and in the offline log.

        ``ValidEvents`` (what the service's /events made with ``accept_events``) are trusted;
        a plain frame is checked with the same rules first."""
        events = (events if isinstance(events, ValidEvents) else self._accept(events)).frame
        if not len(events):
            return
        lake.append_to_log(tables.event_log_dir(self.settings), events)
        for user_id, user_events in events.groupby("user_id", sort=True):
            with self._lock(user_id):
                stored = self.user_sequences([user_id])[user_id]
                updated = extend_sequence(stored, user_events, self.settings.features.sequence_length)
                # Redis keeps a row only if its timestamp is newer than the stored one: stamp the
                # push time, so a late (older) event still replaces the row it was merged into.
                stamp = max(pd.Timestamp.now(tz="UTC"), updated["timestamps"][-1])
                row = pd.DataFrame([{"user_id": user_id, **updated, "event_timestamp": stamp}])
                try:
                    for view in self._views_fed_by_push():
                        self.store.write_to_online_store(view, row)
                except UNAVAILABLE_ERRORS as exc:
                    raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc

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

    def forget_user(self, user_id: str) -> None:
        """Right to erasure: the user's online rows, event log rows and feature-table rows go."""
        (user_id,) = self._check_ids([user_id])
        with self._lock(user_id):
            self._delete_online(user_id)
            lake.drop_user(tables.event_log_dir(self.settings), user_id)
            for name in USER_VIEWS:
                path = tables.table_path(self.settings, name)
                if path.exists():
                    frame = pd.read_parquet(path)
                    tables.write_table(frame[frame["user_id"] != user_id], path)

    # --- helpers ----------------------------------------------------------------
    @contextmanager
    def _lock(self, user_id: str):
        with self._locks_guard:
            thread_lock = self._locks[user_id]
        with thread_lock, ExitStack() as held:
            try:
                if self.store.config.online_store.type == "redis":
                    held.enter_context(self._redis().lock(f"shoprec:push-lock:{user_id}", timeout=LOCK_TIMEOUT_S,
                                                          blocking_timeout=LOCK_TIMEOUT_S))
                else:
                    held.enter_context(_host_lock(self.settings.home / "locks", user_id))
            except UNAVAILABLE_ERRORS as exc:
                raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc
            yield

    def _redis(self):
        config = self.store.config
        return self.store._get_provider().online_store._get_client(config.online_store)

    def _delete_online(self, user_id: str) -> None:
        config = self.store.config
        key = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)])
        try:
            if config.online_store.type == "redis":
                self._redis().delete(_redis_key(config.project, key, config.entity_key_serialization_version))
            else:
                blob = serialize_entity_key(key, entity_key_serialization_version=config.entity_key_serialization_version)
                with sqlite3.connect(config.online_store.path) as conn:
                    for view in USER_VIEWS:
                        conn.execute(f'DELETE FROM "{config.project}_{view}" WHERE entity_key = ?', (blob,))
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


@contextmanager
def _host_lock(folder, user_id: str):
    """An exclusive flock on one of LOCK_BUCKETS files: serialises a user's pushes between processes of one host."""
    bucket = zlib.crc32(user_id.encode()) % LOCK_BUCKETS
    with exclusive_lock(folder / f"push-{bucket}.lock"):
        yield

