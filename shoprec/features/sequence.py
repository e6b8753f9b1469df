"""THE definition of "the user's last N items": one function for every path.

The batch feature table, historical (point-in-time) retrieval, the real-time push
path and the model's training data all call ``recent_items``; nothing else may
decide what a user's sequence is, so training and serving cannot disagree.
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


def append_events(current: pd.DataFrame, new_events: pd.DataFrame, max_len: int | None) -> pd.DataFrame:
    """The push path: a user's stored sequence plus new events, through ``recent_items``.

    ``current`` is the output of ``recent_items`` (e.g. read back from the online
    store) for the users of ``new_events``; it is exploded back to events so that
    exactly the same rule decides the result.
    """
    if len(current):
        old = current.explode(list(SEQUENCE_COLUMNS), ignore_index=True).rename(
            columns={"item_ids": "item_id", "event_types": "event_type", "timestamps": "timestamp"}
        )
        old = old.dropna(subset=["item_id"])[["user_id", "item_id", "event_type", "timestamp"]]
        old["timestamp"] = pd.to_datetime(old["timestamp"], utc=True)
        combined = pd.concat([old, new_events[["user_id", "item_id", "event_type", "timestamp"]]], ignore_index=True)
    else:
        combined = new_events
    return recent_items(combined, max_len)


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
