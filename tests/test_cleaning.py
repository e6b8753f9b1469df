"""Each cleaning rule, counted, and never hiding rows the gate must see."""

from __future__ import annotations

import pandas as pd

from shoprec.cleaning import CleaningReport, clean_events, drop_duplicates, k_core, normalise_ids, normalise_timestamps, order, remove_bots
from shoprec.config import CleaningSettings
from shoprec.schema import conform_events


def events(rows: list[tuple]) -> pd.DataFrame:
    """rows of (user, item, timestamp[, event_type])"""
    frame = pd.DataFrame(
        [(u, i, t, e[0] if e else "view") for u, i, t, *e in rows], columns=["user_id", "item_id", "timestamp", "event_type"]
    )
    return conform_events(frame)


def test_ids_in_two_unicode_forms_become_one():
    frame = events([("caf\u00e9", "a", "2024-01-01"), ("cafe\u0301", "a", "2024-01-02"), ("bob", "a", "2024-01-03")])
    report = CleaningReport()
    out = normalise_ids(frame, report)
    assert out["user_id"].nunique() == 2
    assert report.ids_normalised == 1


def test_timestamps_floored_to_milliseconds():
    frame = events([("u", "a", "2024-01-01T00:00:00.123456789Z"), ("u", "b", "2024-01-01T00:00:01.5Z")])
    report = CleaningReport()
    out = normalise_timestamps(frame, report)
    assert out["timestamp"][0] == pd.Timestamp("2024-01-01T00:00:00.123Z")
    assert report.timestamps_normalised == 1


def test_exact_duplicates_removed_but_one_copy_of_a_broken_row_stays():
    frame = events([("u", "a", "2024-01-01")] * 3 + [(None, "a", "2024-01-01")] * 2 + [("u", "a", "2024-01-02")])
    report = CleaningReport()
    out = drop_duplicates(frame, report)
    assert len(out) == 3 and report.duplicates_removed == 3
    assert out["user_id"].isna().sum() == 1  # still there for the gate to refuse


def test_order_sorts_by_time_and_counts_rows_out_of_order():
    frame = events([("u", "a", "2024-01-03"), ("u", "b", "2024-01-01"), ("v", "c", "2024-01-02")])
    report = CleaningReport()
    out = order(frame, report)
    assert out["item_id"].tolist() == ["b", "c", "a"]
    assert report.rows_out_of_order == 1


def test_bots_with_absurd_rates_are_removed_busy_humans_are_not():
    start = pd.Timestamp("2024-01-01", tz="UTC")
    bot = [("bot", f"i{k}", start + pd.Timedelta(milliseconds=100 * k)) for k in range(120)]  # 600/minute
    human = [("alice", f"i{k}", start + pd.Timedelta(minutes=5 * k)) for k in range(120)]  # 0.2/minute
    burst = [("carol", f"i{k}", start + pd.Timedelta(seconds=k)) for k in range(10)]  # fast but few
    report = CleaningReport()
    settings = CleaningSettings(bot_max_events_per_minute=60, bot_min_events=50)
    out = remove_bots(events(bot + human + burst), settings, report)
    assert set(out["user_id"]) == {"alice", "carol"}
    assert report.bot_users_removed == 1 and report.bot_events_removed == 120


def test_k_core_repeats_until_stable_and_keeps_rows_without_keys():
    rows = [("u1", "a", "2024-01-01"), ("u1", "b", "2024-01-02"), ("u2", "a", "2024-01-03"), ("u2", "b", "2024-01-04"),
            ("u3", "a", "2024-01-05"), ("u3", "c", "2024-01-06"),  # c has 1 event -> goes; then u3 has 1 -> goes
            (None, "a", "2024-01-07")]
    report = CleaningReport()
    out = k_core(events(rows), 2, report)
    assert set(out["user_id"].dropna()) == {"u1", "u2"} and set(out["item_id"]) == {"a", "b"}
    assert out["user_id"].isna().sum() == 1
    assert (report.k_core_users_removed, report.k_core_items_removed, report.k_core_events_removed) == (1, 1, 2)


def test_k_core_off_by_default_changes_nothing():
    frame = events([("u1", "a", "2024-01-01")])
    assert k_core(frame, 0, CleaningReport()).equals(frame)


def test_clean_events_counts_add_up():
    rows = [("u", "a", "2024-01-02"), ("u", "a", "2024-01-02"), ("v", "b", "2024-01-01")]
    out, report = clean_events(events(rows), CleaningSettings(k_core=0))
    assert report.rows_in == 3 and report.rows_out == len(out) == 2
    assert report.rows_in - report.duplicates_removed - report.bot_events_removed - report.k_core_events_removed == report.rows_out
    assert out["timestamp"].is_monotonic_increasing
