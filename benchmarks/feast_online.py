"""Feast online-store figures: SQLite vs Redis side by side, materialization throughput, push latency.

    python benchmarks/feast_online.py [--users 64] [--reads 500] [--synthetic-events 1000000] [--skip-beauty]

Uses its own SHOPREC_HOME under a temp dir, Redis db 8 and PostgreSQL database
shoprec_bench (both emptied at the end). "Everything the model needs" for one user
= user_recent_items (3 lists); what /recommend then reads for its candidates = item_stats
availability and price of 15 items (k=10 plus prefetch).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import redis
from sqlalchemy import create_engine, text

from shoprec import lake
from shoprec.adapters import read_batch
from shoprec.adapters.base import Batch
from shoprec.config import SHARED_DATA_DIR, load_settings
from shoprec.features import store, tables
from shoprec.features.online import OnlineFeatures

REDIS = "127.0.0.1:6379,db=8"
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/shoprec_bench"
MODEL_INPUTS = [f"user_recent_items:{c}" for c in ("item_ids", "event_types", "timestamps")]
CANDIDATES = 15  # items whose state one /recommend answer reads (k=10 plus prefetch)


def settings_for(backend: str, home: Path):
    extra = {}
    if backend == "redis":
        extra = {"online_store": {"type": "redis", "redis_connection_string": REDIS}, "registry": {"type": "sql", "sql_url": PG}}
    return load_settings(home=home, **extra)


def synthetic(n_events: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n_events // 20, 1), max(n_events // 50, 1)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    events = pd.DataFrame({
        "user_id": rng.zipf(1.3, n_events) % n_users,
        "item_id": rng.zipf(1.2, n_events) % n_items,
        "event_type": rng.choice(["view", "add_to_cart", "purchase"], n_events, p=[0.8, 0.15, 0.05]),
        "timestamp": start + pd.to_timedelta(np.sort(rng.integers(0, 90 * 86400, n_events)), unit="s"),
    })
    items = pd.DataFrame({"item_id": np.arange(n_items), "title": "", "category": rng.choice(["a", "b", "c"], n_items)})
    return Batch.from_frames(events, items, source=f"synthetic:{n_events}")


def percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1000
    return f"p50 {np.percentile(ms, 50):.3f} ms  p99 {np.percentile(ms, 99):.3f} ms"


def prepare(batch: Batch, backend: str, home: Path, skip_embeddings: bool):
    s = settings_for(backend, home)
    lake.write_batch(s.lake_dir, batch)
    t = time.perf_counter()
    if not skip_embeddings:
        report = tables.build_tables(s, progress=True)
    else:  # text embeddings of a synthetic catalog measure MiniLM, not Feast
        report = build_without_text(s)
    build_s = time.perf_counter() - t
    store.apply(s)
    t = time.perf_counter()
    mat = store.materialize(s, end=pd.Timestamp("2030-01-01", tz="UTC"))
    mat_s = time.perf_counter() - t
    rows = sum(v.entities for v in mat.views.values())  # entities written (each one's newest row)
    print(f"  [{backend}] build {build_s:.1f} s ({report.rows}); materialize {rows} entity rows in {mat_s:.1f} s = {rows / mat_s:,.0f} rows/s"
          " (benchmarks/materialize.py measures it at scale)")
    return s


def build_without_text(s):
    return tables.build_tables(s, encode_texts=False)


def read_latency(s, users: list[str], n_users: int, reads: int) -> str:
    online = OnlineFeatures(s)
    fs = online.store
    samples = []
    for k in range(reads):
        batch = [users[(k * n_users + j) % len(users)] for j in range(n_users)]
        t = time.perf_counter()
        fs.get_online_features(features=MODEL_INPUTS, entity_rows=[{"user_id": u} for u in batch]).to_dict()
        samples.append(time.perf_counter() - t)
    return percentiles(samples)


def item_state_latency(s, items: list[str], reads: int) -> str:
    online = OnlineFeatures(s)
    samples = []
    for k in range(reads):
        batch = [items[(k * CANDIDATES + j) % len(items)] for j in range(CANDIDATES)]
        t = time.perf_counter()
        online.item_states(batch)
        samples.append(time.perf_counter() - t)
    return percentiles(samples)


def push_latency(s, pushes: int) -> str:
    online = OnlineFeatures(s)
    samples = []
    for k in range(pushes):
        ev = pd.DataFrame({"user_id": [f"bench-{k % 10}"], "item_id": [f"x{k}"], "event_type": ["view"], "timestamp": [pd.Timestamp.now(tz="UTC")]})
        t = time.perf_counter()
        online.push_events(ev)
        seen = online.recent_items([f"bench-{k % 10}"])[f"bench-{k % 10}"][-1] == f"x{k}"
        samples.append(time.perf_counter() - t)
        assert seen
    return percentiles(samples)


def cleanup() -> None:
    redis.Redis(host="127.0.0.1", port=6379, db=8).flushdb()
    engine = create_engine(PG.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS shoprec_bench WITH (FORCE)"))
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--reads", type=int, default=500)
    ap.add_argument("--pushes", type=int, default=200)
    ap.add_argument("--synthetic-events", type=int, default=1_000_000)
    ap.add_argument("--skip-beauty", action="store_true")
    args = ap.parse_args()
    cleanup()
    root = Path(tempfile.mkdtemp(prefix="shoprec-bench-"))
    try:
        datasets = [] if args.skip_beauty else [("beauty", lambda: read_batch("s3rec", SHARED_DATA_DIR / "amazon-beauty"), False)]
        if args.synthetic_events:
            datasets.append((f"synthetic-{args.synthetic_events}", lambda: synthetic(args.synthetic_events), True))
        for name, load, skip_text in datasets:
            print(f"== {name}")
            batch = load()
            users = sorted(batch.events["user_id"].unique())
            items = sorted(batch.items["item_id"].unique())
            for backend in ("sqlite", "redis"):
                s = prepare(batch, backend, root / f"{name}-{backend}", skip_text)
                print(f"  [{backend}] read 1 user  x {args.reads}: {read_latency(s, users, 1, args.reads)}")
                print(f"  [{backend}] read {args.users} users x {args.reads // 5}: {read_latency(s, users, args.users, args.reads // 5)}")
                print(f"  [{backend}] item state of {CANDIDATES} items x {args.reads}: {item_state_latency(s, items, args.reads)}")
                print(f"  [{backend}] push -> visible x {args.pushes}: {push_latency(s, args.pushes)}")
            cleanup()
    finally:
        cleanup()


if __name__ == "__main__":
    main()
