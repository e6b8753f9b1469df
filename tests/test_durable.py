"""Durable files: writes are whole or absent, concurrent writers never tear a file, readers
trust only what a batch manifest names, and a changed served file is refused at load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoprec import event_log, lake
from shoprec.adapters.base import Batch
from shoprec.durable import (STALE_TEMP_AFTER_S, sweep_stale_temp_files, write_bytes_atomically,
                             write_atomically, write_parquet_atomically, write_text_atomically)
from shoprec.features import tables
from shoprec.ingest import ingest
from simulator.shop import generate
from tests.service_harness import TOKEN, RedisServer, Server, call, prepare_shop, shop_settings
from training.artifact import ArtifactError, load_recommender
from training.compression.embedding import compressed_table
from training.compression.folding import fold_text_tower
from training.compression.quantization import dynamic_int8
from training.compression.variant import save_variant
from training.registry import POINTER, promote

REPO = Path(__file__).resolve().parents[1]
SHOP = Path(__file__).parent / "fixtures" / "shop"


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def temp_files(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob(".*.tmp")]


# --- the helpers -----------------------------------------------------------------------------
def test_writes_replace_whole_files_and_leave_no_temp_file(tmp_path):
    target = tmp_path / "new" / "folder" / "file.bin"
    write_bytes_atomically(target, b"first")
    write_bytes_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    write_text_atomically(tmp_path / "note.txt", "héllo\n")
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "héllo\n"
    table = pa.table({"a": [1, 2, 3]})
    write_parquet_atomically(table, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
    assert temp_files(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    target = tmp_path / "t.parquet"
    write_parquet_atomically(pa.table({"a": [1]}), target)

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"PAR1 half a file")
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        write_atomically(target, half_then_fail)
    assert pq.read_table(target).column("a").to_pylist() == [1]
    assert temp_files(tmp_path) == []


def test_stale_temp_files_are_swept_by_the_next_write_to_their_folder(tmp_path):
    stale, fresh, other = tmp_path / ".x.parquet.0a1b.tmp", tmp_path / ".y.parquet.2c3d.tmp", tmp_path / "old.tmp"
    for path in (stale, fresh, other):
        path.write_bytes(b"left by a crash")
    hours_ago = time.time() - STALE_TEMP_AFTER_S - 60
    os.utime(stale, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    write_bytes_atomically(tmp_path / "x.parquet", b"data")
    assert not stale.exists()
    assert fresh.exists()  # may be a live writer's: seconds old
    assert other.exists()  # not a temp file's name (it does not start with ".")
    assert sweep_stale_temp_files(tmp_path, older_than_s=0) == [fresh]


def test_lake_readers_ignore_temp_files(settings):
    batch = generate(200, seed=1, days=3)
    lake.write_batch(settings.lake_dir, batch)
    day = lake.event_files(settings.lake_dir)[0]
    (day.parent / f".{day.name}.deadbeef.tmp").write_bytes(b"half a parquet file")
    (settings.lake_dir / "batches" / ".x.json.deadbeef.tmp").write_text("{half")
    assert len(lake.read_events(settings.lake_dir)) == len(batch.events)
    assert len(lake.batch_records(settings.lake_dir)) == 1


# --- concurrent writers ----------------------------------------------------------------------
WRITER = """
    import sys, time
    import pyarrow as pa
    from shoprec.durable import write_bytes_atomically, write_parquet_atomically
    mode, path, tag, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    rows = 50_000
    table = pa.table({"writer": pa.array([tag] * rows, pa.int64()), "n": pa.array(range(rows), pa.int64())})
    data = bytes([tag]) * 2_000_000
    deadline, writes = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        if mode == "parquet":
            write_parquet_atomically(table, path)
        else:
            write_bytes_atomically(path, data)
        writes += 1
    print(writes)
"""


def _content(mode: str, path: Path):
    """Which writer's content the file holds whole (a torn or mixed file fails here)."""
    if mode == "parquet":
        table = pq.read_table(path)
        writers = set(table.column("writer").to_pylist())
        assert table.num_rows == 50_000 and len(writers) == 1, writers
        assert table.column("n").to_pylist() == list(range(50_000))
        return writers.pop()
    data = path.read_bytes()
    assert len(data) == 2_000_000 and data.count(data[:1]) == len(data)
    return data[0]


@pytest.mark.parametrize("mode", ["parquet", "bytes"])
def test_two_processes_writing_one_path_never_tear_or_mix_it(tmp_path, mode):
    path = tmp_path / "shared.file"
    writers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), mode, str(path), str(tag), "4"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in (1, 2)]
    reads, seen = 0, set()
    while any(w.poll() is None for w in writers):
        if path.exists():
            seen.add(_content(mode, path))
            reads += 1
    outputs = [w.communicate() for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err for _, err in outputs]
    assert all(int(out) > 0 for out, _ in outputs)
    assert reads > 0 and seen <= {1, 2}
    assert _content(mode, path) in (1, 2)
    assert temp_files(tmp_path) == []


# --- a crash in the middle of a batch ----------------------------------------------------------
KILLED_BEFORE_MANIFEST = """
    import os, signal, sys
    import pandas as pd
    from shoprec import lake
    from shoprec.adapters.base import Batch
    from simulator.shop import generate
    lake._write_manifest = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # the crash: after the data files
    batch = generate(300, seed=2, start="2026-01-02", days=4)
    items = batch.items.assign(price=batch.items["price"] * 2)
    lake.write_batch(sys.argv[1], Batch.from_frames(batch.events, items, source="crashing"))
"""


def crashing_batch() -> Batch:
    """The batch the crashing child writes (the same generator, the same content hash)."""
    batch = generate(300, seed=2, start="2026-01-02", days=4)
    return Batch.from_frames(batch.events, batch.items.assign(price=batch.items["price"] * 2), source="crashing")


def lake_view(settings) -> dict:
    return {
        "events": lake.read_events(settings.lake_dir),
        "items": lake.read_items(settings.lake_dir),
        "files": lake.event_files(settings.lake_dir),
        "records": lake.batch_records(settings.lake_dir),
        "feature_events": tables.all_events(settings),  # what the feature tables are built from
    }


def assert_same_view(got: dict, want: dict) -> None:
    pd.testing.assert_frame_equal(got["events"], want["events"])
    pd.testing.assert_frame_equal(got["items"], want["items"])
    pd.testing.assert_frame_equal(got["feature_events"], want["feature_events"])
    assert got["files"] == want["files"] and got["records"] == want["records"]


@pytest.mark.parametrize("before", ["empty lake", "one batch"])
def test_a_crash_between_day_files_and_manifest_leaves_readers_on_the_previous_content(settings, before):
    if before == "one batch":
        lake.write_batch(settings.lake_dir, generate(300, seed=1, days=3))
    previous = lake_view(settings)
    crash = run_python(KILLED_BEFORE_MANIFEST, str(settings.lake_dir))
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    batch = crashing_batch()
    orphans = sorted(p.relative_to(settings.lake_dir).as_posix()
                     for p in settings.lake_dir.rglob(f"batch-{batch.batch_id}.parquet"))
    assert len(orphans) >= 4  # the day files (and the catalog file) of the batch are on disk ...
    assert_same_view(lake_view(settings), previous)  # ... and no reader sees them
    unlisted = set(lake.event_files(settings.lake_dir, include_unlisted=True)) - set(previous["files"])
    assert {p.relative_to(settings.lake_dir).as_posix() for p in unlisted} == {o for o in orphans if o.startswith("events/")}

    record = lake.write_batch(settings.lake_dir, batch)  # writing the batch again completes it
    assert sorted(record["files"]) == orphans  # the same content-hash names
    events = lake.read_events(settings.lake_dir)
    assert len(events) == len(previous["events"]) + len(batch.events)
    assert set(lake.read_items(settings.lake_dir)["price"]) == set(batch.items["price"])  # the newest catalog wins
    assert [r["batch_id"] for r in lake.batch_records(settings.lake_dir)][-1] == batch.batch_id


def test_reingesting_a_batch_whose_manifest_write_failed_completes_it(settings, monkeypatch):
    def lost_power(*args):
        raise OSError("the disk went away")

    with monkeypatch.context() as patch:
        patch.setattr(lake, "_write_manifest", lost_power)
        with pytest.raises(OSError, match="disk went away"):
            ingest(SHOP, "events", settings)
    on_disk = lake.event_files(settings.lake_dir, include_unlisted=True)
    assert on_disk  # the day files were written ...
    assert lake.event_files(settings.lake_dir) == [] and len(lake.read_events(settings.lake_dir)) == 0  # ... unread
    assert len(lake.read_items(settings.lake_dir)) == 0
    report = ingest(SHOP, "events", settings)
    assert report.status == "accepted", report.failures
    assert lake.event_files(settings.lake_dir) == on_disk  # the same files, now named by the manifest
    assert len(lake.read_events(settings.lake_dir)) == report.counts["events"] == 48
    assert len(lake.read_items(settings.lake_dir)) == report.counts["catalog_items"] > 0


def test_the_real_time_event_log_is_read_whole(settings):
    """The real-time event log (``shoprec.event_log``: segments, no manifests): all of it counts."""
    log_dir = tables.event_log_dir(settings)
    events = generate(50, seed=4, days=2).events
    event_log.EventLog(log_dir).append(events)
    assert len(event_log.read_events(log_dir)) == len(events.drop_duplicates(["user_id", "item_id", "event_type", "timestamp"]))


# --- a changed served variant is refused at load ----------------------------------------------
def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_flipped_byte_in_a_served_variant_is_refused_and_the_old_version_keeps_serving(tmp_path):
    home = tmp_path / "home"
    redis = RedisServer(home / "redis").start()
    server = None
    try:
        settings = shop_settings(home, redis.port)
        trained = prepare_shop(settings, n_events=2000, epochs=1)["version"]
        parent = load_recommender(trained, settings)
        folded = fold_text_tower(parent.torch_model)
        serving = save_variant(dynamic_int8(folded), parent, settings.models_dir)  # real compressed variants
        altered = save_variant(compressed_table(folded, "int8_row"), parent, settings.models_dir)
        promote(serving, settings)
        server = Server(settings, log_path=home / "serve.log").start()
        assert call(server, "GET", "/model", token=TOKEN)[1]["model_version"] == serving

        flip_a_byte(settings.models_dir / altered / "model.safetensors")
        with pytest.raises(ArtifactError, match="checksum"):
            load_recommender(altered, settings)
        with pytest.raises(ArtifactError, match="checksum"):
            promote(altered, settings)
        status, body = call(server, "POST", "/admin/reload", {"version": altered}, token=TOKEN)
        assert status == 200 and body["status"] == "failed" and body["serving"] == serving, body
        assert body["failure"]["version"] == altered and "checksum" in body["failure"]["error"]  # the admin sees why

        write_text_atomically(settings.models_dir / POINTER, altered + "\n")  # the files changed after promotion
        time.sleep(2.0)  # the pointer watcher (every 0.5 s) finds it and fails to load it
        _, info = call(server, "GET", "/model", token=TOKEN)
        assert info["model_version"] == serving
        assert info["last_reload_failure"]["version"] == altered
        assert info["last_reload_failure"]["error"] == "ArtifactError"  # /model: its kind only, no paths
        history = parent.item_ids[:3]
        status, answer = call(server, "POST", "/recommend", {"history": list(history), "k": 3}, token=TOKEN)
        assert status == 200 and answer["model_version"] == serving and len(answer["items"]) == 3, answer
    finally:
        if server is not None:
            server.stop()
        redis.kill()
