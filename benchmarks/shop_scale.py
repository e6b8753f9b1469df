"""A shop of millions of events through the whole pipeline, stage by stage: wall time and peak RSS.

    python benchmarks/shop_scale.py                      # 10 M events (~500 k users, 100 k items)
    python benchmarks/shop_scale.py --events 1000000     # the quick run
    python benchmarks/shop_scale.py --events 1000000 --events 3000000 --events 10000000

Generates a synthetic shop (``simulator.shop``; not part of the pipeline's time), then runs
the very steps the Airflow DAGs run, through the same functions (``entrypoints.steps``):
ingest + Great Expectations gate, feature tables, ``feast apply``, materialize into SQLite,
apply + materialize into Redis (a private redis-server), training set, train, compress +
compression gate, evaluate against the champion and against the popularity and Markov
baselines on the same hold-out, promotion gate, release, and serving: a real ``bentoml
serve`` loaded with wrk at concurrency 8 and 32 on ``/recommend``. Each stage runs in a
fresh child process, so its peak RSS is its own (the process tree's, sampled every 0.2 s,
and the child's ``ru_maxrss``, whichever is larger). Results for every size run so far are
kept in ``docs/results/shop_scale.json``; the Markdown table and the PNG (stage times by
shop size) are rebuilt from all of them.

Targets (issue #14, 2 cores): the 10 M pipeline in <= 30 min, no stage above 8 GB peak RSS,
every stage's time growing no faster than linearly from 1 M to 10 M events.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results"
STAGES = ("generate", "ingest", "features", "apply", "materialize_sqlite", "materialize_redis", "training_set",
          "train", "compress", "evaluate", "gate", "release", "serve")
NOT_PIPELINE = ("generate",)  # made for the benchmark: a shop's data arrives, it is not generated
READ_TOKEN = "shop-scale-read-token-0123456789abcdef"
API_TOKEN = "shop-scale-api-token-0123456789abcdef"


@dataclass
class StageResult:
    stage: str
    seconds: float
    peak_rss_mib: float
    details: dict
    cpu_seconds: float | None = None  # the stage's own user + system CPU: steadier than wall time on a shared machine


# --- the stages (each runs in its own child process) ---------------------------------------------
def _settings(work: Path, redis_port: int | None, preset: str):
    from shoprec.config import load_settings

    settings = load_settings(home=work / "home")
    overrides: dict = {"read_token": READ_TOKEN, "api_token": API_TOKEN, "training": {"preset": preset},
                       "serving": {"workers": 2}}  # one per core, as the production profile
    if redis_port is not None:
        overrides["online_store"] = {"type": "redis", "redis_connection_string":
                                     f"127.0.0.1:{redis_port},socket_timeout=5,socket_connect_timeout=5"}
    return settings.with_overrides(**overrides)


def run_stage(stage: str, work: Path, state: dict, args: argparse.Namespace) -> dict:
    from entrypoints import steps

    redis_port = state.get("redis_port") if stage not in ("ingest", "features", "apply", "materialize_sqlite") else None
    settings = _settings(work, redis_port, args.preset)
    if stage == "generate":
        from simulator.shop import generate, write_generated

        batch = generate(args.n_events, seed=args.seed, progress=True)
        write_generated(batch, work / "shop")
        return {"events": int(len(batch.events)), "users": int(batch.events["user_id"].nunique()),
                "items": int(len(batch.items)), "csv_or_parquet": "parquet"}
    if stage == "ingest":
        return steps.validate_and_ingest(settings, [str(work / "shop")]).to_dict()
    if stage == "features":
        return steps.build_features(settings)
    if stage in ("apply",):
        return steps.feast_apply(settings)
    if stage in ("materialize_sqlite", "materialize_redis"):
        if stage == "materialize_redis":
            steps.feast_apply(settings)  # the same repo, now with the Redis online store
        return steps.materialize(settings, steps.Ingested.from_dict(state["ingest"]), datetime.now(timezone.utc))
    if stage == "training_set":
        return steps.training_set(settings, f"shop-scale-{args.n_events}")
    if stage == "train":
        return steps.train(settings, state["training_set"], mode="full")
    if stage == "compress":
        return steps.compress(settings, state["train"], state["training_set"])
    if stage == "evaluate":
        return {**steps.evaluate(settings, state["compress"], state["training_set"]),
                "baselines": _baselines(settings, state)}
    if stage == "gate":
        return steps.gate(settings, state["evaluate"], state["compress"]).to_dict()
    if stage == "release":
        return steps.release_challenger(settings, state["compress"]).to_dict()
    if stage == "serve":
        return _serve(settings, work, args)
    raise ValueError(f"unknown stage {stage}")


def _baselines(settings, state: dict) -> dict:
    """The served model, popularity and Markov on the same hold-out users: the run's time split,
    sampled as training samples its evaluation (``eval_max_scores`` user-item pairs)."""
    import pandas as pd

    from training.artifact import load_recommender
    from training.baselines import baseline_scorers
    from training.data import item_counts, read_split_events, time_split
    from training.evaluate import evaluate_scorer
    from training.vocab import ItemVocab

    folder = Path(state["training_set"]["run_dir"])
    events = read_split_events(folder / "events.parquet")
    model = load_recommender(state["compress"]["served_version"], settings)
    vocab = ItemVocab(model.item_ids)
    hp = settings.hyperparameters
    split = time_split(events, vocab, pd.Timestamp(state["training_set"]["cutoff"]))
    split = split.with_eval_scores(hp.eval_max_scores, len(vocab), hp.seed)
    counts = item_counts(split.train, len(vocab))
    scorers = {"model": model.score_indices, **baseline_scorers(split.train, len(vocab))}
    return {"users": len(split.test), **{name: evaluate_scorer(scorer, split.test, counts) for name, scorer in scorers.items()}}


def _serve(settings, work: Path, args: argparse.Namespace) -> dict:
    import pandas as pd

    from benchmarks.service_load import LUA, run_wrk  # the service benchmark's load script and wrk runner
    from entrypoints.serving import start_service
    from tests.service_harness import free_port

    events = pd.read_parquet(work / "shop" / "events.parquet", columns=["user_id"])
    users = work / "users.txt"
    users.write_text("\n".join(events["user_id"].drop_duplicates().sample(20_000, random_state=0, replace=True)))
    script = work / "recommend.lua"
    script.write_text(LUA % {"users": users, "token": READ_TOKEN})
    service = start_service(settings, port=free_port(), log_path=work / "service.log")
    try:
        service.wait_until_ready(settings.serving.workers, token=READ_TOKEN)
        return {"load": [run_wrk(service.url, script, c, args.seconds) for c in (8, 32)], "workers": settings.serving.workers}
    finally:
        service.stop()


# --- the parent: one child per stage, timed and measured ----------------------------------------------
def measure_child(command: list[str], env: dict) -> tuple[float, float, float, int]:
    """(seconds, peak RSS MiB of the process tree, CPU seconds, exit code)."""
    import psutil

    started = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    peak = [0]

    def sample() -> None:
        parent = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    seconds = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime  # the child and the processes it waited for (bentoml's workers)
    return seconds, max(peak[0] / 2**20, usage.ru_maxrss / 1024), cpu, child.returncode


def run_size(n_events: int, args: argparse.Namespace) -> dict:
    from shoprec.config import child_env, load_settings
    from tests.service_harness import RedisServer

    work = args.resume or Path(tempfile.mkdtemp(prefix=f"shop-scale-{n_events}-", dir=args.work_dir))
    done = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else []
    results = [StageResult(**r) for r in done]
    state: dict = json.loads((work / "state.json").read_text()) if args.resume else {}
    redis = RedisServer(work / "redis").start()  # its append-only file brings a resumed run's data back
    state["redis_port"] = redis.port
    env = {**child_env(load_settings(home=work / "home")), "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    try:
        for stage in STAGES[len(results):STAGES.index(args.until) + 1 if args.until else None]:
            (work / "state.json").write_text(json.dumps(state, default=str))
            command = [sys.executable, __file__, "--stage", stage, "--work", str(work), "--events", str(n_events),
                       "--seed", str(args.seed), "--preset", args.preset, "--seconds", str(args.seconds)]
            seconds, rss, cpu, code = measure_child(command, env)
            if code != 0:
                raise SystemExit(f"stage {stage} failed (exit {code}); its work is kept in {work} "
                                 f"(--resume {work} goes on from it)")
            state[stage] = json.loads((work / f"{stage}.json").read_text())
            results.append(StageResult(stage, round(seconds, 1), round(rss, 1), state[stage], round(cpu, 1)))
            (work / "results.json").write_text(json.dumps([asdict(r) for r in results], default=str))
            print(f"[{n_events:,} events] {stage}: {seconds:.1f} s ({cpu:.0f} s CPU), peak RSS {rss:,.0f} MiB", flush=True)
        (work / "state.json").write_text(json.dumps(state, default=str))  # a --resume after --until needs the last stage's
    finally:
        redis.kill()
    if args.until and len(results) < len(STAGES):
        raise SystemExit(f"stopped after {args.until}; the work is kept in {work} (--resume {work} goes on from it)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    pipeline = sum(r.seconds for r in results if r.stage not in NOT_PIPELINE)
    return {"events": n_events, "pipeline_seconds": round(pipeline, 1), "stages": [asdict(r) for r in results],
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}", "preset": args.preset}


# --- reports ----------------------------------------------------------------------------------------
def summary(run: dict) -> dict:
    """The figures the issue names, from one size's stages."""
    by = {s["stage"]: s for s in run["stages"]}
    shop = by["generate"]["details"]
    evaluation = by["evaluate"]["details"]
    load = {level["concurrency"]: level for level in by["serve"]["details"]["load"]}
    users = shop["users"]
    return {
        "users": users, "items": shop["items"],
        "materialize_sqlite_rows_per_s": round(users / by["materialize_sqlite"]["seconds"]),
        "materialize_redis_rows_per_s": round(users / by["materialize_redis"]["seconds"]),
        "ndcg10": {name: m.get("NDCG@10") for name, m in evaluation["baselines"].items() if name != "users"},
        "serve_c8_p99_ms": load[8]["p99_ms"], "serve_c32_rps": load[32]["rps"],
        "serve_errors": sum(level["errors"] for level in load.values()),
    }


def markdown(runs: dict[str, dict]) -> str:
    sizes = sorted(runs.values(), key=lambda r: r["events"])
    header = "| stage | " + " | ".join(f"{r['events'] / 1e6:g} M: s | CPU s | peak RSS MiB" for r in sizes) + " |"
    lines = ["# Shop scale: the whole pipeline on one machine", "",
             "`python benchmarks/shop_scale.py --events N` (stages run as the DAGs run them, each in its own "
             f"process). Machine: {sizes[0]['machine']}; preset `{sizes[0]['preset']}`.", "",
             header, "|---|" + "---:|---:|---:|" * len(sizes)]
    for stage in STAGES:
        cells = []
        for run in sizes:
            s = next(x for x in run["stages"] if x["stage"] == stage)
            cpu = s.get("cpu_seconds")
            cells.append(f"{s['seconds']:,.1f} | {'-' if cpu is None else f'{cpu:,.1f}'} | {s['peak_rss_mib']:,.0f}")
        name = f"{stage} (not in the pipeline time)" if stage in NOT_PIPELINE else stage
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **pipeline** | " + " | ".join(f"**{r['pipeline_seconds']:,.0f}** | | " for r in sizes) + " |")
    lines += ["", "| shop | users | items | materialize rows/s SQLite | Redis | NDCG@10 model | popularity | Markov "
                  "| serve c=8 p99 ms | c=32 req/s | errors |", "|---|" + "---:|" * 10]
    for run in sizes:
        s = summary(run)
        n = s["ndcg10"]
        lines.append(f"| {run['events'] / 1e6:g} M | {s['users']:,} | {s['items']:,} | {s['materialize_sqlite_rows_per_s']:,} "
                     f"| {s['materialize_redis_rows_per_s']:,} | {_f(n.get('model'))} | {_f(n.get('popularity'))} "
                     f"| {_f(n.get('markov'))} | {s['serve_c8_p99_ms']:.1f} | {s['serve_c32_rps']:,.0f} | {s['serve_errors']} |")
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        factor = large["events"] / small["events"]
        lines += ["", f"Growth from {small['events'] / 1e6:g} M to {large['events'] / 1e6:g} M events "
                      f"({factor:g}x the data): time ratio per stage (<= {factor:g} is at most linear)", "",
                  "| stage | time ratio | CPU ratio |", "|---|---:|---:|"]
        for stage in STAGES:
            a = next(x for x in small["stages"] if x["stage"] == stage)
            b = next(x for x in large["stages"] if x["stage"] == stage)
            lines.append(f"| {stage} | {_ratio(b['seconds'], a['seconds'])} | {_ratio(b.get('cpu_seconds'), a.get('cpu_seconds'))} |")
    return "\n".join(lines) + "\n"


def _ratio(large, small) -> str:
    return f"{large / small:.1f}" if large and small else "-"


def _f(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(runs.values(), key=lambda r: r["events"])
    fig, ax = plt.subplots(figsize=(9, 5))
    xs = [r["events"] / 1e6 for r in sizes]
    for stage in STAGES:
        ys = [next(x for x in r["stages"] if x["stage"] == stage)["seconds"] for r in sizes]
        ax.plot(xs, ys, marker="o", label=stage)
    ax.plot(xs, [sum(x["seconds"] for x in r["stages"] if x["stage"] not in NOT_PIPELINE) for r in sizes],
            marker="s", color="black", linewidth=2.5, label="pipeline")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events in the shop (millions)")
    ax.set_ylabel("wall time (s)")
    ax.set_title("ShopRec pipeline stages by shop size (2 cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_reports(run: dict) -> dict[str, dict]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / "shop_scale.json"
    runs = json.loads(json_path.read_text()) if json_path.exists() else {}
    runs[str(run["events"])] = run
    json_path.write_text(json.dumps(runs, indent=2, default=str))
    (RESULTS / "shop_scale.md").write_text(markdown(runs))
    plot(runs, RESULTS / "shop_scale.png")
    return runs


def _need_wrk(args: argparse.Namespace) -> None:
    """The serve stage loads the service with wrk: install it (Debian) or stop now, not after
    half an hour of stages."""
    if args.until and STAGES.index(args.until) < STAGES.index("serve") or shutil.which("wrk"):
        return
    subprocess.run([str(ROOT / "scripts" / "system-deps.sh"), "wrk"], check=False)
    if not shutil.which("wrk"):
        sys.exit("wrk is needed by the serve stage and could not be installed: apt-get install -y wrk "
                 "(or stop before it with --until release)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:6]))
    parser.add_argument("--events", type=int, action="append", help="events in the shop (repeat for several sizes; default 10,000,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="full", help="the training preset (default: full, as the training DAG)")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per concurrency level")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the shop and its home are made (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--resume", type=Path, help="go on with the stages a stopped run (one --events) left undone")
    parser.add_argument("--until", choices=STAGES, help="stop after this stage and keep the work folder (for --resume)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        args.n_events = args.events[0]
        state = json.loads((args.work / "state.json").read_text())
        result = run_stage(args.stage, args.work, state, args)
        (args.work / f"{args.stage}.json").write_text(json.dumps(result, default=str))
        return
    _need_wrk(args)
    for n_events in args.events or [10_000_000]:
        run = run_size(n_events, args)
        write_reports(run)
        print(f"\n{n_events:,} events: pipeline {run['pipeline_seconds']:,.0f} s; "
              f"peak RSS {max(s['peak_rss_mib'] for s in run['stages']):,.0f} MiB; {json.dumps(summary(run))}")
    print(f"reports: {RESULTS / 'shop_scale.md'}, {RESULTS / 'shop_scale.json'}, {RESULTS / 'shop_scale.png'}")


if __name__ == "__main__":
    main()
