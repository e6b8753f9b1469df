"""The serving gate: which compressed variant, if any, may replace the FP32 model in serving.

A variant passes when it keeps NDCG@10 within ``max_ndcg_drop`` (relative) of the FP32
model, is at least ``min_size_ratio`` times smaller on disk and at least
``min_speedup`` times faster at batch 1 (p50). Among the variants that pass, the one
with the best NDCG@10 is served (ties: the faster one); every verdict carries its reasons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class GateThresholds:
    max_ndcg_drop: float = 0.02  # relative to FP32
    min_size_ratio: float = 3.0  # FP32 size / variant size
    min_speedup: float = 2.0  # FP32 batch-1 p50 / variant batch-1 p50


@dataclass
class Verdict:
    name: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    ndcg_change: float = 0.0  # relative, negative = worse
    size_ratio: float = 0.0
    speedup: float = 0.0


@dataclass
class GateDecision:
    picked: str | None
    why: str
    thresholds: GateThresholds
    verdicts: list[Verdict]

    def to_dict(self) -> dict:
        return {
            "picked": self.picked,
            "why": self.why,
            "thresholds": asdict(self.thresholds),
            "verdicts": [asdict(v) for v in self.verdicts],
        }


def judge(baseline: dict, variant: dict, thresholds: GateThresholds = GateThresholds()) -> Verdict:
    """One variant's measurements (keys ndcg@10, size_bytes, latency_b1_p50_ms) against FP32's."""
    ndcg_change = variant["ndcg@10"] / baseline["ndcg@10"] - 1.0 if baseline["ndcg@10"] > 0 else 0.0
    size_ratio = baseline["size_bytes"] / variant["size_bytes"]
    speedup = baseline["latency_b1_p50_ms"] / variant["latency_b1_p50_ms"]
    checks = [
        (ndcg_change >= -thresholds.max_ndcg_drop,
         f"NDCG@10 {ndcg_change:+.1%} vs FP32 (limit -{thresholds.max_ndcg_drop:.0%})"),
        (size_ratio >= thresholds.min_size_ratio,
         f"{size_ratio:.2f}x smaller on disk (need >= {thresholds.min_size_ratio:g}x)"),
        (speedup >= thresholds.min_speedup,
         f"{speedup:.2f}x faster at batch 1 (need >= {thresholds.min_speedup:g}x)"),
    ]
    reasons = [("ok: " if ok else "FAIL: ") + text for ok, text in checks]
    return Verdict(variant["name"], all(ok for ok, _ in checks), reasons, ndcg_change, size_ratio, speedup)


def choose_served(baseline: dict, variants: list[dict], thresholds: GateThresholds = GateThresholds()) -> GateDecision:
    """Judge every variant and pick the one to serve (None: keep serving FP32)."""
    verdicts = [judge(baseline, variant, thresholds) for variant in variants]
    passing = [v for v in verdicts if v.passed]
    if not passing:
        return GateDecision(None, "no variant passed every threshold; FP32 stays in service", thresholds, verdicts)
    best = max(passing, key=lambda v: (round(v.ndcg_change, 4), v.speedup))
    others = ", ".join(v.name for v in passing if v is not best) or "none"
    why = (
        f"{best.name} passed every threshold ({'; '.join(r[4:] for r in best.reasons)}) and has the best "
        f"NDCG@10 of the passing variants (other passing: {others})"
    )
    return GateDecision(best.name, why, thresholds, verdicts)
