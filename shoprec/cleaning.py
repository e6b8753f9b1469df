"""Cleaning rules applied to a conformed batch before it reaches the lake.

Cleaning fixes what is safe to fix and counts every change in a ``CleaningReport``.
It never decides whether a batch is acceptable: nulls in keys, unknown event types,
future timestamps and negative prices are the validation gate's to refuse, and the gate
judges the batch as delivered, so no rule here can hide a problem from it. The filters
(bots, k-core) leave rows with a missing user or item alone for the same reason.
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass

import pandas as pd

from shoprec.config import CleaningSettings

ID_COLUMNS = ("user_id", "item_id", "session_id")
DUPLICATE_KEY = ["user_id", "item_id", "event_type", "timestamp", "session_id"]
TIMESTAMP_RESOLUTION = "ms"


@dataclass
class CleaningReport:
    rows_in: int = 0
    ids_normalised: int = 0  # ids rewritten to Unicode NFC
    timestamps_normalised: int = 0  # timestamps floored to whole milliseconds
    duplicates_removed: int = 0
    rows_out_of_order: int = 0  # rows that came earlier in time than the row before them
    bot_users_removed: int = 0
    bot_events_removed: int = 0
    k_core_users_removed: int = 0
    k_core_items_removed: int = 0
    k_core_events_removed: int = 0
    rows_out: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_ids(events: pd.DataFrame, report: CleaningReport) -> pd.DataFrame:
    """The same id typed in two Unicode forms (e.g. composed and decomposed accents) is one id."""
    events = events.copy()
    for column in ID_COLUMNS:
        # ids repeat a lot: look at each distinct one once
        distinct = events[column].dropna().unique()
        changed = {v: unicodedata.normalize("NFC", v) for v in distinct if not v.isascii()}
        changed = {v: nfc for v, nfc in changed.items() if nfc != v}
        if changed:
            hit = events[column].isin(list(changed))
            report.ids_normalised += int(hit.sum())
            events.loc[hit, column] = events.loc[hit, column].map(changed)
    return events


def normalise_timestamps(events: pd.DataFrame, report: CleaningReport) -> pd.DataFrame:
    """Floor to milliseconds, so the same event from two sources is recognised as a duplicate."""
    floored = events["timestamp"].dt.floor(TIMESTAMP_RESOLUTION)
    report.timestamps_normalised += int((floored != events["timestamp"]).sum())
    return events.assign(timestamp=floored)


def drop_duplicates(events: pd.DataFrame, report: CleaningReport) -> pd.DataFrame:
    """Keep one copy of rows equal on (user, item, event type, timestamp, session)."""
    deduped = events.drop_duplicates(subset=DUPLICATE_KEY, keep="first")
    report.duplicates_removed = len(events) - len(deduped)
    return deduped


def order(events: pd.DataFrame, report: CleaningReport) -> pd.DataFrame:
    """Time order (ties by user), the order every sequence builder relies on."""
    report.rows_out_of_order = int((events["timestamp"].diff() < pd.Timedelta(0)).sum())
    return events.sort_values(["timestamp", "user_id"], kind="stable", na_position="last").reset_index(drop=True)


def remove_bots(events: pd.DataFrame, settings: CleaningSettings, report: CleaningReport) -> pd.DataFrame:
    """Drop users with many events at an absurd rate (events per minute of their active span)."""
    per_user = events.dropna(subset=["user_id", "timestamp"]).groupby("user_id")["timestamp"].agg(["count", "min", "max"])
    minutes = ((per_user["max"] - per_user["min"]).dt.total_seconds() / 60).clip(lower=1.0)
    rate = per_user["count"] / minutes
    bots = per_user.index[(per_user["count"] >= settings.bot_min_events) & (rate > settings.bot_max_events_per_minute)]
    is_bot = events["user_id"].isin(bots)
    report.bot_users_removed = len(bots)
    report.bot_events_removed = int(is_bot.sum())
    return events[~is_bot]


def k_core(events: pd.DataFrame, k: int, report: CleaningReport) -> pd.DataFrame:
    """Repeatedly drop users and items with fewer than k events until none is left (k=0: off)."""
    if k <= 0:
        return events
    keyed = events["user_id"].notna() & events["item_id"].notna()
    kept, loose = events[keyed], events[~keyed]
    users_in, items_in = kept["user_id"].nunique(), kept["item_id"].nunique()
    while len(kept):
        user_counts = kept["user_id"].map(kept["user_id"].value_counts())
        item_counts = kept["item_id"].map(kept["item_id"].value_counts())
        core = (user_counts >= k) & (item_counts >= k)
        if core.all():
            break
        kept = kept[core]
    report.k_core_users_removed = users_in - kept["user_id"].nunique()
    report.k_core_items_removed = items_in - kept["item_id"].nunique()
    report.k_core_events_removed = int(keyed.sum()) - len(kept)
    return pd.concat([kept, loose]) if len(loose) else kept


def clean_events(events: pd.DataFrame, settings: CleaningSettings) -> tuple[pd.DataFrame, CleaningReport]:
    """Apply every rule in order; returns the cleaned events and the counts."""
    report = CleaningReport(rows_in=len(events))
    events = normalise_ids(events, report)
    events = normalise_timestamps(events, report)
    events = drop_duplicates(events, report)
    events = remove_bots(events, settings, report)
    events = k_core(events, settings.k_core, report)
    events = order(events, report)
    report.rows_out = len(events)
    return events, report
