"""The online test: does a challenger beat the champion on live traffic?

The test, stated: a **fixed-horizon two-proportion z-test** on one attribution rate per
impression (``experiments.metric``: clicked, added or purchased; ``shoprec.impressions``).
No decision before both the champion and the challenger have
``experiments.min_impressions_per_arm`` impressions (the horizon: looking earlier and
stopping at the first significant look would inflate the false-positive rate). At the
horizon, with the pooled standard error and a two-sided level ``alpha`` split over the
challengers (Bonferroni: ``alpha / m`` for m challengers):

- z >= z_crit: **promote** (the challenger is better; the best of several such wins);
- z <= -z_crit: **stop** (it loses);
- otherwise: **stop** (no significant difference at the horizon: the champion stays).

A shadow experiment never promotes: its challenger's lists were not shown, so what users
did with them says little; its decision is **continue** until it runs live. Impressions of
one user are not independent (the test counts impressions, not users): the stated level holds
when users see few lists each, which the minimum sample should be chosen with in mind.

Decisions are appended to ``models_dir/EXPERIMENTS.jsonl`` beside the registry's history
(``record``); the service stops routing traffic to an arm with a final verdict (``finished``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Literal

from shoprec.config import Settings
from shoprec.impressions import ArmStats, Rate
from shoprec.locks import exclusive_lock

Verdict = Literal["promote", "stop", "continue"]
FINAL: frozenset[str] = frozenset({"promote", "stop"})
DECISIONS = "EXPERIMENTS.jsonl"
CHAMPION = "champion"


@dataclass(frozen=True)
class ZTest:
    z: float | None  # None: no variance to test (both rates 0 or both 1)
    p_value: float


def two_proportion_z(champion: Rate, challenger: Rate) -> ZTest:
    """The pooled two-proportion z statistic of challenger - champion, and its two-sided p-value."""
    n1, n2 = champion.trials, challenger.trials
    pooled = (champion.successes + challenger.successes) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return ZTest(None, 1.0)
    z = (challenger.successes / n2 - champion.successes / n1) / se
    return ZTest(z, 2 * (1 - NormalDist().cdf(abs(z))))


@dataclass(frozen=True)
class ArmDecision:
    experiment: str
    arm: str
    version: str
    verdict: Verdict
    reason: str
    metric: str
    champion: Rate
    challenger: Rate
    z: float | None
    p_value: float | None
    z_critical: float

    def to_json(self) -> dict:
        return {**asdict(self), "champion": self.champion.to_json(), "challenger": self.challenger.to_json()}


@dataclass(frozen=True)
class ExperimentDecision:
    experiment: str
    arms: list[ArmDecision]
    at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def promoted(self) -> ArmDecision | None:
        return next((a for a in self.arms if a.verdict == "promote"), None)

    def to_json(self) -> dict:
        return {"experiment": self.experiment, "at": self.at, "arms": [a.to_json() for a in self.arms],
                "promoted": None if self.promoted is None else self.promoted.version}


def decide(stats: list[ArmStats], settings: Settings, done: dict[str, Verdict] | None = None) -> ExperimentDecision:
    """The verdict against the champion of each configured challenger not ``done`` (``finished``:
    a final verdict stands; a stopped arm's frozen numbers must not win later against a champion
    whose numbers grew), from ``impressions.arm_stats``."""
    config = settings.experiments
    live = {s.arm: s for s in stats if s.experiment == config.name and s.shadow == config.shadow}
    champion = next((s for s in stats if s.experiment == config.name and s.arm == CHAMPION and not s.shadow), None)
    z_crit = NormalDist().inv_cdf(1 - config.alpha / (2 * max(1, len(config.challengers))))  # alpha over all arms
    open_arms = [c for c in config.challengers if c.name not in (done or {})]
    arms = [_arm_decision(config, c.name, c.version, champion, live.get(c.name), z_crit) for c in open_arms]
    return ExperimentDecision(config.name, _one_winner(arms))


def _arm_decision(config, arm: str, version: str, champion: ArmStats | None, challenger: ArmStats | None,
                  z_crit: float) -> ArmDecision:
    empty = Rate(0, 0, None, None, None)
    a = champion.rate(config.metric) if champion else empty
    b = challenger.rate(config.metric) if challenger else empty

    def verdict(v: Verdict, reason: str, test: ZTest | None = None) -> ArmDecision:
        return ArmDecision(config.name, arm, version, v, reason, config.metric, a, b,
                           None if test is None else test.z, None if test is None else test.p_value, z_crit)

    if config.shadow:
        return verdict("continue", "shadow mode: its lists were not shown; run it live to decide")
    need = config.min_impressions_per_arm
    if a.trials < need or b.trials < need:
        return verdict("continue", f"below the horizon: champion {a.trials}, {arm} {b.trials} of {need} impressions")
    test = two_proportion_z(a, b)
    if test.z is not None and test.z >= z_crit:
        return verdict("promote", f"{config.metric} {b.rate:.4f} vs {a.rate:.4f}: z={test.z:.2f} >= {z_crit:.2f}", test)
    if test.z is not None and test.z <= -z_crit:
        return verdict("stop", f"loses: {config.metric} {b.rate:.4f} vs {a.rate:.4f}: z={test.z:.2f} <= -{z_crit:.2f}", test)
    z = "n/a" if test.z is None else f"{test.z:.2f}"
    return verdict("stop", f"no significant difference at the horizon (z={z}, |z| < {z_crit:.2f}): the champion stays", test)


def _one_winner(arms: list[ArmDecision]) -> list[ArmDecision]:
    """Several winners: the one with the highest rate is promoted, the others stop."""
    winners = [a for a in arms if a.verdict == "promote"]
    if len(winners) <= 1:
        return arms
    best = max(winners, key=lambda a: a.challenger.rate)
    return [a if a.verdict != "promote" or a is best else
            ArmDecision(**{**a.__dict__, "verdict": "stop", "reason": f"{best.arm} won by more; " + a.reason})
            for a in arms]


# --- the decision log -----------------------------------------------------------------------------


def decisions_path(settings: Settings) -> Path:
    return Path(settings.models_dir) / DECISIONS


def record(decision: ExperimentDecision, settings: Settings) -> None:
    """Append each new final verdict (promote, stop) to the decision log, durably; an arm that has
    one already keeps it."""
    path = decisions_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_name(".experiments.lock")):
        done = finished(settings, decision.experiment)
        lines = [json.dumps({"at": decision.at, **a.to_json()}) for a in decision.arms
                 if a.verdict in FINAL and a.arm not in done]
        if lines:
            _append(path, lines)


def _append(path: Path, lines: list[str]) -> None:
    with open(path, "a") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def finished(settings: Settings, experiment: str) -> dict[str, Verdict]:
    """The arms of ``experiment`` with a final verdict: arm -> promote | stop."""
    path = decisions_path(settings)
    if not experiment or not path.is_file():
        return {}
    out: dict[str, Verdict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            if entry["experiment"] == experiment and entry["verdict"] in FINAL:
                out.setdefault(entry["arm"], entry["verdict"])  # the first final verdict stands
    return out
