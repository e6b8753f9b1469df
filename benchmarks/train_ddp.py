"""One process vs two: the speed-up of data-parallel training (torchrun + DistributedDataParallel).

    python benchmarks/train_ddp.py [--events 100000] [--preset full] [--epochs 3] [--device cpu]

One synthetic shop (``simulator.shop.generate``, not timed) trained by ``train_version`` (what
``shoprec train`` calls) three ways, side by side in one run, with the same data, preset and a
fixed number of epochs (patience = epochs, so early stopping never cuts a run short):

- 1 process, every core's thread (the default ``shoprec train``),
- 1 process, cores / 2 threads (the per-process threads of the 2-process run),
- 2 processes under torchrun, cores / 2 threads each (``shoprec train --processes 2``).

Reports the training seconds (the optimizer steps of all epochs, validation excluded), the
wall time of ``train_version`` (with torchrun's start, the workers' imports and rank 0's final
evaluation), positions per second, test metrics, and the load average before and after each
configuration (other processes on the machine slow every figure). Writes
docs/results/train_ddp.{md,json} (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoprec.config import load_settings  # noqa: E402  (after the repo is on the path)
from simulator.shop import generate  # noqa: E402
from training.pipeline import train_version  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@dataclass(frozen=True)
class Config:
    name: str
    processes: int
    threads: int  # torch threads per process


@dataclass
class Measurement:
    name: str
    processes: int
    threads_per_process: int
    epochs: int
    steps: int
    positions: int
    train_seconds: float
    wall_seconds: float
    positions_per_second: int
    ndcg_at_10: float
    hr_at_10: float
    replicas_in_step: bool | None  # one weight checksum on every rank (None: one process)
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def configs(cores: int) -> list[Config]:
    half = max(1, cores // 2)
    return [Config(f"1 process x {cores} threads", 1, cores), Config(f"1 process x {half} threads", 1, half),
            Config(f"2 processes x {half} threads", 2, half)]


def measure(config: Config, events, items, args) -> Measurement:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="shoprec-train-ddp-") as home:
        settings = load_settings(home=Path(home), training={
            "preset": args.preset, "processes": config.processes, "num_threads": config.threads,
            "master_port": args.master_port, "device": args.device,
            "overrides": {"use_text": False, "max_epochs": args.epochs, "patience": args.epochs}})
        started = time.perf_counter()
        _, report = train_version(settings, events=events, items=items, protocol="loo", progress=False,
                                  checkpoint=False)
        wall = time.perf_counter() - started
    t = report["training"]
    replicas = t.get("replicas")
    return Measurement(config.name, config.processes, config.threads, t["epochs"], t["steps"], t["positions"],
                       t["train_seconds"], round(wall, 1), round(t["positions"] / max(t["train_seconds"], 1e-9)),
                       round(report["metrics"]["NDCG@10"], 4), round(report["metrics"]["HR@10"], 4),
                       None if not replicas else len({r["parameters_sha256"] for r in replicas}) == 1,
                       load_before, os.getloadavg())


def markdown(result: dict) -> str:
    rows = result["measurements"]
    lines = [f"{result['events']:,} events, {result['users']:,} users, {result['items']:,} items; preset "
             f"{result['preset']}, {result['epochs']} epochs each (no early stop), device {result['device']}, "
             f"{result['cores']} cores", "",
             "| configuration | train s | wall s | positions/s | test NDCG@10 | test HR@10 | ranks in step | load avg before -> after |",
             "|---|---|---|---|---|---|---|---|"]
    for m in rows:
        in_step = "-" if m["replicas_in_step"] is None else ("yes" if m["replicas_in_step"] else "NO")
        load = f"{m['load_before'][0]:.1f} -> {m['load_after'][0]:.1f}"
        lines.append(f"| {m['name']} | {m['train_seconds']:.1f} | {m['wall_seconds']:.1f} | {m['positions_per_second']:,} "
                     f"| {m['ndcg_at_10']:.4f} | {m['hr_at_10']:.4f} | {in_step} | {load} |")
    s = result["speedup"]
    lines += ["", f"Speed-up of 2 processes (training seconds): {s['vs_default']:.2f}x over the default one-process "
              f"run, {s['vs_same_threads']:.2f}x over one process with the same threads per process; "
              f"wall time (with torchrun's start): {s['wall_vs_default']:.2f}x.", "",
              "The load average counts every process on the machine: where other work holds the cores, "
              "a process's intra-op threads wait for each other at every operation, which slows the "
              "one process with every core's threads most; the same-threads row compares data "
              "parallelism alone."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=["quick", "full"], default="full")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--master-port", type=int, default=29515, help="torchrun's rendezvous port")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_ddp", help="writes OUT.md and OUT.json")
    args = parser.parse_args()

    batch = generate(args.events, seed=args.seed)
    cores = os.cpu_count() or 1
    measurements = []
    for config in configs(cores):
        measurements.append(measure(config, batch.events, batch.items, args))
        print(json.dumps(asdict(measurements[-1])), flush=True)
    default, same_threads, two = measurements
    result = {
        "command": "python benchmarks/train_ddp.py " + " ".join(sys.argv[1:]),
        "events": len(batch.events), "users": int(batch.events["user_id"].nunique()),
        "items": int(batch.items["item_id"].nunique()), "preset": args.preset, "epochs": args.epochs,
        "device": args.device, "cores": cores, "measurements": [asdict(m) for m in measurements],
        "speedup": {"vs_default": round(default.train_seconds / two.train_seconds, 2),
                    "vs_same_threads": round(same_threads.train_seconds / two.train_seconds, 2),
                    "wall_vs_default": round(default.wall_seconds / two.wall_seconds, 2)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    args.out.with_suffix(".md").write_text(f"# Data-parallel training: 1 vs 2 processes\n\n{text}\n"
                                           f"Command: `{result['command']}`\n")
    print(text)


if __name__ == "__main__":
    main()
