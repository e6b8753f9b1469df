"""Measurements of a served scorer: size on disk, CPU latency at batch 1 and 32, throughput.

Latencies are taken round-robin over all scorers (one call of each per round), so a
neighbour's burst of CPU use on a shared machine hits every variant alike instead
of whichever one happened to be running.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from tqdm import tqdm


class Scorer(Protocol):
    def score(self, histories: list[list[str]]) -> np.ndarray: ...


def size_on_disk(path: Path) -> int:
    """Bytes of every file of an artifact folder (or of one file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sample_batches(histories: Sequence[list[str]], batch_size: int, count: int, seed: int = 0) -> list[list[list[str]]]:
    rng = random.Random(seed)
    return [rng.sample(list(histories), batch_size) for _ in range(count)]


def measure_latency(
    scorers: dict[str, Scorer],
    histories: Sequence[list[str]],
    batch_size: int,
    rounds: int,
    warmup: int = 5,
) -> dict[str, dict[str, float]]:
    """p50/p99 latency (ms) and throughput (histories/s) of each scorer on the same batches."""
    batches = sample_batches(histories, batch_size, rounds + warmup)
    timings: dict[str, list[float]] = {name: [] for name in scorers}
    for index, batch in enumerate(tqdm(batches, desc=f"latency b={batch_size}", leave=False)):
        for name, scorer in scorers.items():
            start = time.perf_counter()
            scorer.score(batch)
            elapsed = time.perf_counter() - start
            if index >= warmup:
                timings[name].append(elapsed * 1000.0)
    return {
        name: {
            "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)),
            "throughput_per_s": float(batch_size * len(values) / (sum(values) / 1000.0)),
        }
        for name, values in timings.items()
    }
