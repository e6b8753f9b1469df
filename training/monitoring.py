"""The registry's side of the daily monitoring report: the served model's facts and the
offline metrics of every version, handed to ``shoprec.monitoring.report.build_report``.

Reads manifests and ``items.json`` only (no weights are loaded): the report runs beside a
busy service without a model in memory.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from pathlib import Path

import pandas as pd

from shoprec.config import Settings
from shoprec.monitoring.render import ReportFiles, write_report
from shoprec.monitoring.report import MonitoringReport, ServedModel, VersionMetrics, build_report, report_dir
from training.artifact.manifest import ITEMS, read_json, read_manifest
from training.registry import list_versions, production_version, trained_root


def served_model(settings: Settings) -> ServedModel | None:
    """The production version's vocabulary and training-data end (a variant's: its trained root's)."""
    version = production_version(settings)
    if version is None:
        return None
    folder = Path(settings.models_dir) / version
    data_end = read_manifest(folder).get("data_end") or read_manifest(
        Path(settings.models_dir) / trained_root(version, settings)).get("data_end")
    items = frozenset(str(i) for i in read_json(folder / ITEMS))
    return ServedModel(version, items, pd.Timestamp(data_end) if data_end else None)


def version_metrics(settings: Settings) -> list[VersionMetrics]:
    """Every version's offline metrics (the numbers of its manifest), oldest first."""
    return [VersionMetrics(v.version, v.created_at, v.kind, v.production,
                           {k: float(m) for k, m in v.metrics.items() if _number(m)})
            for v in list_versions(settings)]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def daily_report(settings: Settings, day: date, now: datetime | None = None) -> tuple[MonitoringReport, ReportFiles]:
    """Build the report of ``day`` and write it under ``<home>/reports/monitoring/<day>/``."""
    report = build_report(settings, day, now, served_model(settings), version_metrics(settings))
    return report, write_report(report, report_dir(settings, day))
