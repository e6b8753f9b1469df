"""Ingest + validate one million synthetic events; prints wall time and peak memory.

    python benchmarks/ingest_1m.py [--events 1000000] [--seed 0]

The shop is generated first (not timed as ingestion) and written as events.parquet +
items.parquet; the ingestion then runs in a fresh child process, so its peak RSS is the
ingestion's own (read, conform, clean, Great Expectations gate with Data Docs, lake write).
State goes to a temporary SHOPREC_HOME that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoprec.config import child_env, load_settings  # noqa: E402  (after the repo is on the path)
from simulator.shop import generate, write_generated  # noqa: E402


def generate_shop(n_events: int, seed: int, out: Path) -> float:
    started = time.perf_counter()
    write_generated(generate(n_events, seed=seed, progress=True), out)
    return time.perf_counter() - started


def ingest_and_measure(folder: Path) -> dict:
    # here: only the child process ingests; the parent, which generates, never loads Great Expectations
    import great_expectations  # noqa: F401 - imported up front so the timing is the ingestion's

    from shoprec.ingest import ingest

    started = time.perf_counter()
    report = ingest(folder, "events", load_settings())
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "status": report.status,
        "failures": report.failures,
        "counts": report.counts,
        "cleaning": report.cleaning,
        "ingest_seconds": round(seconds, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),  # includes imports; wall time suffers on a shared machine
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ingest-only", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.ingest_only:
        print(json.dumps(ingest_and_measure(args.ingest_only)))
        return
    with tempfile.TemporaryDirectory(prefix="shoprec-bench-") as tmp:
        shop = Path(tmp) / "shop"
        gen_seconds = generate_shop(args.events, args.seed, shop)
        env = child_env(load_settings(home=Path(tmp) / "home"))
        child = subprocess.run([sys.executable, __file__, "--ingest-only", str(shop)],
                               env=env, capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
    result["generate_seconds"] = round(gen_seconds, 1)
    print(json.dumps(result, indent=2))
    print(f"\n{args.events:,} events: ingest + validate {result['ingest_seconds']} s "
          f"(CPU {result['cpu_seconds']} s), peak RSS {result['peak_rss_mib']} MiB ({result['status']}); generation took {result['generate_seconds']} s")


if __name__ == "__main__":
    main()
