"""The compression gate: which compressed variant, if any, serves instead of the folded model.

Every variant is judged against the folded FP32 model (``folding``: the trained model with
its text tower cached, same scores, and what serving runs when nothing is compressed):
it passes when it keeps NDCG@10 within ``max_ndcg_drop`` (relative) of it, is at least
``min_size_ratio`` times smaller on disk and at least ``min_speedup`` times faster at batch
1 (p50); the thresholds are ``settings.compression``. Among the variants that pass, the one
with the best NDCG@10 is served (ties: the faster one); when none passes, the folded model
is (lossless, and faster than the trained model). Every verdict carries its reasons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from shoprec.config import CompressionSettings
from training.compression.benchmark import Measurement

THRESHOLDS = ("max_ndcg_drop", "min_size_ratio", "min_speedup")


@dataclass
class Verdict:
    name: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    ndcg_change: float = 0.0  # relative to the baseline, negative = worse
    size_ratio: float = 0.0
    speedup: float = 0.0


@dataclass
class GateDecision:
    picked: str | None  # the variant that passed (None: none did)
    served: str  # the name of the model to serve: ``picked``, else the baseline
    why: str
    thresholds: dict[str, float]
    verdicts: list[Verdict]

    def to_dict(self) -> dict:
        return asdict(self)


def thresholds_of(options: CompressionSettings) -> dict[str, float]:
    return {name: getattr(options, name) for name in THRESHOLDS}


def judge(baseline: Measurement, variant: Measurement, options: CompressionSettings) -> Verdict:
    """One variant's measurements against the baseline's."""
    compared = variant.compared_with(baseline)
    checks = [
        (compared.ndcg_change >= -options.max_ndcg_drop,
         f"NDCG@10 {compared.ndcg_change:+.1%} vs {baseline.name} (limit -{options.max_ndcg_drop:.0%})"),
        (compared.size_ratio >= options.min_size_ratio,
         f"{compared.size_ratio:.3f}x smaller on disk (need >= {options.min_size_ratio:g}x)"),
        (compared.speedup_b1 >= options.min_speedup,
         f"{compared.speedup_b1:.2f}x faster at batch 1 (need >= {options.min_speedup:g}x)"),
    ]
    reasons = [("ok: " if ok else "FAIL: ") + text for ok, text in checks]
    return Verdict(variant.name, all(ok for ok, _ in checks), reasons, compared.ndcg_change, compared.size_ratio,
                   compared.speedup_b1)


def choose_served(baseline: Measurement, variants: list[Measurement], options: CompressionSettings) -> GateDecision:
    """Judge every variant against ``baseline`` and pick the one to serve (the baseline when none passes)."""
    verdicts = [judge(baseline, variant, options) for variant in variants]
    passing = [v for v in verdicts if v.passed]
    if not passing:
        why = f"no variant passed every threshold; the {baseline.name} model is served (same scores as the trained one)"
        return GateDecision(None, baseline.name, why, thresholds_of(options), verdicts)
    best = max(passing, key=lambda v: (round(v.ndcg_change, 4), v.speedup))
    others = ", ".join(v.name for v in passing if v is not best) or "none"
    why = (
        f"{best.name} passed every threshold ({'; '.join(r[4:] for r in best.reasons)}) and has the best "
        f"NDCG@10 of the passing variants (other passing: {others})"
    )
    return GateDecision(best.name, best.name, why, thresholds_of(options), verdicts)
