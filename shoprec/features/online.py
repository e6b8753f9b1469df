"""The serving contract: what the service reads from and writes to the online store.

One ``OnlineFeatures`` holds one FeatureStore (one per thread on SQLite). Reads: a user's
recent events (``user_recent_items``) and an item's catalog state (``item_stats``:
availability and price, pushed when a catalog batch is ingested:
``shoprec.features.store.push_catalog_state``). New events update their users' sequences
through ``sequence.merge_sequence`` (the same rule as the batch table), are written to the
feature views fed by the PushSource ``user_events_push``, then appended to the offline event
log (``shoprec.event_log``: durable before the push returns), so the next ``features build``
includes them. Pushes are grouped: the pushes that arrive in a worker's threads while a group
runs go together as the next group (``_Groups``), written in parts of whole lock buckets
(``_parts``): one online read and write, one event-log fsync and two index writes per part;
a 1-event push cost 7 ms alone (20-30 ms with
the HTTP service), a 100-event push 550 ms (one user after the other). A push is a
read-modify-write of each user's whole row, so updates are serialised per user: across
threads, across the service's worker processes (a file lock on the host), and across hosts
when the online store is Redis (a Redis lock); materialization takes the same locks
(``store.push_lock``, one per bucket of users; a part takes its buckets in order).
Each event is written once: ``shoprec.features.event_index`` remembers a user's event ids.
What a valid event or id is, is decided by the rules of ``shoprec.validation``, nowhere here.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Int64List, StringList, Value

from shoprec import ledger
from shoprec.config import Settings
from shoprec.event_log import EventLog, encode_record
from shoprec.features import tables
from shoprec.features.sequence import SEQUENCE_COLUMNS, merge_sequence
from shoprec.features.event_index import EventIndex, RedisEventIndex, SqliteEventIndex
from shoprec.features.store import (
    PUSH_LOCK_TIMEOUT_S,
    PushLockTimeout,
    feature_store,
    push_lock,
    push_lock_bucket,
)
from shoprec.schema import EVENT_ARROW_SCHEMA, derived_event_ids, empty_events
from shoprec.validation import InvalidEvents, ValidEvents, accept_events, check_id, id_rules

log = logging.getLogger(__name__)
PUSH_SOURCE = "user_events_push"
SEQUENCE_REFS = [f"user_recent_items:{c}" for c in SEQUENCE_COLUMNS]
EVENT_REFS = ["user_recent_items:item_ids", "user_recent_items:event_types"]  # what serving needs
ITEM_STATE_REFS = ["item_stats:available", "item_stats:price"]  # what serving filters and shows
USER_VIEWS = ("user_recent_items",)  # the views keyed by user: what erasure deletes
UNAVAILABLE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, sqlite3.OperationalError, OSError)
# events per group (at least one push): about 0.2 ms of lock time per event (a 430-event group
# held the locks 76 ms), so a group holds them well under a second, far from PUSH_LOCK_TIMEOUT_S
MAX_GROUP_EVENTS = 2000
# events per part of a group (``_parts``): 8 x 100-event bodies in parts of 250, against one
# part, gave 1,740 and 1,427 against 1,281 and 966 events/s in runs side by side (load 9-16)
PART_EVENTS = 250
RELEASE_LOCK = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"""


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
        self._erased = ledger.ErasedKeys(settings)
        self._known_refs: set[str] = set()
        self._push_views: list | None = None  # FeatureView objects
        self._log = EventLog(tables.event_log_dir(settings))
        self._groups = _Groups(self._run_jobs)
        self._lock_files: dict[int, object] = {}  # bucket -> open lock file (SQLite): one open per bucket and process
        self._config_of_pushes = None  # the store's config as pushes write with it (``_push_config``)

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
        """Each user's (item_id, event_type) pairs, oldest first: the serving read, without the
        timestamps, through the online store's own ``online_read`` (as ``_stored_triples``; the
        view has no TTL): ``get_online_features`` cost 0.75 ms of CPU for a 4-user batch."""
        ids = list(dict.fromkeys(self._check_ids(user_ids)))
        if not ids:
            return {}
        try:
            rows = self.store._get_provider().online_read(self.store.config, self._sequence_view(),
                                                          [_user_key(u) for u in ids], [r.split(":", 1)[1] for r in EVENT_REFS])
        except UNAVAILABLE_ERRORS as exc:
            raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc
        out = {}
        for user, (_, values) in zip(ids, rows):
            items = list(values["item_ids"].string_list_val.val) if values and "item_ids" in values else []
            types = list(values["event_types"].string_list_val.val) if values and "event_types" in values else []
            out[user] = list(zip(items, types or ["view"] * len(items)))
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

    def _stored_triples(self, user_ids: list[str]) -> dict[str, list[tuple[str, str, int]]]:
        """Each user's online sequence as (item_id, event_type, nanoseconds) triples, oldest first,
        through the online store's own ``online_read`` (what ``get_online_features`` ends in):
        Feast's response building around it, and a datetime per element in its dict form, cost
        59 us of CPU a user (47 ms of an 800-user group)."""
        try:
            rows = self.store._get_provider().online_read(self.store.config, self._sequence_view(),
                                                          [_user_key(u) for u in user_ids], list(SEQUENCE_COLUMNS))
        except UNAVAILABLE_ERRORS as exc:
            raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc
        out = {}
        for user, (_, values) in zip(user_ids, rows):
            if not values:  # no row yet
                out[user] = []
                continue
            seconds = values["timestamps"].unix_timestamp_list_val.val
            types = values["event_types"].string_list_val.val or ["view"] * len(seconds)
            out[user] = [(i, t, s * 1_000_000_000) for i, t, s in zip(values["item_ids"].string_list_val.val, types, seconds)]
        return out

    def item_states(self, item_ids: list[str]) -> dict[str, ItemState]:
        """Availability and price per item, in one read: the serving path's item lookup, through the
        online store's own ``online_read`` (as ``_stored_triples``; the view has no TTL, so nothing is
        filtered by age). ``get_online_features`` cost 1.55 ms of CPU for the 18 items a 4-request
        batch reads at 100,000 items (its response building and dict form), ``online_read`` 0.32 ms."""
        ids = list(dict.fromkeys(self._check_ids(item_ids)))
        if not ids:
            return {}
        keys = [EntityKey(join_keys=["item_id"], entity_values=[Value(string_val=i)]) for i in ids]
        try:
            rows = self.store._get_provider().online_read(self.store.config, self._item_view(), keys,
                                                          [r.split(":", 1)[1] for r in ITEM_STATE_REFS])
        except UNAVAILABLE_ERRORS as exc:
            raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc
        return {item: ItemState(_proto_value(values, "available", bool), _proto_value(values, "price", float))
                for item, (_, values) in zip(ids, rows)}

    def _item_view(self):
        """The ``item_stats`` feature view (read from the registry once)."""
        view = getattr(self, "_item_stats_view", None)
        if view is None:
            view = self._item_stats_view = self.store.get_feature_view(ITEM_STATE_REFS[0].split(":")[0])
        return view

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

        ``ValidEvents`` (what ``accept_events`` made) are trusted; a plain frame is checked with
        the same rules first. The push joins the pushes of other threads of this process that
        wait meanwhile, and they go as one group (``_push_group``)."""
        frame = (events if isinstance(events, ValidEvents) else self._accept(events)).frame
        return self._groups.submit(_Job(frame=frame))

    def push_records(self, records: list[dict]) -> Pushed:
        """``push_events`` for event dicts the caller checked with ``validate_event_records``: the
        group conforms all its records at once (``accept_events`` checks them again)."""
        return self._groups.submit(_Job(records=records))

    def _run_jobs(self, jobs: list["_Job"], written_before: frozenset = frozenset()) -> None:
        """One group; when a group fails on something other than the store (an event the store
        cannot take), each push is tried alone, so one bad push fails only itself. The parts
        the failed group wrote before it failed (``written``) are this attempt's: a push tried
        alone answers them as accepted, not as duplicates of itself."""
        written: set[tuple[str, str]] = set()
        try:
            frames = [self._frame_of(j, jobs) for j in jobs]
            for job, pushed in zip(jobs, self._push_group(frames, written, written_before)):
                job.result = pushed
        except (FeatureStoreUnavailable, OnlineStoreBusy) as exc:
            for job in jobs:
                job.error = exc
        except Exception as exc:  # noqa: BLE001 - handed to each push's own thread
            if len(jobs) == 1:
                jobs[0].error = exc
                return
            for job in jobs:
                self._run_jobs([job], written_before | written)

    def _frame_of(self, job: "_Job", jobs: list["_Job"]) -> pd.DataFrame:
        """A job's canonical frame; the record jobs of the group are conformed together, once."""
        if job.frame is None:
            pending = [j for j in jobs if j.frame is None]
            records = [r for j in pending for r in j.records]
            try:
                frame = accept_events(records, self.settings).frame
            except InvalidEvents as exc:
                raise InvalidFeatureRequest(str(exc)) from exc
            offset = 0
            for j in pending:
                j.frame = frame.iloc[offset:offset + len(j.records)]
                offset += len(j.records)
        return job.frame

    def _push_group(self, frames: list[pd.DataFrame], written: set | None = None,
                    written_before: frozenset = frozenset()) -> list[Pushed]:
        """The pushes of one group, in parts of whole lock buckets (``_parts``), one after the
        other: under the push locks of a part's users (one lock per bucket, taken in order),
        the pending records of crashed pushes resolved, then for the events no user has yet:
        the pending records, the online rows, the event log (one fsync), the ids; one read or
        write of each per part. A push killed at any point is completed or dropped whole, user
        by user, by the user's next push (a retry: ``_finish_pending``). ``written`` collects the
        (user, event id) pairs of each part once it is written; ``written_before``: the pairs an
        earlier, failed attempt of these pushes wrote (answered as accepted)."""
        written = set() if written is None else written
        sizes = [len(f) for f in frames]
        events = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
        if not len(events):
            return [Pushed([], []) for _ in frames]
        events = events.assign(event_id=events["event_id"].fillna(derived_event_ids(events)))
        users = events["user_id"].tolist()
        ids = events["event_id"].tolist()
        fresh, erased = [False] * len(users), [False] * len(users)
        # the pending records' text and the log's rows, made once, before any lock is taken
        made = _Made(_json_lines(events), pa.Table.from_pandas(events, schema=EVENT_ARROW_SCHEMA, preserve_index=False))
        for rows in _parts(users):
            self._push_part(events, rows, users, ids, made, fresh, erased)
            written.update((users[r], ids[r]) for r in rows if fresh[r])
        ours = [f or (u, i) in written_before for f, u, i in zip(fresh, users, ids)]
        return _split(sizes, ids, ours, erased)

    def _push_part(self, events: pd.DataFrame, rows: list[int], users: list[str], ids: list[str],
                   made: "_Made", fresh: list[bool], erased: list[bool]) -> None:
        """One part of a group (``rows``): marks its rows ``fresh`` (written now) or ``erased``."""
        # the ledger is read under the locks: a user erased while this push waited is dropped too
        with self._bucket_locks(sorted({push_lock_bucket(users[r]) for r in rows})):
            gone = ledger.erased_mask(pd.Series([users[r] for r in rows], dtype=object), self._erased_keys()).tolist()
            live_rows = [r for r, g in zip(rows, gone) if not g]
            for r, g in zip(rows, gone):
                erased[r] = g
            live = sorted({users[r] for r in live_rows})
            if not live:
                return
            stored = self._stored_triples(live)
            self._finish_pending(live, stored)
            seen = self._index(self.index.seen_pairs, [(users[r], ids[r]) for r in live_rows])
            new = []
            for r in live_rows:
                if (users[r], ids[r]) not in seen:
                    seen.add((users[r], ids[r]))  # a repeat in this group is a duplicate
                    fresh[r] = True
                    new.append(r)
            if new:
                self._write_group(events.iloc[new], stored, [made.lines[r] for r in new], made.table.take(new))

    def _write_group(self, fresh: pd.DataFrame, stored: dict[str, list[tuple]], lines: list[str],
                     logged: pa.Table) -> None:
        """``fresh``'s events online, in the log and in the index; ``lines``: each event's JSON,
        ``logged``: the events as the log's rows."""
        rows_of: dict[str, list[int]] = defaultdict(list)
        for row, user in enumerate(fresh["user_id"].tolist()):
            rows_of[user].append(row)
        items, types, ids = fresh["item_id"].tolist(), fresh["event_type"].tolist(), fresh["event_id"].tolist()
        times = pd.DatetimeIndex(fresh["timestamp"]).asi8.tolist()  # nanoseconds: what merge_sequence sorts
        # materialize keeps a stored row whose timestamp is newer than its own: stamp the push
        # time, so a late (older) event's row is not rolled back by the next materialization
        now = time.time_ns()
        rows, pending = [], []
        for user, at in rows_of.items():
            merged = merge_sequence(stored[user], [(items[r], types[r], times[r]) for r in at],
                                    self.settings.features.sequence_length)
            stamp = pd.Timestamp(-(-max(now, merged[-1][2]) // 1000) * 1000, tz="UTC")  # whole microseconds: a datetime's
            rows.append((user, merged, stamp))
            pending.append((user, stamp, "[" + ",".join(lines[r] for r in at) + "]"))
        self._index(self.index.begin_many, pending)
        self._write_online(rows)
        self._append_to_log(logged)
        self._index(self.index.commit_many, {user: [ids[r] for r in at] for user, at in rows_of.items()})

    def _write_online(self, rows: list[tuple[str, list[tuple], pd.Timestamp]]) -> None:
        """The users' new rows (user, merged triples, row stamp), through the online store's own
        ``online_write_batch`` (what ``write_to_online_store`` ends in): the values made as Feast
        makes them (strings, whole seconds), without its frame-to-Arrow-to-proto detour, half of
        a 100-user write (9.4 to 4.9 ms). Redis is written without Feast's read of the stored
        timestamps (``skip_dedup``): the rows were read under these users' locks, and each
        stamp is newer than the one it replaces."""
        data = []
        for user, merged, stamp in rows:
            values = {"item_ids": Value(string_list_val=StringList(val=[str(e[0]) for e in merged])),
                      "event_types": Value(string_list_val=StringList(val=[str(e[1]) for e in merged])),
                      "timestamps": Value(unix_timestamp_list_val=Int64List(val=[e[2] // 1_000_000_000 for e in merged]))}
            data.append((_user_key(user), values, stamp.to_pydatetime(), None))
        try:
            provider = self.store._get_provider()
            for view in self._views_fed_by_push():
                fields = [f.name for f in view.features]
                rows_of_view = [(k, {f: v[f] for f in fields}, t, c) for k, v, t, c in data]
                provider.online_write_batch(self._push_config(), view, rows_of_view, progress=None)
        except UNAVAILABLE_ERRORS as exc:
            raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc

    def _push_config(self):
        """The store's config, on Redis with ``skip_dedup``: written without comparing the stored timestamps."""
        config = self.store.config
        if self.settings.online_store.type != "redis":
            return config
        if self._config_of_pushes is None:  # one shared store on Redis
            copy = config.model_copy()
            copy._online_store = config.online_store.model_copy(update={"skip_dedup": True})
            self._config_of_pushes = copy
        return self._config_of_pushes

    def _sequence_view(self):
        """The feature view the sequences are read from (``user_recent_items``)."""
        return next(v for v in self._views_fed_by_push() if v.name == SEQUENCE_REFS[0].split(":")[0])

    def _erased_keys(self) -> frozenset[str]:
        return self._erased.current()

    def _finish_pending(self, user_ids: list[str], stored: dict[str, dict]) -> None:
        """Pushes of these users that died half way: completed if their online row landed (the
        user's sequence holds their events), else dropped (nothing of them was written: the log
        is written after the row; an event too old to stay in the sequence is written again, to
        the same effect)."""
        pending = self._index(self.index.pending_of, user_ids) if user_ids else {}
        if not pending:
            return
        landed = {u: p for u, p in pending.items() if _holds(stored[u], p.events)}
        if landed:
            self._append_to_log(pd.concat([p.events for p in landed.values()], ignore_index=True))
            self._index(self.index.commit_many, {u: p.events["event_id"].tolist() for u, p in landed.items()})
        dropped = [u for u in pending if u not in landed]
        if dropped:
            self._index(self.index.drop_pending_many, dropped)

    def _append_to_log(self, events: pd.DataFrame | pa.Table) -> None:
        try:
            self._log.append(events)
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
        encode_record(empty_events())  # Arrow's IPC writer, first used by the event log

    def _views_fed_by_push(self) -> list:
        """The feature views whose stream source is ``user_events_push``: what ``store.push`` writes.

        ``store.push`` itself also lists every feature service from the registry on each
        call (for precomputed vectors ShopRec does not use): 10 of a push's 12 ms.
        """
        if self._push_views is None:
            views = self.store.list_feature_views(allow_cache=True)
            self._push_views = [v for v in views if v.stream_source is not None and v.stream_source.name == PUSH_SOURCE]
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

    @contextmanager
    def _bucket_locks(self, buckets: list[int]):
        """The push locks of ``buckets`` (sorted), those ``push_lock`` takes: flocks on the host
        (SQLite), Redis locks (Redis), acquired in order, so two groups never wait on each other
        in a cycle. Redis: one pipeline tries them all; a lock found taken is waited for, then
        the rest is tried again (one lock after another cost a round trip each: 64 per group)."""
        try:
            if self.settings.online_store.type != "redis":
                held = self._flock_buckets(buckets)
            else:
                held = self._redis_lock_buckets(buckets)
        except UNAVAILABLE_ERRORS as exc:
            raise FeatureStoreUnavailable(f"online store unreachable: {exc}") from exc
        except PushLockTimeout as exc:
            raise OnlineStoreBusy(str(exc)) from exc
        try:
            yield
        finally:
            held()

    def _flock_buckets(self, buckets: list[int]):
        files = []
        for bucket in buckets:
            handle = self._lock_files.get(bucket)
            if handle is None:
                path = self.settings.home / "locks" / f"push-{bucket}.lock"
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = self._lock_files[bucket] = open(path, "a")  # noqa: SIM115 - kept open: one open per bucket
            fcntl.flock(handle, fcntl.LOCK_EX)
            files.append(handle)
        return lambda: [fcntl.flock(f, fcntl.LOCK_UN) for f in files]

    def _redis_lock_buckets(self, buckets: list[int]):
        client = self._redis()
        release = client.register_script(RELEASE_LOCK)
        token = uuid.uuid4().hex
        names = [f"shoprec:push-lock:{b}" for b in buckets]
        expiry_ms = int(PUSH_LOCK_TIMEOUT_S * 1000)
        deadline = time.monotonic() + PUSH_LOCK_TIMEOUT_S + 1

        def free(keys: list[str]) -> None:
            if keys:
                with client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        release(keys=[key], args=[token], client=pipe)
                    pipe.execute()

        held: list[str] = []
        while len(held) < len(names):
            rest = names[len(held):]
            with client.pipeline(transaction=False) as pipe:
                for key in rest:
                    pipe.set(key, token, nx=True, px=expiry_ms)
                got = pipe.execute()
            first_taken = next((k for k, ok in enumerate(got) if not ok), len(got))
            held += rest[:first_taken]
            free([key for key, ok in zip(rest[first_taken:], got[first_taken:]) if ok])  # never hold past a wait
            if first_taken < len(rest):
                while not client.set(rest[first_taken], token, nx=True, px=expiry_ms):
                    if time.monotonic() > deadline:
                        free(held)
                        raise PushLockTimeout(f"push lock {rest[first_taken]} still held after {PUSH_LOCK_TIMEOUT_S + 1} s")
                    time.sleep(0.002)
                held.append(rest[first_taken])
        return lambda: free(held)

    def _redis(self):
        config = self.store.config
        return self.store._get_provider().online_store._get_client(config.online_store)

    def _delete_online(self, user_id: str) -> int:
        config = self.store.config
        key = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)])
        try:
            if self.settings.online_store.type == "redis":
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


def _proto_value(values: dict | None, name: str, kind: type):
    """A field of an ``online_read`` row as ``kind``; None when the row or the value is missing."""
    value = None if not values else values.get(name)
    field_name = None if value is None else value.WhichOneof("val")
    return None if field_name in (None, "null_val") else kind(getattr(value, field_name))


def _user_key(user_id: str) -> EntityKey:
    return EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)])


def _holds(sequence: list[tuple[str, str, int]], events: pd.DataFrame) -> bool:
    """Whether a user's online sequence (``_stored_triples``) holds every one of ``events`` (to
    the second: what it keeps)."""
    second = 1_000_000_000
    online = Counter((i, t, ns // second) for i, t, ns in sequence)
    wanted = Counter(zip(events["item_id"], events["event_type"], pd.DatetimeIndex(events["timestamp"]).asi8 // second))
    return all(online[k] >= n for k, n in wanted.items())


@dataclass(eq=False)  # a job is itself: two pushes of equal events are two jobs
class _Job:
    """One push waiting for its group: a canonical frame, or records the group conforms."""

    frame: pd.DataFrame | None = None
    records: list[dict] | None = None
    result: Pushed | None = None
    error: BaseException | None = None
    done: bool = False

    def size(self) -> int:
        return len(self.records) if self.frame is None else len(self.frame)


class _Groups:
    """Group commit: the pushes that arrive while a group runs form the next group, run by the
    first of their threads; each thread returns its own push's answer (or raises its error).
    One group at a time per process: its cost (the locks, one online read and write, one fsync
    of the event log, two index writes, per part of whole lock buckets) is paid once for all its pushes."""

    def __init__(self, run):
        self._run = run
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._busy = False

    def submit(self, job: _Job) -> Pushed:
        with self._cond:
            self._queue.append(job)
            while self._busy and not job.done:
                self._cond.wait()
            if not job.done:
                group = self._take(job)
                self._busy = True
        if not job.done:
            try:
                self._run(group)
            except BaseException as exc:  # noqa: BLE001 - every push of the group learns it
                for j in group:
                    j.error = j.error or exc
            finally:
                with self._cond:
                    for j in group:
                        j.done = True
                    self._busy = False
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self, leader: _Job) -> list[_Job]:
        """The queued pushes in arrival order, the leader's always, up to ``MAX_GROUP_EVENTS`` events."""
        group, left, events = [], [], leader.size()
        for job in self._queue:
            if job is leader:
                group.append(job)
            elif events + job.size() <= MAX_GROUP_EVENTS:
                group.append(job)
                events += job.size()
            else:
                left.append(job)
        self._queue = left
        return group


def _parts(users: list[str]) -> list[list[int]]:
    """The rows of a group in parts of whole lock buckets, in bucket order, of about
    ``PART_EVENTS`` events each: a group held every bucket while it ran, so the service's
    workers took turns; in parts, a worker writes one part while another writes the next."""
    by_bucket: dict[int, list[int]] = defaultdict(list)
    for row, user in enumerate(users):
        by_bucket[push_lock_bucket(user)].append(row)
    parts, part = [], []
    for bucket in sorted(by_bucket):
        part += by_bucket[bucket]
        if len(part) >= PART_EVENTS:
            parts.append(part)
            part = []
    return parts + [part] if part else parts


@dataclass(frozen=True)
class _Made:
    """What a group makes of its events once, for all its parts: an Arrow table per part cost
    2.4 ms of CPU (8% of a 100-event-body load)."""

    lines: list[str]  # each event's JSON: the pending records
    table: pa.Table  # the event log's rows


def _json_lines(events: pd.DataFrame) -> list[str]:
    """Each event as JSON (``events_json``'s records, one string per row)."""
    return events.to_json(orient="records", lines=True, date_format="iso", date_unit="ns").rstrip("\n").split("\n")


def _split(sizes: list[int], ids: list[str], fresh: list[bool], erased: list[bool]) -> list[Pushed]:
    """Each push's answer, in its own input order."""
    out, start = [], 0
    for size in sizes:
        rows = range(start, start + size)
        out.append(Pushed([ids[r] for r in rows if fresh[r]],
                          [ids[r] for r in rows if not fresh[r] and not erased[r]],
                          [ids[r] for r in rows if erased[r]]))
        start += size
    return out
