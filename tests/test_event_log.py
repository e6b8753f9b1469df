"""The real-time event log (``shoprec.event_log``): group appends, compaction, crashes, erasure.

Every test counts events by (user_id, event_id), each made unique, so a lost or doubled event
shows as a count other than one.
"""

from __future__ import annotations

import os
import threading
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

from shoprec import event_log
from shoprec.schema import conform_events


def make_events(prefix: str, n: int, day: str = "2026-11-30", users: int = 7) -> pd.DataFrame:
    start = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=1)
    return conform_events(pd.DataFrame({
        "user_id": [f"{prefix}-u{k % users}" for k in range(n)],
        "item_id": [f"i{k % 13}" for k in range(n)],
        "event_type": ["view"] * n,
        "timestamp": [start + pd.Timedelta(seconds=k) for k in range(n)],
        "event_id": [f"{prefix}-e{k}" for k in range(n)],
    }))


def counts(frame: pd.DataFrame) -> dict[tuple[str, str], int]:
    return frame.groupby(["user_id", "event_id"]).size().to_dict()


def expected(*frames: pd.DataFrame) -> dict[tuple[str, str], int]:
    return {key: 1 for f in frames for key in zip(f["user_id"], f["event_id"])}


@pytest.fixture
def log_dir(tmp_path):
    return tmp_path / "event_log"


def test_appends_are_read_back_exactly_and_each_group_is_one_record(log_dir):
    writer = event_log.EventLog(log_dir)
    groups = [make_events(f"g{k}", 5 + k) for k in range(4)]
    for group in groups:
        writer.append(group)
    segments = list((log_dir / "wal").glob("*.wal"))
    assert len(segments) == 1  # one segment per writer, not one file per append
    tables, torn = event_log.read_segment(segments[0])
    assert [t.num_rows for t in tables] == [len(g) for g in groups] and torn == 0
    assert counts(event_log.raw_events(log_dir)) == expected(*groups)
    stored = event_log.read_events(log_dir)
    assert stored["timestamp"].dt.tz is not None and stored["timestamp"].is_monotonic_increasing


def test_a_torn_last_record_is_skipped_and_the_next_writer_starts_a_new_segment(log_dir):
    writer = event_log.EventLog(log_dir)
    kept = make_events("kept", 6)
    writer.append(kept)
    segment = next((log_dir / "wal").glob("*.wal"))
    record = event_log.encode_record(make_events("torn", 4))
    with open(segment, "ab") as handle:  # a crash in the middle of the next write
        handle.write(record[: len(record) // 2])
    assert counts(event_log.raw_events(log_dir)) == expected(kept)
    later = make_events("later", 3)
    event_log.EventLog(log_dir).append(later)  # another process (a restarted worker)
    assert len(list((log_dir / "wal").glob("*.wal"))) == 2
    assert counts(event_log.raw_events(log_dir)) == expected(kept, later)
    flipped = bytearray(segment.read_bytes())
    flipped[event_log.HEADER.size + 10] ^= 0xFF  # a damaged first record: its checksum fails
    segment.write_bytes(bytes(flipped))
    assert counts(event_log.raw_events(log_dir)) == expected(later)


def test_compaction_keeps_every_event_once_and_bounds_the_file_count(log_dir):
    writers = [event_log.EventLog(log_dir) for _ in range(3)]  # three worker processes
    written = []
    for k in range(60):
        group = make_events(f"r{k}", 3, day=("2026-11-29", "2026-11-30")[k % 2])
        writers[k % 3].append(group)
        written.append(group)
    # a push completed after a crash logs its events a second time: the identical rows
    writers[0].append(written[5])
    legacy = log_dir / "events" / "date=2026-11-30" / "batch-1-abc.parquet"  # the one-file-per-push log
    old = make_events("legacy", 4)
    legacy.parent.mkdir(parents=True)
    old.to_parquet(legacy)
    raw_before = event_log.raw_events(log_dir)
    assert len(raw_before) == 60 * 3 + 3 + 4
    assert event_log.file_count(log_dir) == 4

    report = event_log.compact(log_dir)

    assert report.files_before == 4 and report.files_after == 2  # one file per day
    assert report.duplicates_dropped == 3 and report.events_written == 60 * 3 + 4
    assert counts(event_log.raw_events(log_dir)) == expected(*written, old)  # raw: no row twice
    assert sorted(report.days) == ["2026-11-29", "2026-11-30"]
    assert not list((log_dir / "wal").iterdir())
    # the writers move to new segments; the next compaction folds them into the same day files
    more = [make_events(f"m{k}", 2) for k in range(5)]
    for k, group in enumerate(more):
        writers[k % 3].append(group)
    assert event_log.file_count(log_dir) == 2 + 3
    event_log.compact(log_dir)
    assert event_log.file_count(log_dir) == 2
    assert counts(event_log.raw_events(log_dir)) == expected(*written, old, *more)


class Crash(Exception):
    pass


def crash_at(step: str):
    def hook(now: str) -> None:
        if now == step:
            raise Crash(step)
    return hook


@pytest.mark.parametrize("step", ["sealed", "staged", "committed"])
def test_a_crash_at_any_step_of_a_compaction_loses_and_doubles_nothing(log_dir, step):
    writer = event_log.EventLog(log_dir)
    groups = [make_events(f"c{k}", 4, day=("2026-11-28", "2026-11-30")[k % 2]) for k in range(10)]
    for group in groups:
        writer.append(group)
    event_log.compact(log_dir)  # day files exist: the next compaction folds them in again
    late = [make_events(f"late{k}", 3, day=("2026-11-28", "2026-11-30")[k % 2]) for k in range(4)]
    for group in late:
        writer.append(group)

    with pytest.raises(Crash):
        event_log.compact(log_dir, crash_at=crash_at(step))

    # readers, raw or not, see every event once at the crash point
    assert counts(event_log.raw_events(log_dir)) == expected(*groups, *late)
    assert len(event_log.read_events(log_dir)) == 4 * 10 + 3 * 4
    after_crash = [make_events("after", 2)]
    writer.append(after_crash[0])  # the service goes on appending
    assert counts(event_log.raw_events(log_dir)) == expected(*groups, *late, *after_crash)
    event_log.compact(log_dir)  # the next run finishes or redoes it
    assert counts(event_log.raw_events(log_dir)) == expected(*groups, *late, *after_crash)
    assert event_log.file_count(log_dir) == 2
    leftovers = [p.name for p in log_dir.rglob("*") if p.is_file() and p.suffix not in (".parquet", ".lock")]
    assert leftovers == []
    assert not list(log_dir.rglob(f"{event_log.STAGED_PREFIX}*"))


def test_appends_while_compacting_are_neither_lost_nor_doubled(log_dir):
    stop = threading.Event()
    sent: list[pd.DataFrame] = []
    errors: list[BaseException] = []
    first_append = threading.Event()

    def writer(name: str) -> None:
        log = event_log.EventLog(log_dir)
        k = 0
        try:
            while not stop.is_set() or k < 5:
                group = make_events(f"{name}-{k}", 2)
                log.append(group)
                sent.append(group)
                first_append.set()
                k += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # daemon, and stopped in `finally`: a failed assertion must not leave writers appending
    # forever (that kept the interpreter alive until CI killed it)
    threads = [threading.Thread(target=writer, args=(f"w{n}",), daemon=True) for n in range(2)]
    for t in threads:
        t.start()
    try:
        assert first_append.wait(timeout=30), errors
        for _ in range(4):
            event_log.compact(log_dir)
            snapshot = event_log.raw_events(log_dir)
            assert len(snapshot) > 0  # what was acknowledged before stays readable mid-compaction
            assert snapshot.groupby(["user_id", "event_id"]).size().max() == 1  # never a double, mid-stream
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors
    event_log.compact(log_dir)
    assert counts(event_log.raw_events(log_dir)) == expected(*sent)


def test_compaction_drops_what_it_is_told_to_and_keeps_the_rest(log_dir):
    writer = event_log.EventLog(log_dir)
    events = make_events("d", 20)
    writer.append(events)
    report = event_log.compact(log_dir, drop=lambda f: f[f["user_id"] != "d-u3"])
    left = event_log.raw_events(log_dir)
    assert "d-u3" not in set(left["user_id"]) and len(left) == report.events_written
    assert report.dropped == int((events["user_id"] == "d-u3").sum()) > 0 and report.duplicates_dropped == 0
    assert counts(left) == expected(events[events["user_id"] != "d-u3"])


def test_erasure_scrubs_a_segment_its_writer_still_appends_to(log_dir):
    writer = event_log.EventLog(log_dir)
    first = make_events("s", 14)
    writer.append(first)
    segment = next((log_dir / "wal").glob("*.wal"))
    gone = event_log.scrub_segment(segment, lambda ids: ids == "s-u2")
    assert gone == 2
    assert b"s-u2" not in segment.read_bytes()
    after = make_events("t", 3)
    writer.append(after)  # its file was replaced: the writer moves to a new segment
    assert b"t-u0" not in segment.read_bytes()
    left = event_log.raw_events(log_dir)
    assert counts(left) == expected(first[first["user_id"] != "s-u2"], after)


def test_a_compacted_day_file_is_plain_parquet_in_event_order(log_dir):
    writer = event_log.EventLog(log_dir)
    writer.append(make_events("p", 9).iloc[::-1])  # out of order
    event_log.compact(log_dir)
    (day_file,) = list((log_dir / "events").rglob("*.parquet"))
    assert day_file.name.startswith(event_log.PART_PREFIX) and day_file.parent.name == "date=2026-11-30"
    table = pq.read_table(day_file).to_pandas()
    assert len(table) == 9 and pd.Series(table["timestamp"]).is_monotonic_increasing
    assert os.listdir(log_dir / "wal") == []


def test_group_commit_answers_every_push_once_even_two_equal_ones():
    """The pushes waiting while a group runs go together; each thread gets its own answer."""
    from shoprec.features.online import Pushed, _Groups, _Job

    sizes: list[int] = []

    def run(jobs):
        time.sleep(0.02)  # a group's writes: the next pushes queue meanwhile
        sizes.append(len(jobs))
        for job in jobs:
            job.result = Pushed([f"id-{id(job)}"], [])

    groups = _Groups(run)
    jobs = [_Job(records=[{"user_id": "same", "item_id": "i1"}]) for _ in range(24)]  # equal, yet 24 pushes
    answers: dict[int, Pushed] = {}
    threads = [threading.Thread(target=lambda j=j: answers.__setitem__(id(j), groups.submit(j))) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(answers) == sorted(id(j) for j in jobs)
    assert all(answers[id(j)].written == [f"id-{id(j)}"] for j in jobs)
    assert sum(sizes) == 24 and max(sizes) > 1  # grouped, each push in exactly one group
