"""The pipeline steps: one plain function per task of the Airflow DAGs (``dags/`` only wires
them), usable without Airflow (the CLI and the tests call them too).

shoprec_features:  pick_batches -> validate_and_ingest -> build_features -> feast_apply -> materialize
                   compact_event_log (every hour) -> build_features
shoprec_training:  enough_new_data -> training_set -> train -> compress -> evaluate -> gate
                   -> release -> deploy -> smoke_test
shoprec_monitoring: monitoring_report (daily: the drift and health report)
shoprec_experiments: online_experiment (hourly: the live experiment's online test; promote or stop)

What one task hands the next crosses Airflow's XCom as a plain dict: a step takes the
upstream dicts (``TrainingSet.from_dict`` ...), works on typed results and returns their
``to_dict()``; the results the DAG reads in Python (``Ingested``, ``PromotionDecision``,
``Release``) are returned as such, and the DAG turns them into dicts. A training run's hyperparameters, compression options and
preset come from its DAG params through ``run_settings`` (a validated copy of the settings).

Imports of the heavy stacks (Great Expectations, Feast, torch: seconds of CPU each) sit inside
the steps that use them: Airflow's DAG processor imports this module every time it re-parses
the DAG files, and only the task that runs a step needs that step's stack.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from entrypoints.inbox import INBOX_FORMAT, inbox_batches
from entrypoints.orchestration import FEATURES_ASSET_NAME, task_defaults
from shoprec.config import Settings

if TYPE_CHECKING:
    from training.champion import PromotionDecision

__all__ = [
    "FEATURES_ASSET_NAME", "BatchRefused", "Ingested", "NotServable", "Release", "build_features",
    "compact_event_log", "compress",
    "deploy", "enough_new_data", "evaluate", "feast_apply", "gate", "materialize", "pick_batches", "release",
    "release_challenger", "run_settings", "smoke_test", "task_defaults", "train", "training_set",
    "validate_and_ingest", "ThresholdsBroken", "monitoring_report", "online_experiment",
]


log = logging.getLogger(__name__)

class BatchRefused(RuntimeError):
    """The validation gate refused a batch (it was quarantined); bad data stays bad: no retry."""


class NotServable(RuntimeError):
    """A model version the service could not load or answer with; it must not become production."""


# --- shoprec_features ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ingested:
    """What one features run took in: the training DAG's trigger reads ``new_events``."""

    batches: list[str]
    new_events: int
    first_event: datetime | None  # the oldest new event: materialization starts there

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "first_event": self.first_event.isoformat() if self.first_event else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Ingested":
        first = data.get("first_event")
        return cls(list(data["batches"]), int(data["new_events"]), datetime.fromisoformat(first) if first else None)

    def asset_extra(self) -> dict[str, Any]:
        """The extra of the ``shoprec_features`` asset event this run emits."""
        return {"new_events": self.new_events, "batches": self.batches}


def pick_batches(settings: Settings, start: datetime, end: datetime, batch: str | None = None) -> list[str]:
    """The inbox batches that arrived in [start, end), oldest first; just ``batch`` when given."""
    if batch:
        return [batch]
    return [str(path) for path in inbox_batches(settings, start, end)]


def validate_and_ingest(settings: Settings, batches: list[str]) -> Ingested:
    """Each batch through the Great Expectations gate into the lake; BatchRefused names every
    refused batch (each already quarantined) once all were tried."""
    from shoprec.ingest import ingest  # heavy (Great Expectations): see the module docstring

    with _data_lock(settings):
        reports = [ingest(path, INBOX_FORMAT, settings) for path in batches]
    for report in reports:
        print(report.summary())
    refused = [report for report in reports if not report.ok]
    if refused:
        raise BatchRefused("validation refused " + ", ".join(f"{r.source} (quarantined in {r.quarantine})" for r in refused))
    firsts = [datetime.fromisoformat(r.counts["first_event"]) for r in reports if r.counts.get("first_event")]
    return Ingested([r.batch_id for r in reports], sum(int(r.counts["events"]) for r in reports), min(firsts, default=None))


def compact_event_log(settings: Settings) -> dict[str, Any]:
    """The real-time event log folded into one Parquet file per day (``shoprec.event_log.compact``):
    its file count stays bounded whatever the traffic, each event kept once, erased users' dropped."""
    from shoprec.event_log import compact  # light, but its callers' imports are heavy: see the module docstring
    from shoprec.features.tables import event_log_dir  # heavy (the text model): see the module docstring
    from shoprec.ledger import drop_erased

    with _data_lock(settings):  # never during an erasure: both rewrite the log
        return compact(event_log_dir(settings), drop=lambda events: drop_erased(events, settings)).to_dict()


def build_features(settings: Settings) -> dict[str, Any]:
    """The feature tables from the lake."""
    from shoprec.features.tables import build_tables  # heavy (the text model): see the module docstring

    with _data_lock(settings):
        return build_tables(settings).to_dict()


def feast_apply(settings: Settings) -> dict[str, Any]:
    """Register the feature views and services in Feast."""
    from shoprec.features.store import apply  # heavy (Feast): see the module docstring

    return apply(settings).to_dict()


def materialize(settings: Settings, ingested: Ingested, end: datetime) -> dict[str, Any]:
    """Fill the online store up to ``end``, from the oldest new event on: a backfilled or late
    batch reaches the online store too."""
    from shoprec.erasure import drop_erased_from_files  # heavy (Feast): see the module docstring
    from shoprec.features.store import materialize as materialize_views  # heavy (Feast): see the module docstring
    from shoprec.features.tables import TABLES, table_path  # heavy (the text model): see the module docstring

    with _data_lock(settings):
        # what the online store gets never holds an erased user, whenever the tables were built
        drop_erased_from_files([table_path(settings, name) for name in TABLES], settings)
        return materialize_views(settings, end=end, since=ingested.first_event).to_dict()


@contextmanager
def _data_lock(settings: Settings) -> Iterator[None]:
    """The lock erasures take too (``shoprec.erasure.data_lock``), after finishing any erasure a
    crash left half done: a features step never runs while a user is being erased."""
    from shoprec.erasure import data_lock, resume_pending  # heavy (Feast): see the module docstring

    try:
        resume_pending(settings)
    except Exception as exc:  # noqa: BLE001 - the ledger keeps the user out of this step's data anyway
        log.error("an unfinished erasure failed again (it stays in the ledger, retried next run): %s", exc)
    with data_lock(settings):
        yield


# --- shoprec_training ---------------------------------------------------------------------


def run_settings(settings: Settings, params: Mapping[str, Any] | None) -> Settings:
    """The settings of one training run: its DAG params (``preset``, or ``profile``, its old
    name; hyperparameter ``overrides``; ``compression`` options) on top of ``settings``.
    ValueError for an unknown hyperparameter or compression option."""
    params = params or {}
    training: dict[str, Any] = {"overrides": {**settings.training.overrides, **(params.get("overrides") or {})}}
    preset = params.get("preset") or params.get("profile")
    if preset:
        training["preset"] = preset
    compression = dict(params.get("compression") or {})
    unknown = sorted(set(compression) - set(type(settings.compression).model_fields))
    if unknown:
        known = ", ".join(type(settings.compression).model_fields)
        raise ValueError(f"unknown compression option(s) {', '.join(unknown)}; known: {known}")
    return settings.with_overrides(training=training, compression=compression)


def enough_new_data(settings: Settings, triggering_asset_events: Any) -> bool:
    """Whether a training run goes on: always when scheduled (no triggering asset events),
    otherwise once the feature updates that triggered it brought ``min_new_events_for_training``."""
    events = [event for batch in (triggering_asset_events or {}).values() for event in batch]
    if not events:
        return True
    new = sum(int((event.extra or {}).get("new_events", 0)) for event in events)
    wanted = settings.promotion.min_new_events_for_training
    print(f"{new} new events since the last training run (need {wanted})")
    return new >= wanted


def training_set(settings: Settings, run_id: str) -> dict[str, Any]:
    """Fix the run's data: the hold-out cutoff, the training events, the hold-out events."""
    from training.champion import build_training_set  # heavy (torch): see the module docstring

    with _data_lock(settings):  # an erasure waits: it could not scrub the run's files while they are written
        return build_training_set(settings, run_id).to_dict()


def train(settings: Settings, dataset: Mapping[str, Any], mode: str = "auto") -> dict[str, Any]:
    """The challenger: ``full`` training, ``warm`` (from production) or ``auto``."""
    from training.champion import TrainingSet, train_challenger  # heavy (torch): see the module docstring

    return train_challenger(settings, TrainingSet.from_dict(dataset), mode=mode).to_dict()


def compress(settings: Settings, challenger: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict[str, Any]:
    """Every compressed variant of the challenger; the compression gate picks the one to serve."""
    from training.champion import Challenger, TrainingSet, compress_challenger  # heavy (torch): see the module docstring

    return compress_challenger(settings, Challenger.from_dict(challenger), TrainingSet.from_dict(dataset)).to_dict()


def evaluate(settings: Settings, compressed: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The challenger's served variant against the champion's served version, same hold-out."""
    from training.champion import CompressedChallenger, TrainingSet, challenger_vs_champion  # heavy (torch): see the module docstring

    return challenger_vs_champion(settings, CompressedChallenger.from_dict(compressed), TrainingSet.from_dict(dataset)).to_dict()


def gate(settings: Settings, evaluation: Mapping[str, Any], compressed: Mapping[str, Any]) -> PromotionDecision:
    """The promotion decision: promote or not, the reasons, the version that would be served."""
    from training.champion import CompressedChallenger, Evaluation, passes_gate  # heavy (torch): see the module docstring

    return passes_gate(settings, Evaluation.from_dict(evaluation), CompressedChallenger.from_dict(compressed))


@dataclass(frozen=True)
class Release:
    """A version that proved it can be served and became production."""

    version: str
    previous: str | None  # the production version it replaced
    items: int  # the size of its vocabulary

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Release":
        return cls(str(data["version"]), data.get("previous"), int(data["items"]))


def release(version: str, settings: Settings) -> Release:
    """Load ``version`` exactly as the service does and ask it for a recommendation; only then
    promote it. NotServable (production untouched) when either fails."""
    from services.bundle import load_bundle  # heavy (torch, the lake): see the module docstring
    from training.registry import promote  # heavy (torch): see the module docstring

    try:
        recommender = load_bundle(version, settings).recommender
        top = recommender.recommend([recommender.item_ids[0]], k=5)
    except Exception as error:  # whatever breaks this load breaks the service's the same way: report it, never promote
        raise NotServable(f"model version {version} cannot be served: {type(error).__name__}: {error}") from error
    if not top:
        raise NotServable(f"model version {version} recommends nothing")
    previous = promote(version, settings)
    return Release(version, previous, len(recommender.item_ids))


def release_challenger(settings: Settings, compressed: Mapping[str, Any]) -> Release:
    """``release`` of the version the compression gate picked for the challenger."""
    from training.champion import CompressedChallenger  # heavy (torch): see the module docstring

    return release(CompressedChallenger.from_dict(compressed).served_version, settings)


def deploy(settings: Settings, released: Release) -> dict[str, Any]:
    """Hot-swap the running service to the released version; a failure rolls production back."""
    from services import client  # heavy (torch, through training.registry): see the module docstring

    return client.deploy(settings, released.version, url=settings.airflow.service_url or None).to_dict()


def smoke_test(settings: Settings, released: Release) -> dict[str, Any]:
    """The service serves the released version and answers; a failure rolls production back."""
    from services import client  # heavy (torch, through training.registry): see the module docstring

    return client.verify_deployment(settings, released.version, url=settings.airflow.service_url or None).to_dict()


# --- shoprec_monitoring -------------------------------------------------------------------


class ThresholdsBroken(RuntimeError):
    """The daily report found drift or staleness beyond its thresholds (the report is written and
    named in the message); a retry reads the same data: no retry."""


def monitoring_report(settings: Settings, day: date, now: datetime | None = None) -> dict[str, Any]:
    """The drift and health report of ``day`` (``training.monitoring.daily_report``): HTML, JSON
    and PNGs under ``<home>/reports/monitoring/<day>/``; ThresholdsBroken when a threshold breaks."""
    from training.monitoring import daily_report  # heavy (Feast, matplotlib): see the module docstring

    report, files = daily_report(settings, day, now)
    log.info("%s", report.summary())  # Airflow's task log; the CLI prints the result itself
    log.info("monitoring report: %s", files.html)
    if not report.ok:
        broken = "; ".join(b.message for b in report.breaches)
        raise ThresholdsBroken(f"monitoring {report.day}: {broken} (report: {files.html})")
    return {**files.to_dict(), "ok": report.ok, "summary": report.summary()}


# --- shoprec_experiments --------------------------------------------------------------------


def online_experiment(settings: Settings) -> dict[str, Any]:
    """The live experiment's online test (``training.online_test``) on the impression logs so
    far: a challenger that wins is released (``release``: loaded as the service loads it, then
    promoted through the registry), one that loses or draws at the horizon is stopped; the final
    verdicts go to the decision log, which the service follows (no traffic to a finished arm)."""
    from shoprec import impressions  # heavy (pandas, the logs): see the module docstring
    from training import online_test  # heavy (torch, through training): see the module docstring

    experiment = settings.experiments
    if not experiment.name or not experiment.challengers:
        return {"experiment": None, "arms": [], "promoted": None}
    done = online_test.finished(settings, experiment.name)
    if "promote" in done.values() or all(c.name in done for c in experiment.challengers):
        return {"experiment": experiment.name, "arms": [], "promoted": None, "finished": True}
    impressions.compact(settings)
    decision = online_test.decide(impressions.arm_stats(impressions.attribute(settings)), settings, done)
    for arm in decision.arms:
        log.info("experiment %s, arm %s (%s): %s: %s", arm.experiment, arm.arm, arm.version, arm.verdict, arm.reason)
    if decision.promoted is not None:  # released before recorded: a crash between them decides again
        release(decision.promoted.version, settings)
    online_test.record(decision, settings)
    return decision.to_json()
