"""Impressions (what /recommend showed) and their attribution to the events that followed.

Two logs beside the event log, with its machinery (``shoprec.event_log``: WAL segments with
checksummed records, one fsync per group, crash-safe compaction into day files):

- ``<feast>/offline/impressions``: one row per answer: ``recommendation_id``, ``served_at``,
  ``user_id`` or ``session_id``, ``item_ids`` (in the order shown: the position is the index),
  ``model_version``, ``arm``, ``experiment``, ``shadow`` (a challenger's answer that was scored
  but not shown) and ``fallback``;
- ``<feast>/offline/impression_links``: ``(recommendation_id, user_id, event_id)`` for each event
  that named the recommendation it came from (``/events`` with ``recommendation_id``); the
  event itself stays in the event log only. An erasure removes the user's links too.

Both are written by a ``BackgroundLog``: the request hands over a tuple and goes on; a thread
appends what queued meanwhile as one record. What the queue holds when a process dies is lost
(impressions are measurements, not acknowledged writes); a full queue drops and counts.

**Attribution** (``attribute``): an event names its recommendation (explicit) or not
(implicit). Explicit wins: the event goes to that impression if the impression showed its item
and the event came within ``experiments.attribution_window_seconds`` of it; an id no impression
has, an item it did not show, or an expired one leaves the event to the implicit rule: the
latest impression before the event, within the window, that showed the item to the same user
(or, for an anonymous answer, the same session). Per impression: clicked (a view of a shown
item), added, purchased, revenue (price x quantity of its purchases). Shadow impressions are
matched the same way on their own (what the user did with the items the challenger would have
shown), never stealing an event from a shown impression. All of it is joins and group-bys.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from shoprec import event_log, ledger
from shoprec.config import Settings
from shoprec.event_log import EventLog, LogFormat
from shoprec.schema import conform_events, derived_event_ids, to_utc

log = logging.getLogger(__name__)

IMPRESSION_SCHEMA = pa.schema([
    ("recommendation_id", pa.string()),
    ("served_at", pa.timestamp("ns", tz="UTC")),
    ("user_id", pa.string()),
    ("session_id", pa.string()),
    ("item_ids", pa.list_(pa.string())),
    ("model_version", pa.string()),
    ("arm", pa.string()),
    ("experiment", pa.string()),
    ("shadow", pa.bool_()),
    ("fallback", pa.bool_()),
])
LINK_SCHEMA = pa.schema([
    ("recommendation_id", pa.string()),
    ("user_id", pa.string()),  # event ids are unique per user only; and an erasure finds the user's links
    ("event_id", pa.string()),
    ("linked_at", pa.timestamp("ns", tz="UTC")),
])
STRING_COLUMNS = ("recommendation_id", "user_id", "session_id", "model_version", "arm", "experiment", "event_id")
OUTCOMES = {"view": "clicked", "add_to_cart": "added", "purchase": "purchased"}  # event type -> impression flag
ATTRIBUTION_COLUMNS = ["recommendation_id", "served_at", "model_version", "arm", "experiment", "shadow",
                       "clicked", "added", "purchased", "revenue"]


def _conform(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    out = {}
    for name in schema.names:
        column = frame[name] if name in frame.columns else pd.Series(None, index=frame.index, dtype=object)
        if name in STRING_COLUMNS:
            out[name] = column.astype("string")
        elif pa.types.is_timestamp(schema.field(name).type):
            out[name] = to_utc(column) if len(column) else column.astype("datetime64[ns, UTC]")
        elif pa.types.is_boolean(schema.field(name).type):
            out[name] = column.fillna(False).astype(bool)
        else:
            out[name] = column
    return pd.DataFrame(out, index=frame.index).reset_index(drop=True)


IMPRESSIONS = LogFormat(IMPRESSION_SCHEMA, lambda f: _conform(f, IMPRESSION_SCHEMA), "served_at",
                        ["served_at", "recommendation_id"], ["recommendation_id"],
                        lambda f: f.drop_duplicates(["recommendation_id"]), days_folder="impressions")
LINKS = LogFormat(LINK_SCHEMA, lambda f: _conform(f, LINK_SCHEMA), "linked_at", ["linked_at", "event_id"],
                  ["recommendation_id", "user_id", "event_id"],
                  lambda f: f.drop_duplicates(["recommendation_id", "user_id", "event_id"]),
                  days_folder="links")


def impression_log_dir(settings: Settings) -> Path:
    return settings.feast_dir / "offline" / "impressions"


def link_log_dir(settings: Settings) -> Path:
    return settings.feast_dir / "offline" / "impression_links"


def read_impressions(settings: Settings) -> pd.DataFrame:
    """Every impression once, oldest first (``item_ids``: an array of item ids per row, in shown order)."""
    return event_log.read_events(impression_log_dir(settings), IMPRESSIONS)


def read_links(settings: Settings) -> pd.DataFrame:
    return event_log.read_events(link_log_dir(settings), LINKS)


def compact(settings: Settings) -> dict[str, dict]:
    """Both logs folded into day files (``event_log.compact``): their file counts stay bounded."""
    return {"impressions": event_log.compact(impression_log_dir(settings), fmt=IMPRESSIONS).to_dict(),
            "links": event_log.compact(link_log_dir(settings), fmt=LINKS).to_dict()}


# --- writing, off the request path ---------------------------------------------------------------


class BackgroundLog:
    """A queue and a thread that appends what queued as one record (one write and fsync)."""

    def __init__(self, log_dir: Path, fmt: LogFormat, to_table: Callable[[list], pa.Table],
                 max_queue: int = 100_000, max_group: int = 5_000, max_delay_s: float = 0.2,
                 on_written: Callable[[list], None] | None = None,
                 refine: Callable[[pa.Table], pa.Table] | None = None):
        self._log = EventLog(log_dir, fmt=fmt)
        self._to_table = to_table
        self._refine = refine  # runs under the log's lock before each write (``EventLog.append``)
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._max_group = max_group
        # a group waits this long for company: at low traffic every answer was its own record, and the
        # conversion and encoding (with the GIL) ran once per request beside the request path
        self._max_delay_s = max_delay_s
        self._on_written = on_written
        self.dropped = 0  # rows refused because the queue was full, or lost to a failed write
        threading.Thread(target=self._run, name=f"log-{Path(log_dir).name}", daemon=True).start()

    def offer(self, row: object) -> bool:
        """Queue one row; False (and counted) when the queue is full: the caller never waits."""
        try:
            self._queue.put_nowait(row)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def flush(self) -> None:
        """Wait until every row queued so far is written (tests, shutdown)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            rows = [self._queue.get()]
            deadline = time.monotonic() + self._max_delay_s
            while len(rows) < self._max_group:
                try:
                    rows.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                self._log.append(self._to_table(rows), refine=self._refine)
                if self._on_written is not None:
                    self._on_written(rows)
            except Exception as exc:  # noqa: BLE001 - a measurement lost, never a request failed
                self.dropped += len(rows)
                log.error("%s: %d rows lost: %s", self._log.log_dir, len(rows), exc)
            finally:
                for _ in rows:
                    self._queue.task_done()


def without_erased(settings: Settings) -> Callable[[pa.Table], pa.Table]:
    """A ``BackgroundLog`` refine that drops the rows of users in the erasure ledger: an erased user
    who still asks for recommendations is answered, never logged."""
    erased = ledger.ErasedKeys(settings)

    def refine(table: pa.Table) -> pa.Table:
        keys = erased.current()
        if not keys:
            return table
        mask = ledger.erased_mask(table.column("user_id").to_pandas(), keys).to_numpy(dtype=bool)
        return table.filter(pa.array(~mask)) if mask.any() else table

    return refine


@dataclass(frozen=True)
class Impression:
    recommendation_id: str
    served_at: pd.Timestamp
    user_id: str | None
    session_id: str | None
    item_ids: Sequence[str]
    model_version: str
    arm: str
    experiment: str | None
    shadow: bool
    fallback: bool


def impressions_table(rows: list[Impression]) -> pa.Table:
    columns = {name: [getattr(r, name) for r in rows] for name in IMPRESSION_SCHEMA.names}
    columns["item_ids"] = [list(ids) for ids in columns["item_ids"]]
    return pa.Table.from_pydict(columns, schema=IMPRESSION_SCHEMA)


def links_table(rows: list[tuple[str, dict, pd.Timestamp]]) -> pa.Table:
    """(recommendation_id, validated event record, received at) -> links, the event id derived as
    the push derives it (``schema.derived_event_ids``) where the client gave none."""
    events = conform_events(pd.DataFrame.from_records([r for _, r, _ in rows],
                                                      columns=["user_id", "item_id", "event_type", "timestamp",
                                                               "session_id", "event_id"]))
    ids = _event_ids(events)
    return pa.Table.from_pydict({"recommendation_id": [rid for rid, _, _ in rows], "user_id": events["user_id"].tolist(),
                                 "event_id": ids.tolist(), "linked_at": [at for _, _, at in rows]}, schema=LINK_SCHEMA)


def _event_ids(events: pd.DataFrame) -> pd.Series:
    """The events' ids, derived as the push derives them only where missing (the event log's rows
    carry theirs: hashing a whole log row by row would be the slow part of attribution)."""
    ids = events["event_id"].copy()
    missing = ids.isna()
    if missing.any():
        ids[missing] = derived_event_ids(events[missing])
    return ids


# --- attribution ---------------------------------------------------------------------------------


def attribute(settings: Settings, window: float | None = None) -> pd.DataFrame:
    """One row per impression (``ATTRIBUTION_COLUMNS``), from the impression, link and event logs;
    ``window``: seconds (default ``experiments.attribution_window_seconds``)."""
    seconds = settings.experiments.attribution_window_seconds if window is None else window
    events = event_log.read_events(settings.feast_dir / "offline" / "event_log")
    return attribute_frames(read_impressions(settings), events, read_links(settings), pd.Timedelta(seconds=seconds))


def attribute_frames(impressions: pd.DataFrame, events: pd.DataFrame, links: pd.DataFrame,
                     window: pd.Timedelta) -> pd.DataFrame:
    """``attribute`` on frames: impressions (``read_impressions``), canonical events, links."""
    shown = _shown_items(impressions)
    events = events.assign(event_id=_event_ids(events), row=np.arange(len(events)))
    explicit = _explicit(shown, events, links, window)
    rest = events[~events["row"].isin(explicit["row"])]
    parts = [explicit, _implicit(shown[~shown["shadow"]], rest, window), _implicit(shown[shown["shadow"]], events, window)]
    matched = pd.concat([p for p in parts if len(p)] or [explicit], ignore_index=True)
    return _outcomes(impressions, matched)


def _shown_items(impressions: pd.DataFrame) -> pd.DataFrame:
    """One row per (impression, shown item)."""
    frame = impressions[["recommendation_id", "served_at", "user_id", "session_id", "item_ids", "shadow"]]
    exploded = frame.explode("item_ids").rename(columns={"item_ids": "item_id"})
    exploded = exploded[exploded["item_id"].notna()]
    return exploded.astype({"item_id": "string"}).reset_index(drop=True)


def _explicit(shown, events, links, window) -> pd.DataFrame:
    """Events naming a recommendation that showed their item to their user (or, shown to nobody
    signed in, to their session), within the window after it."""
    named = links[["recommendation_id", "user_id", "event_id"]].merge(events, on=["user_id", "event_id"])
    hits = named.merge(shown[~shown["shadow"]][["recommendation_id", "item_id", "served_at", "user_id", "session_id"]],
                       on=["recommendation_id", "item_id"], suffixes=("", "_shown"))
    same_viewer = (hits["user_id"] == hits["user_id_shown"]).fillna(False) | (
        hits["user_id_shown"].isna() & (hits["session_id"] == hits["session_id_shown"]).fillna(False))
    in_window = (hits["timestamp"] >= hits["served_at"]) & (hits["timestamp"] <= hits["served_at"] + window)
    hits = hits[same_viewer.astype(bool) & in_window]
    return hits.drop_duplicates("row")[["recommendation_id", "row", "event_type", "price", "quantity"]]


def _implicit(shown, events, window) -> pd.DataFrame:
    """Each event to the latest impression before it (within the window) that showed its item to
    its user, or else to its session."""
    matches = []
    for kind in ("user_id", "session_id"):
        left = events[events[kind].notna()].sort_values("timestamp")
        right = shown[shown[kind].notna()].sort_values("served_at")
        if not len(left) or not len(right):
            continue
        merged = pd.merge_asof(left, right[["served_at", kind, "item_id", "recommendation_id"]],
                               left_on="timestamp", right_on="served_at", by=[kind, "item_id"],
                               tolerance=window, direction="backward")
        matches.append(merged[merged["recommendation_id"].notna()])
    if not matches:
        return pd.DataFrame(columns=["recommendation_id", "row", "event_type", "price", "quantity"])
    first = pd.concat(matches, ignore_index=True).drop_duplicates("row")  # the user's match before the session's
    return first[["recommendation_id", "row", "event_type", "price", "quantity"]]


def _outcomes(impressions: pd.DataFrame, matched: pd.DataFrame) -> pd.DataFrame:
    """The impressions with their flags and revenue from the matched events."""
    matched = matched.astype({"recommendation_id": "string"})
    flags = pd.crosstab(matched["recommendation_id"], matched["event_type"]).reindex(columns=list(OUTCOMES), fill_value=0)
    flags = (flags > 0).rename(columns=OUTCOMES)
    purchases = matched[matched["event_type"] == "purchase"]
    spent = purchases["price"].astype("Float64").fillna(0.0) * purchases["quantity"].astype("Float64").fillna(1)
    revenue = spent.groupby(purchases["recommendation_id"]).sum().astype(float).rename("revenue")
    out = impressions.drop(columns=["item_ids"]).merge(flags, left_on="recommendation_id", right_index=True, how="left")
    out = out.merge(revenue, left_on="recommendation_id", right_index=True, how="left")
    for flag in OUTCOMES.values():
        out[flag] = out[flag].eq(True)  # no matched event: NaN
    out["revenue"] = out["revenue"].fillna(0.0).astype(float)
    return out[ATTRIBUTION_COLUMNS].reset_index(drop=True)


# --- per-arm rates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """A proportion and its Wilson score interval."""

    successes: int
    trials: int
    rate: float | None
    low: float | None
    high: float | None

    def to_json(self) -> dict:
        return asdict(self)


def wilson(successes: int, trials: int, confidence: float = 0.95) -> Rate:
    """The Wilson score interval of ``successes`` in ``trials`` (None: no trials)."""
    if trials == 0:
        return Rate(0, 0, None, None, None)
    z = _z(confidence)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return Rate(successes, trials, p, max(0.0, centre - half), min(1.0, centre + half))


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class ArmStats:
    experiment: str | None
    arm: str
    shadow: bool
    model_versions: list[str]
    impressions: int
    ctr: Rate  # clicked impressions / impressions
    add_to_cart_rate: Rate
    purchase_rate: Rate
    revenue: float

    def rate(self, metric: str) -> Rate:
        """The rate of an attribution flag: clicked, added or purchased."""
        return {"clicked": self.ctr, "added": self.add_to_cart_rate, "purchased": self.purchase_rate}[metric]

    def to_json(self) -> dict:
        return {"experiment": self.experiment, "arm": self.arm, "shadow": self.shadow,
                "model_versions": self.model_versions, "impressions": self.impressions,
                "ctr": self.ctr.to_json(), "add_to_cart_rate": self.add_to_cart_rate.to_json(),
                "purchase_rate": self.purchase_rate.to_json(), "revenue": self.revenue}


def arm_stats(frame: pd.DataFrame, confidence: float = 0.95) -> list[ArmStats]:
    """Per (experiment, arm, shadow) of an ``attribute`` frame: counts, rates with Wilson intervals."""
    keys = ["experiment", "arm", "shadow"]
    grouped = frame.groupby(keys, dropna=False, sort=True)
    sums = grouped.agg(impressions=("recommendation_id", "size"), clicked=("clicked", "sum"),
                       added=("added", "sum"), purchased=("purchased", "sum"), revenue=("revenue", "sum"))
    versions = grouped["model_version"].unique()
    out = []
    for ((experiment, arm, shadow), row), served in zip(sums.iterrows(), versions):  # one row per arm
        n = int(row["impressions"])
        out.append(ArmStats(None if pd.isna(experiment) else str(experiment), str(arm), bool(shadow),
                            sorted(str(v) for v in served), n,
                            wilson(int(row["clicked"]), n, confidence), wilson(int(row["added"]), n, confidence),
                            wilson(int(row["purchased"]), n, confidence), round(float(row["revenue"]), 2)))
    return out
