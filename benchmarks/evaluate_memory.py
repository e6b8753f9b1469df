"""Peak resident memory of ranking a 100,000-item catalog for many users, with and without
handing freed memory back to the OS after each batch (``shoprec.memory``).

    python benchmarks/evaluate_memory.py                    # 20,000 and 60,000 users
    python benchmarks/evaluate_memory.py --users 110000     # the 10 M-event shop's hold-out

Each run is a fresh child process: random histories (1-200 items), the popularity scorer,
``training.evaluate.evaluate_scorer`` as the evaluate step calls it. ``kept`` is the code as it
is; ``without`` replaces ``release_freed_memory`` by a no-op (the code before). Both arms of a
size run one after the other in the same invocation. Writes ``docs/results/evaluate_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "results"


def measure(users: int, items: int, release: bool) -> dict:
    import numpy as np

    import training.evaluate as evaluate
    from training.baselines import popularity_scorer
    from training.data import EvalSet

    if not release:
        evaluate.release_freed_memory = lambda: False
    rng = np.random.default_rng(0)
    inputs = [rng.integers(1, items + 1, n) for n in rng.integers(1, 200, users)]
    evalset = EvalSet(inputs, rng.integers(1, items + 1, users))
    counts = np.bincount(np.concatenate(inputs), minlength=items + 1)
    started = time.perf_counter()
    evaluate.evaluate_scorer(popularity_scorer(inputs, items + 1), evalset, counts)
    return {"users": users, "items": items, "release": release, "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, action="append", help="hold-out users (repeat; default 20,000 and 60,000)")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.items, args.child[1] == "1")))
        return
    rows = []
    for users in args.users or [20_000, 60_000]:
        for release in (False, True):
            out = subprocess.run([sys.executable, __file__, "--items", str(args.items), "--child", str(users), str(int(release))],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    lines = ["# Evaluation memory: ranking a large catalog for many users", "",
             f"`python benchmarks/evaluate_memory.py` ({args.items:,} items, popularity scorer, one child process per row)", "",
             "| users | freed memory returned | seconds | peak RSS MiB |", "|---:|---|---:|---:|"]
    lines += [f"| {r['users']:,} | {'yes' if r['release'] else 'no (before)'} | {r['seconds']} | {r['peak_rss_mib']:,} |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "evaluate_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
