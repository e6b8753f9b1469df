"""Materialization throughput: full and incremental ``shoprec features materialize``, SQLite and Redis.

    python benchmarks/materialize.py [--events 10000000] [--changed-users 10000] [--stores sqlite,redis]
                                     [--label after] [--seed 0]

A synthetic shop (``simulator.shop.generate``: ~20 events per user, catalog events/50 up to
100,000 items) goes into the lake of a temporary SHOPREC_HOME per store; the feature tables
are built (text embeddings skipped: they measure MiniLM, not the feature store), applied,
and materialized in full. Then ``--changed-users`` users get one new event each, an hour
after the shop's last event, the tables are rebuilt and an incremental materialization runs
(what the hourly features DAG does). Entity rows/s = users + items written online per second
of ``store.materialize``. A sample of users is read back through ``get_online_features`` and
compared with ``recent_items`` over the lake: a wrong fast path fails here, not in silence.

Redis: a private ``redis-server`` on a free port (AOF, fsync every second, like production).
Results go to docs/results/materialize.json under ``--label`` (other labels are kept, so a
"before" run of the old code stays beside the "after" run) and docs/results/materialize.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoprec import lake  # noqa: E402  (after the repo is on the path)
from shoprec.adapters.base import Batch  # noqa: E402
from shoprec.config import load_settings  # noqa: E402
from shoprec.features import store, tables  # noqa: E402
from shoprec.features.sequence import recent_items  # noqa: E402
from simulator.shop import generate  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
CHECKED_USERS = 2_000  # users read back and compared with recent_items after each run


@dataclass(frozen=True)
class StoreRun:
    store: str
    events: int
    users: int
    items: int
    build_s: float
    full_s: float
    full_entity_rows: int
    full_rows_per_s: float
    full_cpu_s: float  # this process's CPU time: the machine is shared, wall time is not all ours
    incremental_build_s: float
    incremental_s: float
    incremental_users: int
    incremental_entity_rows: int
    checked_users: int
    mismatches: int
    peak_rss_mib: float


class RedisServer:
    """A private redis-server on a free port, durable like production (AOF, fsync every second)."""

    def __init__(self, data_dir: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data_dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def settings_for(backend: str, home: Path, redis_port: int | None):
    extra = {}
    if backend == "redis":
        extra = {"online_store": {"type": "redis", "redis_connection_string": f"127.0.0.1:{redis_port},db=0"}}
    return load_settings(home=home, **extra)


def build(settings) -> float:
    """The features build without the text embeddings (a synthetic catalog's titles measure MiniLM)."""
    started = time.perf_counter()
    try:
        tables.build_tables(settings, encode_texts=False)
    except TypeError:  # the code before the bulk build had no such switch
        tables.encode_item_texts = lambda *a, **k: 0
        tables.build_tables(settings)
    return time.perf_counter() - started


def entity_rows(report) -> int:
    """Users + items written online by one materialize: distinct entities of the rows it read."""
    views = report.views
    return sum(getattr(v, "entities", v.rows_read) for v in views.values())


def changed_users_batch(events: pd.DataFrame, n_users: int, seed: int) -> Batch:
    """One new event for each of ``n_users`` users, an hour after the shop's last event."""
    rng = np.random.default_rng([seed, 7])
    users = rng.choice(events["user_id"].unique(), size=min(n_users, events["user_id"].nunique()), replace=False)
    at = events["timestamp"].max() + pd.Timedelta(hours=1)
    items = rng.choice(events["item_id"].unique(), size=len(users))
    new = pd.DataFrame({"user_id": users, "item_id": items, "event_type": "view",
                        "timestamp": at + pd.to_timedelta(rng.integers(0, 3_600, len(users)), unit="s")})
    return Batch.from_frames(new, pd.DataFrame(columns=["item_id"]), source="bench:changed-users")


def mismatches(settings, events: pd.DataFrame, users: list[str]) -> int:
    """Users whose online sequence (``get_online_features``) differs from ``recent_items`` over the lake."""
    expected = recent_items(events[events["user_id"].isin(users)], settings.features.sequence_length).set_index("user_id")
    fs = store.feature_store(settings)
    got = fs.get_online_features(features=["user_recent_items:item_ids", "user_recent_items:event_types"],
                                 entity_rows=[{"user_id": u} for u in users]).to_dict()
    bad = 0
    for user, item_ids, kinds in zip(got["user_id"], got["item_ids"], got["event_types"]):
        bad += (item_ids or []) != expected.loc[user, "item_ids"] or (kinds or []) != expected.loc[user, "event_types"]
    return bad


def built_home(settings, batch: Batch, built: dict) -> float:
    """The lake and the tables in this store's home: built for the first store (and kept aside),
    copied for the next (at 10 M events a build takes minutes: it measures the tables, not the store)."""
    kept = Path(built["root"]) / "built"
    if not kept.exists():
        lake.write_batch(settings.lake_dir, batch)
        built["build_s"] = build(settings)
        shutil.copytree(settings.lake_dir, kept / "lake")
        for name in tables.TABLES:
            shutil.copy2(tables.table_path(settings, name), kept / f"{name}.parquet")
        return built["build_s"]
    shutil.copytree(kept / "lake", settings.lake_dir)
    _copy_tables(kept, settings)
    return built["build_s"]


def built_incremental(settings, built: dict) -> float:
    """The tables after the changed users' batch: built for the first store, copied for the next."""
    kept = Path(built["root"]) / "built-incremental"
    if not kept.exists():
        built["incremental_s"] = build(settings)
        kept.mkdir()
        for name in tables.TABLES:
            shutil.copy2(tables.table_path(settings, name), kept / f"{name}.parquet")
        return built["incremental_s"]
    _copy_tables(kept, settings)
    return built["incremental_s"]


def _copy_tables(folder: Path, settings) -> None:
    tables.offline_dir(settings).mkdir(parents=True, exist_ok=True)
    for name in tables.TABLES:
        shutil.copy2(folder / f"{name}.parquet", tables.table_path(settings, name))


def run_store(backend: str, batch: Batch, root: Path, changed: int, seed: int, redis_port: int | None,
              built: dict) -> StoreRun:
    settings = settings_for(backend, root / backend, redis_port)
    build_s = built_home(settings, batch, built)
    store.apply(settings)
    started, cpu = time.perf_counter(), time.process_time()
    full = store.materialize(settings, progress=True)
    full_s, full_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    users_table = pd.read_parquet(tables.table_path(settings, "user_recent_items"), columns=["user_id"])
    items_table = pd.read_parquet(tables.table_path(settings, "item_stats"), columns=["item_id"])
    full_rows = users_table["user_id"].nunique() + items_table["item_id"].nunique()
    print(f"  [{backend}] full: {full_rows:,} entity rows in {full_s:.1f} s (CPU {full_cpu_s:.1f} s) = {full_rows / full_s:,.0f} rows/s "
          f"(report: {full.to_dict()['views']})", flush=True)

    events = lake.read_events(settings.lake_dir)
    update = changed_users_batch(events, changed, seed)
    lake.write_batch(settings.lake_dir, update)
    incremental_build_s = built_incremental(settings, built)
    started = time.perf_counter()
    # as the features DAG does: from the oldest event of the batch just ingested
    incremental = store.materialize(settings, progress=True, since=update.events["timestamp"].min())
    incremental_s = time.perf_counter() - started
    print(f"  [{backend}] incremental ({len(update.events):,} changed users): {incremental_s:.2f} s "
          f"(build {incremental_build_s:.1f} s; report: {incremental.to_dict()['views']})", flush=True)

    events = lake.read_events(settings.lake_dir)
    rng = np.random.default_rng([seed, 9])
    sample = sorted(set(rng.choice(events["user_id"].unique(), CHECKED_USERS // 2).tolist())
                    | set(update.events["user_id"].iloc[: CHECKED_USERS // 2].tolist()))
    bad = mismatches(settings, events, sample)
    print(f"  [{backend}] read back {len(sample)} users through get_online_features: {bad} differ from recent_items", flush=True)
    return StoreRun(
        store=backend, events=int(len(batch.events)), users=int(batch.events["user_id"].nunique()),
        items=int(items_table["item_id"].nunique()), build_s=round(build_s, 1), full_s=round(full_s, 2),
        full_entity_rows=int(full_rows), full_rows_per_s=round(full_rows / full_s), full_cpu_s=round(full_cpu_s, 2),
        incremental_build_s=round(incremental_build_s, 1), incremental_s=round(incremental_s, 2),
        incremental_users=int(len(update.events)), incremental_entity_rows=entity_rows(incremental),
        checked_users=len(sample), mismatches=int(bad),
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


PROFILE_NOTES = """Where the time went (py-spy, `py-spy record -r 10 -f raw -- python benchmarks/materialize.py ...`):

- before (Feast's `store.materialize` per 30-day chunk for `item_stats`, `write_to_online_store` per lock
  bucket for users; 1 M events): half the materialization was Feast's DataFrame -> protobuf conversion
  (`_convert_arrow_to_proto`, `python_values_to_proto_values`, one `_python_datetime_to_int_timestamp` per
  timestamp list), a quarter Feast's SQLite writer (one `execute` per feature value), 10 % re-reading
  every user's whole online row through `get_online_features` to compare timestamps, 10 % the item-state
  push (whole `item_stats` through pandas), and the registry deserialised on every write. The build
  (not timed as materialization) spent 35 % in per-group lambdas of `item_stats`.
- after (10 M events): the point-in-time `user_recent_items` table is 10 M rows, 1.5 GB; the newest row
  of each user is marked and stored last, so only those row groups are decoded. SQLite: `executemany`
  and its commits (I/O into a 1 GB B-tree in random key order) are ~40 % of the full run, the protobuf
  conversion ~15 %. Redis: Feast's `RedisOnlineStore.online_write_batch` (its own timestamp read,
  `serialize_entity_key`, one `hset` per entity through redis-py) is most of it. The first run's
  item-state push no longer rewrites every item (it was ~20 %): an item's newest row goes online once,
  stamped as its push. Per entity, CPU grows from ~40 us (1 M events) to ~40-70 us (10 M): longer
  sequences (up to 50 items x 3 lists) and a bigger SQLite file.
- wall time on this shared 2-core machine ran 2-4x the process's CPU time (load average 6-9 from other
  jobs): the CPU column is the better figure of the code; rows/s use wall time.
- session 7 (`h1-*` rows; before: `before-loaded`, the previous code, py-spy attached;
  1 M events): per entity the Redis path spent ~23 us of CPU building, serializing and freeing a
  `ValueProto` per value, and Feast's writer ~25 us more (`serialize_entity_key`, `Timestamp.FromDatetime`,
  a murmur hash per value, redis-py's pack + parse for an HMGET and an HSET per entity). Now the columns
  are encoded straight into protobuf bytes with numpy (`shoprec/features/value_bytes.py`: 10,000 users'
  three lists in ~47 ms of CPU instead of ~170 ms), and `ShopRecRedisOnlineStore` compares and writes on
  the server, one script call per 500 entities, each sent before the previous one's reply is read (writing
  39,223 users' rows, encoding included: 0.43 s of client CPU and 0.25 s of server CPU, against 5.7 s and
  0.34 s for Feast's `_convert_arrow_to_proto` + `RedisOnlineStore.online_write_batch`, same rows, private
  redis-server, measured with `INFO cpu`). SQLite: the hourly run read every changed user's whole
  online row (parsing its lists) to compare one time: `online_times` reads only the times; the first
  run's window start comes from the row-group statistics instead of reading the time column. What is
  left (cProfile, 1 M events): SQLite's own `executemany` (upserts into a 100 MB B-tree whose pages are
  cold in a new process: ~60 % of an hourly run), decoding the newest rows' row group (its list columns:
  ~0.2-0.5 s for 39,223 users, the whole last row group being read), and on Redis the server's script time.
  Load average on the 2 cores (4 helpers at work): ~8 for `before-loaded`, ~5-7 for `h1-1m`; wall time
  ran 2-4x CPU time, so the targets (Redis >= 50,000 rows/s, SQLite >= 20,000, hourly <= 2 s) are still
  to be judged on a quiet machine: compare the CPU column.
"""


def write_results(label: str, command: str, runs: list[StoreRun]) -> None:
    path = RESULTS / "materialize.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[label] = {"command": command, "runs": [asdict(r) for r in runs]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "materialize.md").write_text(render(results))


def render(results: dict) -> str:
    lines = ["# Materialization throughput (2-core machine)", "",
             "Full `store.materialize` of a synthetic shop, then an incremental run after one new event for "
             "each changed user (the hourly features DAG). Entity rows = users + items written online. "
             "`mismatches`: sampled users whose online row (read through `get_online_features`) differs from "
             "`recent_items` over the lake. `before`: the code before the bulk path (its figure of record, "
             "at 1 M events: at 10 M it would run for hours).", "",
             "| label | store | events | users | items | build s | full s | full CPU s | full rows/s | incr. users | incr. s | mismatches | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        for r in result["runs"]:
            lines.append(f"| {name} | {r['store']} | {r['events']:,} | {r['users']:,} | {r['items']:,} | {r['build_s']} | "
                         f"{r['full_s']} | {r.get('full_cpu_s', '-')} | {r['full_rows_per_s']:,} | {r['incremental_users']:,} | "
                         f"{r['incremental_s']} | {r['mismatches']}/{r['checked_users']} | {r['peak_rss_mib']:,} |")
    lines += ["", "Commands:", ""] + [f"- {name}: `{result['command']}`" for name, result in results.items()]
    return "\n".join(lines) + "\n\n" + PROFILE_NOTES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000, help="events of the synthetic shop (~20 per user)")
    ap.add_argument("--changed-users", type=int, default=10_000, help="users with a new event before the incremental run")
    ap.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite, redis")
    ap.add_argument("--label", default="after", help="the results' key in docs/results/materialize.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.perf_counter()
    batch = generate(args.events, seed=args.seed, progress=True)
    print(f"generated {len(batch.events):,} events, {batch.events['user_id'].nunique():,} users in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    root = Path(tempfile.mkdtemp(prefix="shoprec-materialize-"))
    server = RedisServer(root / "redis") if "redis" in args.stores else None
    try:
        built: dict = {"root": root}
        runs = [run_store(b, batch, root, args.changed_users, args.seed, server and server.port, built)
                for b in args.stores.split(",")]
    finally:
        if server:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_results(args.label, "python " + " ".join(sys.argv), runs)
    for r in runs:
        print(f"{r.store}: full {r.full_rows_per_s:,} entity rows/s ({r.full_entity_rows:,} in {r.full_s} s); "
              f"incremental {r.incremental_users:,} users in {r.incremental_s} s; mismatches {r.mismatches}/{r.checked_users}")


if __name__ == "__main__":
    main()
