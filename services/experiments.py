"""Live experiments and impression logging: which arm answers a request, and what it showed.

``Experiments`` splits traffic by ``settings.experiments``: a user (or an anonymous session)
lands in a bucket of 10,000 by a hash of the experiment's name and its id, so the same user
always gets the same arm and a new experiment reshuffles; the first ``percent`` of the buckets
go to the first challenger, the next to the second, the rest to the champion. Each challenger
is its registry version, loaded by the one loader (``CurrentModel`` over
``bundle.load_bundle``, like the champion); until it has loaded, or once the online test gave
it a final verdict (``training.online_test.finished``, polled), its users get the champion
outside the experiment. In shadow mode the challenger scores its slice too (a second request
in the same batch), but the champion's answer is shown; the challenger's is logged with
``shadow`` set.

``ImpressionSink`` hands every answer to the impression log (``shoprec.impressions``) without
waiting for it, counts it (``services.metrics``), and remembers the last answers' arms so an
event naming its recommendation is counted under its arm (in this worker; ``unknown`` for
another worker's).

``report`` is GET /experiments: per arm impressions and rates with Wilson intervals from the
logs (``impressions.attribute``) and the online test's decision as of now.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from services import metrics
from services.bundle import CurrentModel, ServedBundle, load_bundle
from services.resilience import ModelHolder
from shoprec import impressions
from shoprec.config import Settings
from shoprec.impressions import BackgroundLog, Impression, arm_stats, attribute
from training.online_test import CHAMPION, decide, finished

BUCKETS = 10_000
RECENT_ARMS = 100_000  # recommendation ids whose arm this worker remembers, for the attributed-events counter


def bucket(experiment: str, unit: str) -> int:
    """The unit's bucket in [0, BUCKETS): the same for the same experiment and id, everywhere."""
    digest = hashlib.blake2b(f"{experiment}\x1f{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class Assignment:
    experiment: str | None  # None: outside any experiment
    arm: str  # the arm whose answer is shown
    bundle: ServedBundle
    shadow_arm: str | None = None  # shadow mode: the challenger that scores too
    shadow_bundle: ServedBundle | None = None


class Experiments:
    def __init__(self, settings: Settings, champion: CurrentModel,
                 load: Callable[[str], ServedBundle] | None = None):
        self.settings = settings
        self.config = settings.experiments
        self.champion = champion
        load = load or (lambda version: load_bundle(version, settings))  # the champion's loader
        self.arms = {c.name: CurrentModel(settings, ModelHolder(load, lambda v=c.version: v))
                     for c in self.config.challengers}
        # the challengers' slices, in order: (first bucket past the slice, arm)
        edges, total = [], 0.0
        for c in self.config.challengers:
            total += c.percent
            edges.append((round(total * BUCKETS / 100), c.name))
        self._edges = edges
        self._final: dict[str, str] = {}
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        return bool(self.config.name and self.arms)

    def start(self, poll_seconds: float) -> None:
        """Load the challengers and follow the online test's verdicts, in the background."""
        if self.running:
            threading.Thread(target=self._watch, args=(poll_seconds,), name="experiments", daemon=True).start()

    def _watch(self, poll_seconds: float) -> None:
        while True:
            self.refresh()
            if self._stop.wait(poll_seconds):
                return

    def refresh(self) -> None:
        """Read the recorded verdicts; load the challengers still running that have not loaded."""
        self._final = finished(self.settings, self.config.name)
        for name, model in self.arms.items():
            if name not in self._final and model.holder.current is None:
                model.holder.refresh()

    def stop(self) -> None:
        self._stop.set()

    def assign(self, user_id: str | None, session_id: str | None) -> Assignment:
        """The arm of a request: by its user, else its session; the champion outside the experiment."""
        champion = self.champion.bundle()
        unit = user_id if user_id is not None else session_id
        if not self.running or unit is None or "promote" in self._final.values():
            return Assignment(None, CHAMPION, champion)
        arm = self.arm_of(unit)
        served = None if arm == CHAMPION or arm in self._final else self.arms[arm].holder.current
        if arm != CHAMPION and served is None:
            return Assignment(None, CHAMPION, champion)
        metrics.experiment_assignments(self.config.name, arm).inc()
        if served is None:
            return Assignment(self.config.name, CHAMPION, champion)
        if self.config.shadow:
            return Assignment(self.config.name, CHAMPION, champion, arm, served)
        return Assignment(self.config.name, arm, served)

    def arm_of(self, unit: str) -> str:
        """The configured arm of an id, whatever has loaded or finished."""
        b = bucket(self.config.name, unit)
        return next((name for edge, name in self._edges if b < edge), CHAMPION)

    def report(self) -> "ExperimentsReport":
        frame = attribute(self.settings)
        stats = arm_stats(frame)
        decision = decide(stats, self.settings, dict(self._final)) if self.running else None
        return ExperimentsReport(
            experiment=self.config.name or None, shadow=self.config.shadow, metric=self.config.metric,
            min_impressions_per_arm=self.config.min_impressions_per_arm,
            attribution_window_seconds=self.config.attribution_window_seconds,
            arms=[s.to_json() for s in stats if s.experiment == (self.config.name or None)],
            decision=None if decision is None else decision.to_json(), finished=dict(self._final),
        )


@dataclass(frozen=True)
class ExperimentsReport:
    """GET /experiments."""

    experiment: str | None
    shadow: bool
    metric: str
    min_impressions_per_arm: int
    attribution_window_seconds: float
    arms: list[dict]  # impressions.ArmStats.to_json() of the experiment's arms
    decision: dict | None  # online_test.ExperimentDecision.to_json() as of now (not recorded)
    finished: dict[str, str]  # arms with a recorded final verdict

    def to_json(self) -> dict:
        return dict(self.__dict__)


class ImpressionSink:
    """Answers to the impression log (off the request path), counted; event links likewise."""

    def __init__(self, settings: Settings):
        size = settings.experiments.impression_queue_size
        self.enabled = settings.experiments.log_impressions
        self.impressions = BackgroundLog(impressions.impression_log_dir(settings), impressions.IMPRESSIONS,
                                         impressions.impressions_table, max_queue=size,
                                         refine=impressions.without_erased(settings)) if self.enabled else None
        self.links = BackgroundLog(impressions.link_log_dir(settings), impressions.LINKS,
                                   impressions.links_table, max_queue=size)
        self._arms: OrderedDict[str, str] = OrderedDict()
        self._arms_lock = threading.Lock()

    def shown(self, impression: Impression) -> None:
        if self.impressions is None:
            return
        if not self.impressions.offer(impression) or impression.shadow:
            return  # the counter counts lists shown and logged; a shadow list was not shown
        metrics.impressions(impression.arm, impression.model_version).inc()
        with self._arms_lock:
            self._arms[impression.recommendation_id] = impression.arm
            if len(self._arms) > RECENT_ARMS:
                self._arms.popitem(last=False)

    def linked(self, records: list[dict], at: pd.Timestamp) -> None:
        """Events that named their recommendation (validated, as pushed)."""
        for record in records:
            rid = record.get("recommendation_id")
            if rid is not None:
                self.links.offer((str(rid).strip(), record, at))
                arm = self._arms.get(str(rid).strip(), "unknown")
                metrics.attributed_events(str(record.get("event_type", "")).strip().lower(), arm).inc()

    def flush(self) -> None:
        for log in (self.impressions, self.links):
            if log is not None:
                log.flush()
