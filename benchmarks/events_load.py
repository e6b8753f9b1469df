"""Load on POST /events of the real service over loopback, with wrk, then the event log's files.

Sets up a throw-away shop (``tests.service_harness``: synthetic events, Feast with a Redis
online store on a private port, a quick model) and starts ``bentoml serve`` with
``--workers`` workers, as ``benchmarks/service_load.py`` does. Then, one after the other:

  bulk    : wrk at ``--bulk-concurrency`` posting 100-event bodies (new users from a pool, an
            ``event_id`` per event, so every event is written: none is a duplicate)
  single  : wrk at ``--single-concurrency`` posting one event per request
  fresh   : event-to-recommendation freshness, idle: POST /events for a new user, then
            /recommend until it answers from the model with that event (p50/p99)
  fill    : single-event requests until ``--requests`` (default 100,000) requests were
            made in all; the event log's file count then (and the one-file-per-push count
            the old log would have had), the compaction (``steps.compact_event_log``, the
            features DAG's step), its time and the file count after it, and a check that
            compaction kept every row it read exactly once (distinct (user_id, event_id)
            before = rows after).

    python benchmarks/events_load.py [--seconds 15] [--requests 100000] [--json]

Targets (2 cores): >= 5,000 events/s with 100-event bodies, >= 500 single-event requests/s,
freshness p99 <= 100 ms, zero errors, a bounded file count. Writes
docs/results/<--out>.{md,json} (default events_load). Needs `wrk` (apt-get install wrk) and redis-server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from entrypoints import steps  # noqa: E402  (after the repo is on the path)
from shoprec import event_log  # noqa: E402
from shoprec.features.tables import event_log_dir  # noqa: E402
from tests.service_harness import (READ_TOKEN, WRITE_TOKEN, RedisServer, Server, call, prepare_shop,  # noqa: E402
                                   shop_settings)

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
# one Lua state per wrk thread: ``setup`` numbers them, so event ids never collide
LUA = """
local counter = 0
local items = {}
for line in io.lines("%(items)s") do items[#items + 1] = line end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", "%(run)s-" .. threads)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
request = function()
  counter = counter + 1
  local events = {}
  for k = 1, %(per_request)d do
    local n = counter * %(per_request)d + k
    events[k] = '{"user_id": "load-' .. tid .. '-' .. (n %% %(users)d) .. '", "item_id": "' ..
      items[(n %% #items) + 1] .. '", "event_type": "view", "event_id": "' .. tid .. '-' .. n .. '"}'
  end
  return wrk.format(nil, "/events", nil, '{"events": [' .. table.concat(events, ",") .. ']}')
end
"""


@dataclass(frozen=True)
class Load:
    name: str
    concurrency: int
    events_per_request: int
    seconds: int
    requests: int
    rps: float
    events_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    service_cpu_ms_per_event: float  # CPU of the service's processes (all workers) per event written
    load_average: float  # the machine's 1-minute load average at the end (2 cores; other work shares them)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def parse_wrk(out: str) -> dict:
    import re

    pct = {m[0]: _ms(m[1], m[2]) for m in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"p50_ms": pct.get("50"), "p99_ms": pct.get("99"), "rps": rps, "requests": total, "errors": non2xx + sock}


def service_cpu_seconds(server: Server) -> float:
    root = psutil.Process(server.service.process.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_wrk(server: Server, home: Path, name: str, items: Path, per_request: int, concurrency: int,
            seconds: int, users: int) -> Load:
    script = home / f"{name}.lua"
    script.write_text(LUA % {"items": items, "token": WRITE_TOKEN, "per_request": per_request, "users": users,
                             "run": f"{name}{time.time_ns() % 10**9}"})
    cpu = service_cpu_seconds(server)
    out = subprocess.run(["wrk", f"-t{min(concurrency, 2)}", f"-c{concurrency}", f"-d{seconds}s", "--latency",
                          "-s", str(script), server.url], capture_output=True, text=True, check=True).stdout
    time.sleep(1)  # the requests wrk left in flight are answered
    cpu = service_cpu_seconds(server) - cpu
    got = parse_wrk(out)
    events = got["requests"] * per_request
    return Load(name, concurrency, per_request, seconds, got["requests"], got["rps"], got["rps"] * per_request,
                got["p50_ms"], got["p99_ms"], got["errors"], round(cpu * 1000 / max(events, 1), 3),
                os.getloadavg()[0])


def freshness(server: Server, item_ids: list[str], trials: int) -> dict:
    times = []
    for n in range(trials):
        user = f"fresh-{time.time_ns()}-{n}"
        start = time.perf_counter()
        status, _ = call(server, "POST", "/events", {"events": [{"user_id": user, "item_id": item_ids[n % len(item_ids)],
                                                                 "event_type": "view"}]}, token=WRITE_TOKEN)
        assert status == 200
        while call(server, "POST", "/recommend", {"user_id": user, "k": 10}, token=READ_TOKEN)[1]["fallback"]:
            if time.perf_counter() - start > 5:
                break
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"trials": trials, "p50_ms": times[len(times) // 2], "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))]}


def log_state(settings) -> dict:
    folder = event_log_dir(settings)
    raw = event_log.raw_events(folder)
    return {"files": event_log.file_count(folder), "rows": len(raw),
            "distinct_events": int(raw[["user_id", "event_id"]].drop_duplicates().shape[0]),
            "segments": len(list((folder / event_log.WAL).glob("seg-*"))),
            "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15, help="wrk duration of the bulk and single runs")
    parser.add_argument("--events", type=int, default=5000, help="synthetic events in the shop")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the service")
    parser.add_argument("--bulk-concurrency", type=int, default=8)
    parser.add_argument("--single-concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=100_000, help="requests in all before the file count")
    parser.add_argument("--fresh-trials", type=int, default=100)
    parser.add_argument("--users", type=int, default=20_000, help="users per wrk thread the events spread over")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", default="events_load", help="name of the report files under docs/results/")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")

    home = Path(tempfile.mkdtemp(prefix="shoprec-events-bench-"))
    redis = RedisServer(home / "redis").start()
    settings = shop_settings(home, redis.port)
    try:
        shop = prepare_shop(settings, args.events, epochs=1)
        items = home / "items.txt"
        item_ids = shop["items"]["item_id"].astype(str).tolist()
        items.write_text("\n".join(item_ids) + "\n")
        server = Server(settings.with_overrides(serving={"workers": args.workers, "reload_poll_seconds": 60}),
                        log_path=home / "serve.log").start()
        try:
            report = run(args, server, settings, home, items, item_ids)
        finally:
            server.stop()
    finally:
        redis.kill()
    write_report(report, args.out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print((RESULTS / f"{args.out}.md").read_text())


def run(args, server: Server, settings, home: Path, items: Path, item_ids: list[str]) -> dict:
    for _ in range(10):  # warm both workers
        call(server, "POST", "/events", {"events": [{"user_id": "warm-up", "item_id": item_ids[0], "event_type": "view"}]},
             token=WRITE_TOKEN)
    loads = [run_wrk(server, home, "bulk", items, 100, args.bulk_concurrency, args.seconds, args.users),
             run_wrk(server, home, "single", items, 1, args.single_concurrency, args.seconds, args.users)]
    fresh = freshness(server, item_ids, args.fresh_trials)
    made = sum(load.requests for load in loads) + 10 + args.fresh_trials
    if made < args.requests:  # the fill: single events at the rate just measured, until the count is reached
        rate = max(loads[1].rps, 50.0)
        seconds = math.ceil((args.requests - made) / rate * 1.05)
        loads.append(run_wrk(server, home, "fill", items, 1, args.single_concurrency, seconds, args.users))
        made += loads[-1].requests
    per_push_files = made  # the old log: one Parquet file per push (per day it touched)
    before = log_state(settings)
    started = time.perf_counter()
    compacted = steps.compact_event_log(settings)
    compact_s = time.perf_counter() - started
    after = log_state(settings)
    return {
        "command": " ".join(sys.argv[1:]), "workers": args.workers, "shop_events": args.events, "loads": [asdict(load) for load in loads],
        "freshness": fresh, "requests_made": made, "one_file_per_push_would_be": per_push_files,
        "log_before_compaction": before, "compaction": compacted, "compaction_seconds": round(compact_s, 2),
        "log_after_compaction": after,
        "exactly_once": after["rows"] == before["distinct_events"] == after["distinct_events"],
    }


def write_report(report: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        "# POST /events under load",
        "",
        f"`python benchmarks/events_load.py {report['command']}` — real `bentoml serve`, {report['workers']} workers, Redis online "
        f"store, wrk on the same 2 cores, loopback, {time.strftime('%Y-%m-%d')}.",
        "",
        "| run | c | events/request | requests | req/s | events/s | p50 ms | p99 ms | errors | service CPU ms/event | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for load in report["loads"]:
        lines.append(f"| {load['name']} | {load['concurrency']} | {load['events_per_request']} | {load['requests']} | "
                     f"{load['rps']:.0f} | {load['events_per_s']:.0f} | {load['p50_ms']:.1f} | {load['p99_ms']:.1f} | "
                     f"{load['errors']} | {load['service_cpu_ms_per_event']:.3f} | {load['load_average']:.1f} |")
    fresh, before, after = report["freshness"], report["log_before_compaction"], report["log_after_compaction"]
    lines += [
        "",
        f"Freshness (event -> recommendation from the model, idle, {fresh['trials']} events): "
        f"p50 {fresh['p50_ms']:.1f} ms, p99 {fresh['p99_ms']:.1f} ms.",
        "",
        f"Event log after {report['requests_made']:,} requests (the old one-Parquet-file-per-push log: "
        f"{report['one_file_per_push_would_be']:,} files):",
        "",
        "| | files | segments | rows | distinct (user, event_id) | MB |",
        "|---|---|---|---|---|---|",
        f"| before compaction | {before['files']} | {before['segments']} | {before['rows']:,} | "
        f"{before['distinct_events']:,} | {before['bytes'] / 1e6:.1f} |",
        f"| after compaction | {after['files']} | {after['segments']} | {after['rows']:,} | "
        f"{after['distinct_events']:,} | {after['bytes'] / 1e6:.1f} |",
        "",
        f"Compaction (`steps.compact_event_log`): {report['compaction_seconds']} s; every row read kept exactly "
        f"once: {report['exactly_once']}.",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
