"""Measurements of a served scorer: size on disk, CPU latency at batch 1 and 32, throughput.

Latencies are taken round-robin over all scorers (one call of each per round), so a
neighbour's burst of CPU use on a shared machine hits every variant alike instead
of whichever one happened to be running.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from tqdm import tqdm


class Scorer(Protocol):
    def score(self, histories: list[list[str]]) -> np.ndarray: ...


@dataclass
class Measurement:
    """One model of the compression report: accuracy, size, latency, and each relative to the baseline."""

    name: str  # "fp32" (the trained model), "folded" (the baseline) or the variant's method
    version: str
    method: str
    parameters: dict = field(default_factory=dict)
    size_bytes: int = 0
    ndcg_at_10: float = 0.0
    hr_at_10: float = 0.0
    latency_b1_p50_ms: float = 0.0
    latency_b1_p99_ms: float = 0.0
    throughput_b1_per_s: float = 0.0
    latency_b32_p50_ms: float = 0.0
    latency_b32_p99_ms: float = 0.0
    throughput_b32_per_s: float = 0.0
    size_ratio: float = 1.0  # baseline size / this size
    speedup_b1: float = 1.0  # baseline batch-1 p50 / this one
    ndcg_change: float = 0.0  # relative to the baseline, negative = worse

    def record_latency(self, batch_size: int, latency: dict[str, float]) -> None:
        setattr(self, f"latency_b{batch_size}_p50_ms", latency["p50_ms"])
        setattr(self, f"latency_b{batch_size}_p99_ms", latency["p99_ms"])
        setattr(self, f"throughput_b{batch_size}_per_s", latency["throughput_per_s"])

    def compared_with(self, baseline: "Measurement") -> "Measurement":
        """This measurement with its size ratio, speed-up and NDCG change against ``baseline``."""
        ndcg_change = self.ndcg_at_10 / baseline.ndcg_at_10 - 1.0 if baseline.ndcg_at_10 > 0 else 0.0
        return replace(self, size_ratio=baseline.size_bytes / self.size_bytes,
                       speedup_b1=baseline.latency_b1_p50_ms / self.latency_b1_p50_ms, ndcg_change=ndcg_change)

    def to_dict(self) -> dict:
        return asdict(self)


def size_on_disk(path: Path) -> int:
    """Bytes of every file of an artifact folder (or of one file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sample_batches(histories: Sequence[list[str]], batch_size: int, count: int, seed: int = 0) -> list[list[list[str]]]:
    rng = random.Random(seed)
    pool = list(histories)
    if len(pool) < batch_size:  # a small shop: repeat histories rather than shrink the batch
        return [rng.choices(pool, k=batch_size) for _ in range(count)]
    return [rng.sample(pool, batch_size) for _ in range(count)]


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
