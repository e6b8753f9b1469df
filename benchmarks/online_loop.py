"""The online loop's costs and power: impression logging's latency, and how many simulated
sessions an experiment needs to decide.

One throw-away shop (synthetic data, Feast with a Redis online store on a private port, a
quick model), then:

  latency    : two services side by side on the same shop and model, impression logging on
               and off (``experiments.log_impressions``); wrk at concurrency 8 on POST
               /recommend, alternating between the two for ``--rounds`` rounds (the same load
               on the machine for both), p50/p99/req/s per round and the medians.
  in_process : the request path in the benchmark's own process, sink on and off alternating:
               wall time per request and CPU time (request thread; whole process, writer included).
  experiment : a weak champion (the trained model with its item table shuffled:
               tests/experiment_harness.py) against the trained model as a challenger at
               50/50; simulated customers (simulator/customers.py) shop in chunks of
               ``--chunk`` sessions; after each chunk the arms' CTR, the z statistic, and the
               fixed-horizon sample per arm the observed rates need (80 % power, alpha 0.05);
               the first chunk where the test would decide, and the decision of the online
               test step (``entrypoints.steps.online_experiment``) with that horizon.

    python benchmarks/online_loop.py [--seconds 10] [--rounds 3] [--events 6000] [--parts latency experiment]

Writes docs/results/online_loop.{md,json} (``--out``) and prints the table. Needs wrk and
redis-server. Ports: Redis 3612, services 3613 (logging on) and 3614 (off), 3615 (experiment).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from statistics import NormalDist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.service_load import LUA, run_wrk  # noqa: E402  (after the repo is on the path)
from entrypoints import steps  # noqa: E402
from shoprec import impressions  # noqa: E402
from shoprec.config import Settings  # noqa: E402
from simulator.customers import CustomerRun, Customers  # noqa: E402
from simulator.shop import default_sizes, tastes_of  # noqa: E402
from tests.experiment_harness import shuffled_variant  # noqa: E402
from tests.service_harness import READ_TOKEN, WRITE_TOKEN, RedisServer, Server, call, prepare_shop, shop_settings  # noqa: E402
from training.online_test import two_proportion_z  # noqa: E402
from training.registry import promote  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
PORTS = {"redis": 3612, "on": 3613, "off": 3614, "experiment": 3615}


def latency(settings: Settings, home: Path, shop: dict, args: argparse.Namespace) -> dict:
    """Impression logging on and off, two servers, wrk rounds alternating between them."""
    users = home / "users.txt"
    users.write_text("\n".join(shop["events"]["user_id"].drop_duplicates().astype(str)) + "\n")
    script = home / "recommend.lua"
    script.write_text(LUA % {"users": users, "token": READ_TOKEN})
    servers = {}
    try:
        for mode, logging in (("on", True), ("off", False)):
            mode_settings = settings.with_overrides(serving={"reload_poll_seconds": 60, "workers": args.workers},
                                                    experiments={"log_impressions": logging})
            servers[mode] = Server(mode_settings, port=PORTS[mode], log_path=home / f"serve-{mode}.log").start(timeout=300)
        for server in servers.values():
            for _ in range(20):
                call(server, "POST", "/recommend", {"user_id": "warm-up", "k": 10}, token=READ_TOKEN)
        rounds = {mode: [] for mode in servers}
        for _ in range(args.rounds):
            for mode, server in servers.items():
                rounds[mode].append(run_wrk(server.url, script, 8, args.seconds))
        logged = len(impressions.read_impressions(settings))
    finally:
        for server in servers.values():
            server.stop()
    medians = {mode: {key: statistics.median(r[key] for r in rs) for key in ("p50_ms", "p99_ms", "rps")}
               for mode, rs in rounds.items()}
    requests_on = sum(r["requests"] for r in rounds["on"])
    return {"rounds": rounds, "medians": medians, "impressions_logged": logged, "requests_with_logging": requests_on,
            "p99_ratio": medians["on"]["p99_ms"] / medians["off"]["p99_ms"]}


def in_process(settings: Settings, home: Path, shop: dict, args: argparse.Namespace) -> dict:
    """The request path in this process (``Recommending.recommend``, the real online store), with the
    impression sink on and off in alternating rounds: wall time per request (p50, p99) and CPU time
    per request, of the request thread and of the whole process (the log's writer thread included)."""
    from services.availability import ItemStates
    from services.bundle import CurrentModel
    from services.experiments import ImpressionSink
    from services.guards import Limits
    from services.recommending import Recommending
    from services.resilience import StoreGuard
    from shoprec.features.online import OnlineFeatures

    model, features, store = CurrentModel(settings), OnlineFeatures(settings), StoreGuard()
    model.holder.refresh()
    users = shop["events"]["user_id"].drop_duplicates().astype(str).tolist()
    paths = {}
    for mode, logging in (("on", True), ("off", False)):
        sink = ImpressionSink(settings.with_overrides(experiments={"log_impressions": logging}))
        paths[mode] = (Recommending(settings, model, features, ItemStates(features.item_states, store), store,
                                    Limits.from_settings(settings), impressions=sink), sink)
    rounds = {mode: [] for mode in paths}
    for _ in range(args.rounds):
        for mode, (recommending, sink) in paths.items():
            walls, cpu, process = [], time.thread_time(), time.process_time()
            for n in range(args.in_process_requests):
                start = time.perf_counter()
                recommending.recommend(users[n % len(users)], None, 10)
                walls.append((time.perf_counter() - start) * 1000)
            sink.flush()  # the writer's work counts in this round's process time
            n = len(walls)
            walls.sort()
            rounds[mode].append({"p50_ms": walls[n // 2], "p99_ms": walls[int(n * 0.99)],
                                 "thread_cpu_ms": (time.thread_time() - cpu) * 1000 / n,
                                 "process_cpu_ms": (time.process_time() - process) * 1000 / n})
    medians = {mode: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for mode, rs in rounds.items()}
    return {"requests_per_round": args.in_process_requests, "rounds": rounds, "medians": medians}


def required_per_arm(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """The fixed-horizon sample per arm a two-sided two-proportion test needs for p1 vs p2."""
    if p1 == p2:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return math.ceil(z * z * (p1 * (1 - p1) + p2 * (1 - p2)) / (p1 - p2) ** 2)


def experiment(settings: Settings, home: Path, shop: dict, args: argparse.Namespace) -> dict:
    """Weak champion vs strong challenger at 50/50, customers in chunks until the test decides."""
    strong = shop["version"]
    weak = shuffled_variant(settings, strong, seed=1)
    promote(weak, settings)
    settings = settings.with_overrides(serving={"exclude": "purchased"}, experiments={
        "name": f"bench-{time.time_ns()}", "min_impressions_per_arm": 10, "attribution_window_seconds": 600,
        "challengers": [{"name": "strong", "version": strong, "percent": 50}]})
    server = Server(settings, port=PORTS["experiment"], log_path=home / "serve-experiment.log").start(timeout=300)
    n_users, n_items = default_sizes(args.events)
    customers = Customers(server.url, tastes_of({"n_users": n_users, "n_items": n_items, "seed": 0}),
                          READ_TOKEN, WRITE_TOKEN, seed=5, history=_histories(shop["events"]))
    chunks, total, decided_at = [], CustomerRun(), None
    crit = NormalDist().inv_cdf(1 - 0.05 / 2)
    try:
        time.sleep(5)  # the challenger loads in the background after the champion
        for n in range(args.max_chunks):
            total.add(customers.run(args.chunk, lists_per_session=2, concurrency=8))
            time.sleep(1)  # the impression log's writer
            arms = {a.arm: a for a in impressions.arm_stats(impressions.attribute(settings))
                    if a.experiment == settings.experiments.name and not a.shadow}
            if {"champion", "strong"} - set(arms):
                continue
            a, b = arms["champion"].ctr, arms["strong"].ctr
            test = two_proportion_z(a, b)
            chunks.append({"sessions": total.sessions, "impressions": {"champion": a.trials, "strong": b.trials},
                           "ctr": {"champion": a.rate, "strong": b.rate}, "z": test.z,
                           "required_per_arm": required_per_arm(a.rate, b.rate)})
            if decided_at is None and test.z is not None and abs(test.z) >= crit:
                decided_at = chunks[-1]
                break
        # the step at a horizon of what both arms have now (a look at the data, as the DAG's next run would take)
        horizon = max(10, min(chunks[-1]["impressions"].values())) if chunks else 10
        decision = steps.online_experiment(settings.with_overrides(experiments={"min_impressions_per_arm": horizon}))
    finally:
        server.stop()
    return {"chunks": chunks, "decided_at": decided_at, "customers": total.to_dict(), "decision": decision}


def _histories(events) -> dict[str, list[str]]:
    """Each user's last items in the generated events: what the customers looked at before."""
    ordered = events.sort_values("timestamp")
    return {str(u): items.astype(str).tolist()[-5:] for u, items in ordered.groupby("user_id")["item_id"]}


def markdown(report: dict) -> str:
    lines = []
    if "latency" in report:
        lat = report["latency"]
        lines += [f"Impression logging on vs off, two services side by side on one shop, wrk c=8, "
                  f"{report['seconds']} s per round, {report['rounds']} alternating rounds, {report['workers']} workers", "",
                  "| logging | round | p50 ms | p99 ms | req/s |", "|---|---|---|---|---|"]
        for mode, rounds in lat["rounds"].items():
            lines += [f"| {mode} | {n + 1} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps']:.0f} |" for n, r in enumerate(rounds)]
        for mode, m in lat["medians"].items():
            lines.append(f"| {mode} | median | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['rps']:.0f} |")
        lines += ["", f"p99 on / off: {lat['p99_ratio']:.3f}; impressions logged: {lat['impressions_logged']:,} "
                      f"of {lat['requests_with_logging']:,} requests answered with logging on", ""]
    if "in_process" in report:
        ip = report["in_process"]
        lines += [f"In process (Recommending.recommend, one request at a time, the real online store), "
                  f"{ip['requests_per_round']} requests per round, alternating:", "",
                  "| logging | p50 ms | p99 ms | request-thread CPU ms/req | process CPU ms/req (writer included) |",
                  "|---|---|---|---|---|"]
        for mode, m in ip["medians"].items():
            lines.append(f"| {mode} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['thread_cpu_ms']:.3f} | "
                         f"{m['process_cpu_ms']:.3f} |")
        lines.append("")
    if "experiment" in report:
        exp = report["experiment"]
        lines += ["Weak champion (shuffled item table) vs strong challenger (trained), 50/50, simulated customers:", "",
                  "| sessions | impressions champion / strong | CTR champion | CTR strong | z | n per arm needed (80 % power) |",
                  "|---|---|---|---|---|---|"]
        for c in exp["chunks"]:
            z = "n/a" if c["z"] is None else f"{c['z']:.2f}"
            lines.append(f"| {c['sessions']} | {c['impressions']['champion']} / {c['impressions']['strong']} | "
                         f"{c['ctr']['champion']:.3f} | {c['ctr']['strong']:.3f} | {z} | {c['required_per_arm']} |")
        decided = exp["decided_at"]
        lines += ["", f"decided after {decided['sessions']} sessions" if decided else "not decided",
                  f"; online test step: {[(a['arm'], a['verdict'], a['reason']) for a in exp['decision']['arms']]}", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode")
    parser.add_argument("--events", type=int, default=6000, help="synthetic events in the shop")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each service")
    parser.add_argument("--chunk", type=int, default=25, help="simulated sessions between two looks")
    parser.add_argument("--max-chunks", type=int, default=20)
    parser.add_argument("--in-process-requests", type=int, default=2000, help="requests per in-process round")
    parser.add_argument("--parts", nargs="+", default=["latency", "in_process", "experiment"],
                        choices=["latency", "in_process", "experiment"])
    parser.add_argument("--out", type=Path, default=RESULTS / "online_loop", help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    if "latency" in args.parts and not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")
    home = Path(tempfile.mkdtemp(prefix="shoprec-online-"))
    redis = RedisServer(home / "redis", port=PORTS["redis"]).start()
    report = {"events": args.events, "seconds": args.seconds, "rounds": args.rounds, "workers": args.workers,
              "command": "python benchmarks/online_loop.py " + " ".join(sys.argv[1:])}
    try:
        settings = shop_settings(home, redis.port)
        shop = prepare_shop(settings, args.events)
        for part in args.parts:
            report[part] = {"latency": latency, "in_process": in_process, "experiment": experiment}[part](
                settings, home, shop, args)
    finally:
        redis.kill()
        shutil.rmtree(home, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    args.out.with_suffix(".md").write_text(f"# Online loop\n\n{text}\nCommand: `{report['command']}`\n")
    print(text)


if __name__ == "__main__":
    main()
