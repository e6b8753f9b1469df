"""The offline engines side by side: build, materialize and a training set on DuckDB and on Spark.

    python benchmarks/offline_engine.py [--events 1000000] [--engines duckdb,spark]
                                        [--training-rows 50000] [--seed 0]

One synthetic shop (``simulator.shop.generate``) goes into the lake of a temporary
SHOPREC_HOME per engine (``offline_store.engine``); the feature tables are built (text
embeddings skipped: they measure MiniLM, not the engine), applied, materialized in full to
the SQLite online store, and a point-in-time training set of ``--training-rows`` (user, time)
rows is read. Spark runs in local mode (``offline_store.spark_master``, ``local[2]``): its
first query also pays the JVM's start, reported apart (``spark_start_s``). The machine is
shared, so the load average is reported with the times. Results: docs/results/offline_engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoprec import lake  # noqa: E402  (after the repo is on the path)
from shoprec.config import load_settings  # noqa: E402
from shoprec.features import offline_engine, store, tables  # noqa: E402
from simulator.shop import generate  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@dataclass(frozen=True)
class EngineRun:
    engine: str
    events: int
    spark_start_s: float  # the JVM and session (0 for DuckDB)
    build_s: float
    materialize_s: float
    training_set_s: float
    training_rows: int
    table_rows: dict[str, int]
    online_rows: int
    load_average: float  # 1-minute, at the end


def run_engine(engine: str, batch, training_rows: int, root: Path) -> EngineRun:
    settings = load_settings(home=root / engine, offline_store={"engine": engine})
    lake.write_batch(settings.lake_dir, batch)
    started = time.perf_counter()
    if engine == "spark":
        offline_engine.spark_session(settings)
    spark_start = time.perf_counter() - started
    built, build_s = timed(lambda: tables.build_tables(settings, encode_texts=False))
    store.apply(settings)
    end = pd.Timestamp(batch.events["timestamp"].max()) + pd.Timedelta(seconds=1)
    materialized, materialize_s = timed(lambda: store.materialize(settings, end=end))
    sample = batch.events.sample(min(training_rows, len(batch.events)), random_state=0)
    entity_df = pd.DataFrame({"user_id": sample["user_id"].to_numpy(), "event_timestamp": sample["timestamp"].to_numpy()})
    refs = ["user_recent_items:item_ids", "user_recent_items:event_types"]
    training, training_s = timed(lambda: store.training_set(entity_df, settings, refs))
    return EngineRun(engine, len(batch.events), round(spark_start, 2), round(build_s, 2), round(materialize_s, 2),
                     round(training_s, 2), len(training), built.rows,
                     sum(v.written for v in materialized.views.values()), round(os.getloadavg()[0], 2))


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--engines", default="duckdb,spark", help="comma-separated: duckdb, spark")
    parser.add_argument("--training-rows", type=int, default=50_000, help="(user, time) rows of the training set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    batch = generate(args.events, seed=args.seed)
    root = Path(tempfile.mkdtemp(prefix="shoprec-offline-engine-"))
    try:
        runs = [run_engine(engine, batch, args.training_rows, root) for engine in args.engines.split(",")]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = [asdict(r) for r in runs]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "offline_engine.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
