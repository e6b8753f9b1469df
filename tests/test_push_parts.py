"""Push groups in parts of whole lock buckets (``shoprec.features.online._parts``), on both online
stores: a group far larger than a part writes each event once online and in the event log, a
repeat of it writes nothing, and two worker processes pushing large groups at once (their parts
interleave) lose no event of a user they share and keep its order."""

from __future__ import annotations

import multiprocessing
import threading

import pandas as pd
import pytest
import redis

from shoprec import event_log, lake
from shoprec.adapters.base import Batch
from shoprec.config import load_settings
from shoprec.features import store as feast_store
from shoprec.features import tables
from shoprec.features import online as online_module
from shoprec.features.online import PART_EVENTS, OnlineFeatures, _parts
from shoprec.features.store import PUSH_LOCK_BUCKETS, push_lock_bucket

REDIS_DB = 12
BASE = pd.Timestamp("2024-03-20", tz="UTC")


def settings_for(backend: str, home):
    overrides = {"home": home}
    if backend == "redis":  # a file registry (the default): nothing shared with other test modules
        overrides["online_store"] = {"type": "redis", "redis_connection_string": f"127.0.0.1:6379,db={REDIS_DB}"}
    return load_settings(**overrides)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def settings(request, tmp_path_factory):
    if request.param == "redis":
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    settings = settings_for(request.param, tmp_path_factory.mktemp(f"parts-{request.param}"))
    events = pd.DataFrame({"user_id": ["u0", "u1"], "item_id": ["i0", "i1"], "event_type": ["view", "view"],
                           "timestamp": [BASE - pd.Timedelta(days=1)] * 2})
    items = pd.DataFrame({"item_id": ["i0", "i1"], "title": ["a", "b"], "category": ["c", "c"], "price": [1.0, 2.0],
                          "available": [True, True]})
    lake.write_batch(settings.lake_dir, Batch.from_frames(events, items))
    tables.build_tables(settings)
    feast_store.apply(settings)
    yield settings
    if request.param == "redis":
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


def push_frame(user_ids: list[str], first: int, tag: str) -> pd.DataFrame:
    """One event per user, each with its own id and second."""
    n = len(user_ids)
    return pd.DataFrame({"user_id": user_ids, "item_id": [f"i{k % 2}" for k in range(n)], "event_type": ["view"] * n,
                         "timestamp": [BASE + pd.Timedelta(seconds=first + k) for k in range(n)],
                         "event_id": [f"{tag}-{first + k}" for k in range(n)]})


def test_a_group_is_cut_into_parts_of_whole_buckets_in_bucket_order():
    users = [f"user-{k}" for k in range(3 * PART_EVENTS + 7)]
    parts = _parts(users)
    rows = [r for part in parts for r in part]
    assert sorted(rows) == list(range(len(users)))  # every row once
    buckets = [sorted({push_lock_bucket(users[r]) for r in part}) for part in parts]
    assert all(a[-1] < b[0] for a, b in zip(buckets, buckets[1:]))  # whole buckets, in order: no lock cycle
    assert len(parts) > 1 and all(len(p) >= PART_EVENTS for p in parts[:-1])
    assert sum(len(b) for b in buckets) <= PUSH_LOCK_BUCKETS
    assert _parts(["one"]) == [[0]]


def test_a_group_of_many_parts_writes_each_event_once_online_and_in_the_log(settings):
    online = OnlineFeatures(settings)
    users = [f"many-{k}" for k in range(150)]
    frames = [push_frame(users, 1000 * t, f"t{t}") for t in range(8)]  # every user in every push: 8 events each
    gate = threading.Barrier(len(frames))
    answers: list = [None] * len(frames)

    def push(k: int) -> None:
        gate.wait()
        answers[k] = online.push_events(frames[k])

    threads = [threading.Thread(target=push, args=(k,)) for k in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    written = [e for a in answers for e in a.written]
    assert sorted(written) == sorted(e for f in frames for e in f["event_id"]) and not any(a.duplicates for a in answers)
    sequences = online.user_sequences(users)
    for k, user in enumerate(users):  # the user's 8 events, in time order
        assert sequences[user]["timestamps"] == [BASE + pd.Timedelta(seconds=1000 * t + k) for t in range(8)]
    logged = event_log.raw_events(tables.event_log_dir(settings))
    logged = logged[logged["user_id"].str.startswith("many-")]
    assert sorted(logged["event_id"]) == sorted(written)  # raw rows: once each
    again = online.push_events(pd.concat(frames, ignore_index=True))
    assert again.written == [] and sorted(again.duplicates) == sorted(written)


def _push_large_groups(home: str, backend: str, offset: int, start) -> None:
    """Another worker process: large pushes, each also holding one event of the shared user."""
    online = OnlineFeatures(settings_for(backend, home))
    start.wait()
    for k in range(offset, offset + 12, 2):  # the two processes interleave in time
        frame = push_frame([f"crowd-{offset}-{k}-{j}" for j in range(2 * PART_EVENTS)], 10_000 * k, f"p{offset}-{k}")
        shared = push_frame(["race"], k, "race")
        online.push_events(pd.concat([frame, shared], ignore_index=True))


def test_two_processes_pushing_large_groups_lose_no_event_of_a_shared_user(settings):
    assert len(_parts([f"crowd-0-0-{j}" for j in range(2 * PART_EVENTS)] + ["race"])) > 1
    backend = settings.online_store.type
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(2)
    workers = [spawn.Process(target=_push_large_groups, args=(str(settings.home), backend, offset, start))
               for offset in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(180)
    assert [w.exitcode for w in workers] == [0, 0]
    online = OnlineFeatures(settings)
    assert online.user_sequences(["race"])["race"]["timestamps"] == [BASE + pd.Timedelta(seconds=k) for k in range(12)]
    logged = event_log.raw_events(tables.event_log_dir(settings))
    assert sorted(logged.loc[logged["user_id"] == "race", "event_id"]) == sorted(f"race-{k}" for k in range(12))


def test_pushes_retried_alone_after_a_failed_part_answer_what_the_group_wrote_as_theirs(settings, monkeypatch):
    """A group whose second part fails (an error other than the store's) is tried push by push:
    the events its first part wrote are answered as written, not as duplicates, and every event
    is online once."""
    online = OnlineFeatures(settings)
    users = [f"retry-{k}" for k in range(2 * PART_EVENTS)]
    frames = [push_frame(users[:PART_EVENTS], 0, "ra"), push_frame(users[PART_EVENTS:], 0, "rb")]
    original, calls = OnlineFeatures._push_part, []

    def second_part_fails_once(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a part that cannot be written")
        return original(self, *args)

    monkeypatch.setattr(OnlineFeatures, "_push_part", second_part_fails_once)
    jobs = [online_module._Job(frame=online._accept(f).frame) for f in frames]  # as push_events queues them
    online._run_jobs(jobs)
    assert [job.error for job in jobs] == [None, None]
    answered = sorted(i for job in jobs for i in job.result.written)
    assert answered == sorted(frames[0]["event_id"].tolist() + frames[1]["event_id"].tolist())
    assert not any(job.result.duplicates for job in jobs)
    stored = online.user_sequences(users)
    assert all(len(stored[u]["item_ids"]) == 1 for u in users)  # each event online once
