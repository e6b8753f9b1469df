"""Health of what serves: how old the online rows are, how often shown recommendations get clicked.

Pure functions of frames; ``report`` reads the online store and the impression log for them.
"""

from __future__ import annotations

import pandas as pd


def newest_per_user(users: list[str], timestamps: list[list]) -> pd.Series:
    """The newest timestamp (UTC) of each user's online sequence, NaT for a user without a row:
    the lists as the online store returns them, exploded and reduced in one go."""
    frame = pd.DataFrame({"user_id": users, "timestamp": timestamps}).explode("timestamp")
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    return stamps.groupby(frame["user_id"], sort=False).max().reindex(users)


def row_ages_hours(newest: pd.Series, now: pd.Timestamp) -> pd.Series:
    """Hours from each user's newest online event to ``now`` (0 for an event after ``now``,
    as a backfilled report sees); users without a row are left out."""
    known = newest.dropna()
    return ((now - known) / pd.Timedelta(hours=1)).clip(lower=0.0).astype(float)


def ctr_by_version_day(attributed: pd.DataFrame) -> pd.DataFrame:
    """Impressions, clicks and CTR per (day, model_version), from ``impressions.attribute``'s
    frame (one row per impression, ``clicked`` a bool); sorted by day, then version."""
    columns = ["day", "model_version", "impressions", "clicks", "ctr"]
    if not len(attributed):
        return pd.DataFrame(columns=columns)
    day = pd.to_datetime(attributed["served_at"], utc=True).dt.strftime("%Y-%m-%d")
    grouped = attributed.assign(day=day, clicked=attributed["clicked"].astype(bool)).groupby(
        ["day", "model_version"], sort=True).agg(impressions=("clicked", "size"), clicks=("clicked", "sum"))
    grouped = grouped.reset_index()
    grouped["ctr"] = grouped["clicks"] / grouped["impressions"]
    return grouped[columns]
