"""Ingest a CSV export larger than memory allows to hold: wall time, rows/s and peak RSS.

    python benchmarks/ingest_large.py --gigabytes 5      # the issue's target: peak RSS <= 2 GB
    python benchmarks/ingest_large.py --gigabytes 0.5    # a quick run

Writes ``events.csv`` + ``items.csv`` of about ``--gigabytes`` (a generated shop of
``--base-events`` written again and again, each copy with its own users and sessions and
shifted ``--days`` days further into the past, so no copy duplicates another and none lies in
the future, which the gate refuses), then ingests the folder in a
fresh child process through ``shoprec.ingest.ingest``: read in chunks, every row through the
Great Expectations gate, staged, cleaned by DuckDB, streamed into the lake. The child's peak
RSS (``ru_maxrss``) is the ingestion's own. Results go to ``docs/results/ingest_large.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shoprec.config import child_env, load_settings  # noqa: E402  (after the repo is on the path)

RESULTS = ROOT / "docs" / "results"


def write_export(folder: Path, gigabytes: float, base_events: int, days: int, seed: int) -> dict:
    """events.csv of about ``gigabytes`` and items.csv; returns rows and bytes written."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from simulator.shop import generate

    folder.mkdir(parents=True, exist_ok=True)
    batch = generate(base_events, seed=seed, days=days)
    batch.items.assign(attributes=batch.items["attributes"].map("|".join)).to_csv(folder / "items.csv", index=False)
    events = batch.events.assign(timestamp=batch.events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    base = pa.Table.from_pandas(events, preserve_index=False)
    target, rows, copies = gigabytes * 1e9, 0, 0
    path = folder / "events.csv"
    with pacsv.CSVWriter(path, base.schema) as writer:
        while path.stat().st_size < target:
            shift = -pd.Timedelta(days=days * copies)  # back in time: forward, 61 copies ran years into the future
            copy = events.assign(
                user_id=f"c{copies}-" + batch.events["user_id"], session_id=f"c{copies}-" + batch.events["session_id"],
                timestamp=(batch.events["timestamp"] + shift).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            writer.write_table(pa.Table.from_pandas(copy, schema=base.schema, preserve_index=False))
            rows, copies = rows + len(copy), copies + 1
    return {"rows": rows, "copies": copies, "bytes": path.stat().st_size}


def ingest_and_measure(folder: Path, chunk_rows: int | None) -> dict:
    import great_expectations  # noqa: F401 - imported up front so the timing is the ingestion's

    from shoprec.ingest import ingest

    settings = load_settings()
    if chunk_rows:
        settings = settings.with_overrides(ingest={"chunk_rows": chunk_rows})
    started = time.perf_counter()
    report = ingest(folder, "events", settings)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"status": report.status, "failures": report.failures[:5], "counts": report.counts,
            "cleaning": report.cleaning, "ingest_seconds": round(seconds, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "chunk_rows": settings.ingest.chunk_rows, "memory_limit": settings.ingest.staging_memory_limit,
            "lake_files": len(report.lake_files)}


def markdown(results: dict[str, dict]) -> str:
    rows = [f"| {r['bytes'] / 1e9:.2f} GB | {r['rows']:,} | {r['ingest_seconds']:,.0f} | {r.get('cpu_seconds', '-')} | "
            f"{r['rows'] / r['ingest_seconds']:,.0f} | {r['peak_rss_mib']:,.0f} | {r['chunk_rows']:,} | "
            f"{r['memory_limit']} | {r['status']} | `python benchmarks/ingest_large.py --gigabytes {r['gigabytes']:g}` |"
            for _, r in sorted(results.items(), key=lambda kv: float(kv[0]))]
    return "\n".join([
        "# Ingesting a large CSV export", "",
        f"On {os.cpu_count()} cores; one row per export size (the newest run of each).", "",
        "| CSV | rows | ingest s | CPU s | rows/s | peak RSS MiB | chunk rows | DuckDB memory limit | status | command |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---|", *rows, "",
        "Every row went through the Great Expectations gate (chunk by chunk), the batch was staged on disk and "
        "cleaned by DuckDB within its memory limit (duplicates found in buckets by a hash of the key above "
        "`staging_bucket_rows`), then streamed into the lake's day files.", ""])


def _previous_results() -> dict[str, dict]:
    path = RESULTS / "ingest_large.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if "rows" not in data else {f"{data['gigabytes']:g}": data}  # the one-run format before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=5.0, help="size of the CSV export (default 5)")
    parser.add_argument("--base-events", type=int, default=1_000_000, help="events of the shop that is copied")
    parser.add_argument("--days", type=int, default=30, help="days each copy spans")
    parser.add_argument("--chunk-rows", type=int, default=None, help="override settings.ingest.chunk_rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the export and the lake go (default: temp)")
    parser.add_argument("--ingest-only", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.ingest_only:
        print(json.dumps(ingest_and_measure(args.ingest_only, args.chunk_rows)))
        return
    with tempfile.TemporaryDirectory(prefix="shoprec-ingest-large-", dir=args.work_dir) as tmp:
        export = Path(tmp) / "export"
        started = time.perf_counter()
        written = write_export(export, args.gigabytes, args.base_events, args.days, args.seed)
        print(f"wrote {written['bytes'] / 1e9:.2f} GB, {written['rows']:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
        env = {**child_env(load_settings(home=Path(tmp) / "home")), "TQDM_DISABLE": "1"}
        command = [sys.executable, __file__, "--ingest-only", str(export)]
        if args.chunk_rows:
            command += ["--chunk-rows", str(args.chunk_rows)]
        child = subprocess.run(command, env=env, capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(child.stderr[-3000:])
        result = {**written, "gigabytes": args.gigabytes, **json.loads(child.stdout.strip().splitlines()[-1])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {**_previous_results(), f"{args.gigabytes:g}": result}
    (RESULTS / "ingest_large.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "ingest_large.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
