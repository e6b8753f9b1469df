"""The daily report: its typed parts, its thresholds, and ``build_report`` that reads one day.

The report's day is ``[day 00:00, day + 1)`` UTC, its reference the ``reference_days`` before.
Events come from the lake and the real-time event log (erased users left out), the online rows
of a sample of the day's users from the Feast online store, the impressions and what they led
to from ``shoprec.impressions.attribute``; the served model's facts and the offline metrics per
version are handed in (``training.monitoring`` reads them from the registry).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shoprec import event_log, lake
from shoprec.config import MonitoringSettings, Settings
from shoprec.ledger import drop_erased
from shoprec.monitoring import drift, health

DAY = pd.Timedelta(days=1)


# --- the typed report ---------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    """Two share distributions over the same labels (for the tables and the plots)."""

    labels: list[str]
    reference: list[float]
    current: list[float]

    @classmethod
    def of(cls, reference: pd.Series, current: pd.Series) -> "Distribution":
        labels = list(dict.fromkeys([*reference.index, *current.index]))
        return cls([str(x) for x in labels], [float(v) for v in reference.reindex(labels, fill_value=0.0)],
                   [float(v) for v in current.reindex(labels, fill_value=0.0)])


@dataclass(frozen=True)
class ServedModel:
    """What the report needs of the production model: its version, vocabulary and the end of its
    training data (a user with no event up to then is one the model never trained on)."""

    version: str
    item_ids: frozenset[str]
    data_end: pd.Timestamp | None


@dataclass(frozen=True)
class InputDrift:
    events: int  # of the day
    reference_events: int
    users: int  # distinct users of the day
    event_mix: Distribution
    event_mix_js: float | None  # None: a window without events
    item_popularity: Distribution  # the reference's top N items and the rest
    item_js: float | None
    item_psi: float | None
    unknown_item_share: float | None  # events of the day on items the served model does not know
    unknown_user_share: float | None  # users of the day with no event up to the model's data end

    @classmethod
    def from_dict(cls, data: dict) -> "InputDrift":
        return cls(**{**data, "event_mix": Distribution(**data["event_mix"]),
                      "item_popularity": Distribution(**data["item_popularity"])})


@dataclass(frozen=True)
class Freshness:
    """Age of the online rows (``user_recent_items``) of a sample of the day's users: hours from
    the newest event a row holds to the report's time."""

    sampled_users: int
    without_row: int  # sampled users the online store has no row for
    age_hours_p50: float | None
    age_hours_p95: float | None
    age_hours_max: float | None
    ages_hours: list[float] = field(default_factory=list)  # per user with a row (the histogram)
    error: str | None = None  # the online store could not be read


@dataclass(frozen=True)
class VersionDay:
    """Online CTR of one model version on one day: impressions with a click on a shown item."""

    day: str
    model_version: str
    impressions: int
    clicks: int
    ctr: float


@dataclass(frozen=True)
class VersionMetrics:
    """A registry version's offline metrics (its manifest's hold-out evaluation)."""

    version: str
    created_at: str | None
    kind: str
    production: bool
    metrics: dict[str, float]


@dataclass(frozen=True)
class ModelQuality:
    online: list[VersionDay]  # per day and version, over ``ctr_days`` up to the report's day
    offline: list[VersionMetrics]  # every version, oldest first

    @classmethod
    def from_dict(cls, data: dict) -> "ModelQuality":
        return cls([VersionDay(**v) for v in data["online"]], [VersionMetrics(**v) for v in data["offline"]])


@dataclass(frozen=True)
class Breach:
    """A threshold the report broke: it fails the task and alerts."""

    check: str  # the settings field, e.g. max_item_psi
    observed: float
    threshold: float
    message: str


@dataclass(frozen=True)
class MonitoringReport:
    day: str  # YYYY-MM-DD
    now: str  # the time ages are measured at (ISO)
    reference_days: int
    model_version: str | None  # production when the report ran
    drift: InputDrift
    freshness: Freshness
    quality: ModelQuality
    breaches: list[Breach]

    @property
    def ok(self) -> bool:
        return not self.breaches

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    @classmethod
    def from_dict(cls, data: dict) -> "MonitoringReport":
        data = {k: v for k, v in data.items() if k != "ok"}
        return cls(**{**data, "drift": InputDrift.from_dict(data["drift"]), "freshness": Freshness(**data["freshness"]),
                      "quality": ModelQuality.from_dict(data["quality"]),
                      "breaches": [Breach(**b) for b in data["breaches"]]})

    def summary(self) -> str:
        d, f = self.drift, self.freshness
        status = "OK" if self.ok else f"{len(self.breaches)} threshold(s) broken: " + "; ".join(b.message for b in self.breaches)
        return (f"{self.day}: {d.events} events ({d.reference_events} in the {self.reference_days} days before), "
                f"event-mix JS {_fmt(d.event_mix_js)}, item PSI {_fmt(d.item_psi)}, unknown items {_fmt(d.unknown_item_share)}, "
                f"unknown users {_fmt(d.unknown_user_share)}, online-row age p95 {_fmt(f.age_hours_p95)} h -- {status}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- thresholds ---------------------------------------------------------------------------


def breaches(drift_: InputDrift, freshness: Freshness, quality: ModelQuality, model_version: str | None,
             day: str, limits: MonitoringSettings) -> list[Breach]:
    """Every threshold of ``limits`` the day's numbers break (a check without a number is skipped)."""
    found = []

    def above(check: str, observed: float | None, limit: float, what: str, off_at: float | None = None) -> None:
        if observed is not None and limit != off_at and observed > limit:
            found.append(Breach(check, observed, limit, f"{what} {observed:.3f} > {limit:g}"))

    if drift_.events < limits.min_events:
        found.append(Breach("min_events", drift_.events, limits.min_events,
                            f"{drift_.events} events on {day} < {limits.min_events} (has the event stream stopped?)"))
    above("max_event_mix_js", drift_.event_mix_js, limits.max_event_mix_js, "event-type mix JS divergence")
    above("max_item_psi", drift_.item_psi, limits.max_item_psi, "item popularity PSI")
    above("max_unknown_item_share", drift_.unknown_item_share, limits.max_unknown_item_share,
          "share of events on items the served model does not know", off_at=1.0)
    above("max_unknown_user_share", drift_.unknown_user_share, limits.max_unknown_user_share,
          "share of users the served model never trained on", off_at=1.0)
    found += _freshness_breaches(freshness, limits)
    found += _ctr_breaches(quality, model_version, day, limits)
    return found


def _freshness_breaches(freshness: Freshness, limits: MonitoringSettings) -> list[Breach]:
    if freshness.error:
        return [Breach("max_feature_age_hours", float("inf"), limits.max_feature_age_hours,
                       f"the online store could not be read: {freshness.error}")]
    if freshness.sampled_users and freshness.age_hours_p95 is None:
        return [Breach("max_feature_age_hours", float("inf"), limits.max_feature_age_hours,
                       f"none of the {freshness.sampled_users} sampled users of the day has an online row")]
    age = freshness.age_hours_p95
    if age is not None and age > limits.max_feature_age_hours:
        return [Breach("max_feature_age_hours", age, limits.max_feature_age_hours,
                       f"online rows are {age:.1f} h old (p95) > {limits.max_feature_age_hours:g} h")]
    return []


def _ctr_breaches(quality: ModelQuality, model_version: str | None, day: str, limits: MonitoringSettings) -> list[Breach]:
    if not limits.min_ctr:
        return []
    today = [v for v in quality.online if v.day == day and v.model_version == model_version
             and v.impressions >= limits.min_impressions_for_ctr]
    return [Breach("min_ctr", v.ctr, limits.min_ctr, f"online CTR of {v.model_version} {v.ctr:.3f} < {limits.min_ctr:g} "
                   f"({v.clicks} clicks of {v.impressions} impressions)") for v in today if v.ctr < limits.min_ctr]


# --- reading one day ------------------------------------------------------------------------


def day_start(day: date) -> pd.Timestamp:
    return pd.Timestamp(day.isoformat(), tz="UTC")


def build_report(settings: Settings, day: date, now: datetime | None, model: ServedModel | None,
                 versions: list[VersionMetrics]) -> MonitoringReport:
    """The report of ``day``: its events against the ``reference_days`` before, the online rows'
    age at ``now`` (default: the day's end), the online CTR per version over ``ctr_days``."""
    limits = settings.monitoring
    start = day_start(day)
    now_ts = utc(now) if now is not None else start + DAY
    logged = _event_log(settings)
    events = window_events(settings, start - limits.reference_days * DAY, start + DAY, logged)
    current = events[events["timestamp"] >= start]
    drift_ = day_drift(settings, events[events["timestamp"] < start], current, model, logged)
    freshness = online_freshness(settings, current, now_ts, limits.freshness_sample_users)
    quality = ModelQuality(online_ctr(settings, start + DAY - limits.ctr_days * DAY, start + DAY), versions)
    version = model.version if model else None
    return MonitoringReport(day.isoformat(), now_ts.isoformat(), limits.reference_days, version, drift_, freshness,
                            quality, breaches(drift_, freshness, quality, version, day.isoformat(), limits))


def day_drift(settings: Settings, reference: pd.DataFrame, current: pd.DataFrame, model: ServedModel | None,
              logged: pd.DataFrame) -> InputDrift:
    """``input_drift`` against the served model's vocabulary and the users of its training data."""
    known = None
    if model is not None and model.data_end is not None:
        known = known_users(settings, model.data_end, current["user_id"].unique(), logged)
    return input_drift(reference, current, settings.monitoring.top_items, model.item_ids if model else None, known)


def input_drift(reference: pd.DataFrame, current: pd.DataFrame, top_n: int, vocabulary: frozenset[str] | None,
                known_users_: pd.Index | None) -> InputDrift:
    """The day's events (``current``) against the reference window's, and against the model."""
    both = len(reference) and len(current)
    ref_mix, cur_mix = drift.event_mix(reference), drift.event_mix(current)
    ref_items, cur_items = drift.item_bins(reference, current, top_n)
    users = pd.Series(current["user_id"].unique(), dtype="string")
    return InputDrift(
        events=len(current), reference_events=len(reference), users=len(users),
        event_mix=Distribution.of(ref_mix, cur_mix),
        event_mix_js=drift.js_divergence(ref_mix, cur_mix) if both else None,
        item_popularity=Distribution.of(ref_items, cur_items),
        item_js=drift.js_divergence(ref_items, cur_items) if both else None,
        item_psi=drift.psi(ref_items, cur_items) if both else None,
        unknown_item_share=drift.unknown_share(current["item_id"], vocabulary) if vocabulary is not None else None,
        unknown_user_share=drift.unknown_share(users, known_users_) if known_users_ is not None else None,
    )


def _event_log(settings: Settings) -> pd.DataFrame:
    """The real-time event log, read once per report (the log reads whole; compaction keeps it to
    one file per day)."""
    from shoprec.features.tables import event_log_dir  # the log's place; tables imports the feature stack

    return event_log.read_events(event_log_dir(settings))


def window_events(settings: Settings, start: pd.Timestamp, end: pd.Timestamp, logged: pd.DataFrame) -> pd.DataFrame:
    """Lake and event-log events in [start, end), each once, erased users left out: the day
    partitions of the window only, four columns."""
    columns = ["user_id", "item_id", "event_type", "timestamp"]
    parts = [lake.read_events(settings.lake_dir, start, end)[columns],
             logged.loc[(logged["timestamp"] >= start) & (logged["timestamp"] < end), columns]]
    events = pd.concat([drop_erased(p, settings) for p in parts], ignore_index=True)
    return events.drop_duplicates().reset_index(drop=True)


def known_users(settings: Settings, until: pd.Timestamp, candidates, logged: pd.DataFrame) -> pd.Index:
    """Which of ``candidates`` have an event at or before ``until``: read from the lake's files
    (two columns, filtered in Arrow) and the event log."""
    until = utc(until)
    if not len(candidates):
        return pd.Index([], dtype="string")
    wanted = pa.array(pd.Series(candidates, dtype="string").tolist(), type=pa.string())
    found = []
    for path in lake.event_files(settings.lake_dir, end=until + pd.Timedelta(1, "ns")):
        table = pq.read_table(path, columns=["user_id", "timestamp"])
        latest = pa.scalar(until, type=table["timestamp"].type)
        mask = pc.and_(pc.less_equal(table["timestamp"], latest), pc.is_in(table["user_id"], value_set=wanted))
        found.append(pc.unique(table.filter(mask)["user_id"]).to_pandas())
    found.append(logged.loc[(logged["timestamp"] <= until) & logged["user_id"].isin(candidates), "user_id"])
    return pd.Index(pd.concat(found, ignore_index=True).astype("string").unique())


def online_freshness(settings: Settings, current: pd.DataFrame, now: pd.Timestamp, sample_size: int) -> Freshness:
    """Read the online rows of a seeded sample of the day's users; their age at ``now``."""
    users = pd.Series(current["user_id"].unique(), dtype="string")
    users = users.sample(min(sample_size, len(users)), random_state=0).sort_values().tolist()
    if not users:
        return Freshness(0, 0, None, None, None)
    try:
        newest = health.newest_per_user(users, _online_timestamps(settings, users))
    except Exception as error:  # noqa: BLE001 - an unreadable store is a finding of the report, not its crash
        return Freshness(len(users), len(users), None, None, None, error=f"{type(error).__name__}: {error}")
    ages = health.row_ages_hours(newest, now)
    if not len(ages):
        return Freshness(len(users), len(users), None, None, None)
    return Freshness(len(users), int(newest.isna().sum()), float(ages.quantile(0.5)), float(ages.quantile(0.95)),
                     float(ages.max()), ages.round(4).tolist())


def _online_timestamps(settings: Settings, users: list[str]) -> list[list]:
    from shoprec.features.store import feature_store  # heavy (Feast)

    response = feature_store(settings).get_online_features(
        features=["user_recent_items:timestamps"], entity_rows=[{"user_id": u} for u in users])
    return [t or [] for t in response.to_dict()["timestamps"]]


def online_ctr(settings: Settings, start: pd.Timestamp, end: pd.Timestamp) -> list[VersionDay]:
    """CTR per day and model version of the impressions shown in [start, end) (a shadow arm's
    answers were scored, never shown: they have no CTR)."""
    from shoprec import impressions  # the online loop's impression log and attribution

    attributed = impressions.attribute(settings)
    served = pd.to_datetime(attributed["served_at"], utc=True)
    shown = ~attributed["shadow"].astype(bool) if "shadow" in attributed.columns else True
    table = health.ctr_by_version_day(attributed[(served >= start) & (served < end) & shown])
    return [VersionDay(str(r.day), str(r.model_version), int(r.impressions), int(r.clicks), float(r.ctr))
            for r in table.itertuples(index=False)]


def report_dir(settings: Settings, day: date) -> Path:
    """Where the report of ``day`` lands: ``<home>/reports/monitoring/<YYYY-MM-DD>/``."""
    return settings.reports_dir / "monitoring" / day.isoformat()


def utc(moment: datetime | str) -> pd.Timestamp:
    """``moment`` as a UTC timestamp (a naive one is taken as UTC)."""
    stamp = pd.Timestamp(moment)
    return stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")
