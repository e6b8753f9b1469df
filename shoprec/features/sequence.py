"""THE definition of "the user's last N items": one function for every path.

The batch feature table, historical (point-in-time) retrieval, the real-time push
path and the model's training data all follow ``recent_items``; nothing else may
decide what a user's sequence is, so training and serving cannot disagree. The two
faster forms of the rule (``recent_items_over_time`` for the point-in-time table,
``extend_sequence``/``merge_sequence`` for one user's push) are tested against it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SEQUENCE_COLUMNS = ("item_ids", "event_types", "timestamps")


def recent_items(events: pd.DataFrame, max_len: int | None, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per user, their last ``max_len`` events before or at ``as_of``, oldest first.

    ``events`` has at least user_id, item_id, event_type, timestamp (UTC). Ties in
    timestamp keep the input order (stable sort), so a source's order is preserved.
    Returns one row per user: user_id, item_ids, event_types, timestamps (lists),
    event_timestamp (time of the newest event: the row's Feast timestamp).
    ``max_len=None`` keeps the whole history.
    """
    if as_of is not None:
        events = events[events["timestamp"] <= as_of]
    ordered = events.sort_values(["user_id", "timestamp"], kind="stable")
    if max_len is not None:
        ordered = ordered.groupby("user_id", sort=False, observed=True).tail(max_len)
    grouped = ordered.groupby("user_id", sort=True, observed=True)
    out = pd.DataFrame(
        {
            "item_ids": grouped["item_id"].agg(list),
            "event_types": grouped["event_type"].agg(list),
            "timestamps": grouped["timestamp"].agg(list),
            "event_timestamp": grouped["timestamp"].max(),
        }
    ).reset_index()
    return out


def merge_sequence(stored: list[tuple], new: list[tuple], max_len: int | None) -> list[tuple]:
    """The push path's form of ``recent_items``: (item_id, event_type, time) triples, stored
    (oldest first) then new, in time order (stable: ties keep stored-then-new order), the last
    ``max_len``. ``time`` is anything that orders as the timestamps do: ``pd.Timestamp``, or
    integer nanoseconds (``OnlineFeatures``: building a Timestamp per element cost a third of a
    400-user push group)."""
    merged = sorted([e for e in stored if e[0] is not None] + list(new), key=lambda e: e[2])
    return merged[-max_len:] if max_len is not None else merged


def extend_sequence(stored: dict, new_events: pd.DataFrame, max_len: int | None) -> dict:
    """The push path for one user: ``recent_items`` of (stored sequence + new events).

    ``stored`` has the lists item_ids, event_types, timestamps (oldest first, as
    ``recent_items`` made them and the online store returns them). The same rule in
    plain Python (``merge_sequence``) - a pandas group-by per pushed event cost 7 ms - and a
    test checks it against ``recent_items`` on shuffled events with ties.
    """
    old = [(i, t, pd.Timestamp(ts)) for i, t, ts in zip(stored["item_ids"], stored["event_types"], stored["timestamps"])]
    new = [(i, t, pd.Timestamp(ts)) for i, t, ts in zip(new_events["item_id"], new_events["event_type"], new_events["timestamp"])]
    merged = merge_sequence(old, new, max_len)
    return {
        "item_ids": [str(e[0]) for e in merged],
        "event_types": [str(e[1]) for e in merged],
        "timestamps": [e[2].tz_convert("UTC") for e in merged],
    }


def recent_items_over_time(events: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """``recent_items(events, max_len, as_of=t)`` for every user at each of their distinct event times.

    One row per (user, distinct event time t): the offline, point-in-time table. It is
    the same rule as ``recent_items`` (same stable order, same ties: every event at t is
    in), computed in one vectorised pass instead of one call per time; a test checks
    they agree row for row.
    """
    cols = ["user_id", "item_id", "event_type", "timestamp"]
    ordered = events[cols].sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    position = ordered.groupby("user_id", sort=False, observed=True).cumcount().to_numpy()
    ends = np.flatnonzero(~ordered.duplicated(["user_id", "timestamp"], keep="last").to_numpy())
    starts = ends - np.minimum(position[ends], max_len - 1)
    windows = list(zip(starts.tolist(), (ends + 1).tolist()))
    items = ordered["item_id"].astype(str).to_numpy(object)
    kinds = ordered["event_type"].astype(str).to_numpy(object)
    times = pd.to_datetime(ordered["timestamp"], utc=True).to_numpy(object)
    return pd.DataFrame(
        {
            "user_id": ordered["user_id"].to_numpy(object)[ends],
            "item_ids": [items[s:e].tolist() for s, e in windows],
            "event_types": [kinds[s:e].tolist() for s, e in windows],
            "timestamps": [times[s:e].tolist() for s, e in windows],
            "event_timestamp": pd.to_datetime(ordered["timestamp"].to_numpy()[ends], utc=True),
        }
    )
