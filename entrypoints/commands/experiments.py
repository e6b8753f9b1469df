"""``shoprec experiment``: the live experiment by hand (the experiments DAG decides hourly)."""

from __future__ import annotations

import click

from entrypoints.output import emit
from entrypoints.steps import online_experiment
from shoprec.config import load_settings
from shoprec.impressions import arm_stats, attribute
from training.online_test import decide


@click.group()
def experiment() -> None:
    """The live experiment: per-arm rates, and the online test that promotes or stops challengers."""


@experiment.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def status(as_json: bool) -> None:
    """Impressions and rates (95 % Wilson intervals) per arm, and what the online test would decide now
    (nothing is recorded or promoted)."""
    settings = load_settings()
    stats = arm_stats(attribute(settings))
    decision = decide(stats, settings) if settings.experiments.name else None
    lines = [f"{s.experiment or '-'} {s.arm}{' (shadow)' if s.shadow else ''}: {s.impressions} impressions, "
             f"CTR {s.ctr.rate or 0:.4f} [{s.ctr.low or 0:.4f}, {s.ctr.high or 0:.4f}]" for s in stats]
    lines += [f"{a.arm}: {a.verdict}: {a.reason}" for a in (decision.arms if decision else [])]
    emit({"arms": [s.to_json() for s in stats], "decision": decision and decision.to_json()}, as_json,
         "\n".join(lines) or "no impressions yet")


@experiment.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def decide_now(as_json: bool) -> None:
    """Run the online test as the DAG does: promote a winner, stop a loser, record the verdicts."""
    result = online_experiment(load_settings())
    lines = [f"{a['arm']} ({a['version']}): {a['verdict']}: {a['reason']}" for a in result.get("arms", [])]
    emit(result, as_json, "\n".join(lines) or "no experiment configured, or it is finished")
