"""Bounded load on the recommendation service over loopback, with wrk (a C load generator).

Sets up a throw-away shop (synthetic data, Feast with a Redis online store on a
private port, a quick model and its compressed variant), then for three configurations
of the same service, one after the other on the same machine, data and features:
  served : the compressed variant (``--variant``, default onnx: the one the compression
           gate picked on Beauty, built with training.compression; ``none`` serves the
           FP32 PyTorch model), with adaptive batching (concurrent requests share one
           online-store read and model call), ``--workers`` worker processes (2: the
           production profile's one per core)
  unbatched : the served configuration with batching off (what batching buys)
  naive  : the FP32 PyTorch model, no batching (serving.batch_max_size=1), one worker
Each is promoted to production before its server starts. wrk runs at concurrency 1, 8
and 32 on POST /recommend for known users (p50/p99 latency, requests/s, errors); then
event-to-recommendation freshness: POST /events for a new user, then /recommend until
it answers from the model with that event (p50/p99 over --fresh-trials).

    python benchmarks/service_load.py [--seconds 10] [--events 20000] [--catalog-size 0 100000]
                                      [--configs served unbatched naive] [--variant onnx] [--json]

``--catalog-size`` runs one shop per size, side by side in one run (0: the generator's
catalog for ``--events``, 400 items at 20,000 events; 100000: a 100,000-item catalog, every
item in the model's vocabulary and scored per request). Writes
docs/results/service_load.{md,json} (``--out``) and prints the table.

Targets (2 cores): p99 <= 25 ms at c=8, >= 300 req/s at c=32 (>= 1,000 at 100,000 items),
zero errors, freshness p99 <= 100 ms. Needs `wrk` (apt-get install wrk) and redis-server.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from shoprec.config import Settings  # noqa: E402  (after the repo is on the path)
from tests.service_harness import (READ_TOKEN, WRITE_TOKEN, RedisServer, Server, call, prepare_shop,  # noqa: E402
                                   shop_settings)
from training.artifact import load_recommender  # noqa: E402
from training.compression.folding import fold_text_tower  # noqa: E402
from training.compression.onnx_export import onnx_fp32, onnx_int8  # noqa: E402
from training.compression.quantization import dynamic_int8  # noqa: E402
from training.compression.variant import save_variant  # noqa: E402
from training.registry import promote  # noqa: E402

LUA = """
local users = {}
for line in io.lines("%(users)s") do users[#users + 1] = line end
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
request = function()
  counter = counter + 1
  local body = '{"user_id": "' .. users[(counter %% #users) + 1] .. '", "k": 10}'
  return wrk.format(nil, "/recommend", nil, body)
end
"""
NAIVE = {"batch_max_size": 1, "workers": 1}  # settings.serving overrides
CONFIGS = ("served", "unbatched", "naive")
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def compressed_variant(settings: Settings, version: str, method: str) -> str:
    """Save the ``method`` variant (training.compression) of ``version``; returns the variant version."""
    parent = load_recommender(version, settings)
    folded = fold_text_tower(parent.torch_model)
    with tempfile.TemporaryDirectory() as work:
        makers = {
            "dynamic_int8": lambda: dynamic_int8(folded),
            "onnx": lambda: onnx_fp32(folded, Path(work)),
            "onnx_int8": lambda: onnx_int8(onnx_fp32(folded, Path(work)), Path(work)),
        }
        return save_variant(makers[method](), parent, settings.models_dir)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def parse_wrk(out: str) -> dict:
    pct = {m[0]: _ms(m[1], m[2]) for m in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"p50_ms": pct.get("50"), "p99_ms": pct.get("99"), "rps": rps, "requests": total, "errors": non2xx + sock}


def run_wrk(url: str, script: Path, concurrency: int, seconds: int) -> dict:
    threads = min(concurrency, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    return {"concurrency": concurrency, **parse_wrk(out)}


def freshness(server: Server, item_ids: list[str], trials: int) -> dict:
    times = []
    for n in range(trials):
        user = f"fresh-bench-{time.time_ns()}-{n}"
        start = time.perf_counter()
        status, _ = call(server, "POST", "/events", {"events": [{"user_id": user, "item_id": item_ids[n % len(item_ids)], "event_type": "view"}]}, token=WRITE_TOKEN)
        assert status == 200
        while call(server, "POST", "/recommend", {"user_id": user, "k": 10}, token=READ_TOKEN)[1]["fallback"]:
            if time.perf_counter() - start > 5:
                break
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"trials": trials, "p50_ms": times[len(times) // 2], "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))]}


def bench_shop(n_events: int, n_items: int | None, args: argparse.Namespace) -> dict:
    """One throw-away shop (its own home and Redis) through every configuration of ``args.configs``."""
    home = Path(tempfile.mkdtemp(prefix="shoprec-bench-"))
    redis = RedisServer(home / "redis").start()
    try:
        settings = shop_settings(home, redis.port)
        started = time.perf_counter()
        text = n_items is None or n_items <= args.text_max_items
        shop = prepare_shop(settings, n_events, n_items=n_items, hyperparameters={"use_text": text})
        setup_seconds = time.perf_counter() - started
        served_version = shop["version"] if args.variant == "none" else compressed_variant(settings, shop["version"], args.variant)
        served = {"workers": args.workers}
        configs = {  # settings.serving overrides of each configuration
            "served": (served_version, served),
            "unbatched": (served_version, {**served, "batch_max_size": 1}),
            "naive": (shop["version"], NAIVE),
        }
        users = home / "users.txt"
        users.write_text("\n".join(shop["events"]["user_id"].drop_duplicates().astype(str)) + "\n")
        script = home / "recommend.lua"
        script.write_text(LUA % {"users": users, "token": READ_TOKEN})  # a token_urlsafe: nothing to escape in Lua
        n_catalog = int(shop["items"]["item_id"].nunique())
        report = {"events": n_events, "catalog_items": n_catalog, "setup_seconds": round(setup_seconds, 1), "configs": {}}
        for name in args.configs:
            version, serving = configs[name]
            report["configs"][name] = bench_config(settings, home, name, version, serving, script, shop, args)
        return report
    finally:
        redis.kill()
        shutil.rmtree(home, ignore_errors=True)


def bench_config(settings: Settings, home: Path, name: str, version: str, serving: dict, script: Path, shop: dict,
                 args: argparse.Namespace) -> dict:
    promote(version, settings)
    # the pointer polled once a minute, not every 0.5 s: the version is promoted before the server starts
    server_settings = settings.with_overrides(serving={"reload_poll_seconds": 60, **serving})
    server = Server(server_settings, log_path=home / f"serve-{name}.log").start(timeout=300)
    try:
        assert call(server, "GET", "/model", token=READ_TOKEN)[1]["model_version"] == version
        for _ in range(20):
            call(server, "POST", "/recommend", {"user_id": "warm-up", "k": 10}, token=READ_TOKEN)
        levels = [run_wrk(server.url, script, c, args.seconds) for c in (1, 8, 32)]
        fresh = freshness(server, shop["items"]["item_id"].astype(str).tolist(), args.fresh_trials)
        return {"model_version": version, "load": levels, "freshness": fresh}
    finally:
        server.stop()


def markdown(report: dict) -> str:
    lines = [f"wrk {report['seconds']} s per level over loopback, Redis online store, {report['events']:,} synthetic "
             f"events per shop, variant {report['variant']}, {report['workers']} workers (served/unbatched)", "",
             "| catalog items | config | c | p50 ms | p99 ms | req/s | errors |", "|---|---|---|---|---|---|---|"]
    fresh = []
    for shop in report["shops"]:
        for name, r in shop["configs"].items():
            for lv in r["load"]:
                lines.append(f"| {shop['catalog_items']:,} | {name} | {lv['concurrency']} | {lv['p50_ms']:.2f} | "
                             f"{lv['p99_ms']:.2f} | {lv['rps']:.0f} | {lv['errors']} |")
            f = r["freshness"]
            fresh.append(f"| {shop['catalog_items']:,} | {name} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {f['trials']} |")
    lines += ["", "Event -> recommendation freshness:", "", "| catalog items | config | p50 ms | p99 ms | events |",
              "|---|---|---|---|---|", *fresh]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per concurrency level")
    parser.add_argument("--events", type=int, default=20000, help="synthetic events in each shop")
    parser.add_argument("--catalog-size", type=int, nargs="+", default=[0], metavar="N",
                        help="catalog sizes to measure side by side, one shop each (0: the generator's size for "
                             "--events, 400 items at 20,000 events), e.g. --catalog-size 0 100000")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS,
                        help="configurations to run on each shop")
    parser.add_argument("--text-max-items", type=int, default=20000,
                        help="larger catalogs train on item ids only (MiniLM over 100,000 titles takes minutes; "
                             "the served ONNX variant folds the text tower away either way)")
    parser.add_argument("--fresh-trials", type=int, default=100)
    parser.add_argument("--variant", default="onnx", choices=["onnx", "onnx_int8", "dynamic_int8", "none"],
                        help="compressed variant served in the 'served' configuration (none: FP32 PyTorch)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the served configuration")
    parser.add_argument("--out", type=Path, default=RESULTS / "service_load",
                        help="writes OUT.md and OUT.json")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")

    report = {"events": args.events, "seconds": args.seconds, "variant": args.variant, "workers": args.workers,
              "command": "python benchmarks/service_load.py " + " ".join(sys.argv[1:]), "shops": []}
    for size in tqdm(args.catalog_size, desc="shops", unit="shop"):
        report["shops"].append(bench_shop(args.events, size or None, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    args.out.with_suffix(".md").write_text(f"# Service load\n\n{text}\nCommand: `{report['command']}`\n")
    print(json.dumps(report, indent=2) if args.json else text)


if __name__ == "__main__":
    main()
