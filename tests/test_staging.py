"""The out-of-core cleaning (DuckDB over staged chunks) against its definition, row for row.

``shoprec.cleaning.clean_events`` on the whole frame is what cleaning means; a batch staged in
any number of chunks must come out of ``shoprec.staging.Staging`` with the same rows in the
same order and the same counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shoprec.cleaning import DUPLICATE_KEY, clean_events
from shoprec.config import CleaningSettings, IngestSettings
from shoprec.schema import conform_events
from shoprec.staging import Staging, StagingMemoryError


def messy_events(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Duplicates, sub-millisecond times, two Unicode forms of an id, a bot, thin users and
    items (k-core), rows without a user or an item, rows out of time order, timestamp ties."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-03-01", tz="UTC")
    users = rng.choice([f"u{k}" for k in range(60)] + ["caf\u00e9", "cafe\u0301"], size=n)
    items = rng.choice([f"i{k}" for k in range(150)], size=n)
    seconds = rng.integers(0, 5 * 86_400, size=n).astype("float64") + rng.choice([0.0, 0.0004, 0.1234567], size=n)
    frame = pd.DataFrame({
        "user_id": users, "item_id": items,
        "timestamp": start + pd.to_timedelta(seconds, unit="s"),
        "event_type": rng.choice(["view", "add_to_cart", "purchase"], size=n),
        "session_id": rng.choice(["s1", "s2", None], size=n),
    })
    frame.loc[rng.choice(n, 40, replace=False), "user_id"] = None
    frame.loc[rng.choice(n, 40, replace=False), "item_id"] = None
    frame.loc[rng.choice(n, 200, replace=False), "timestamp"] = start  # ties at one instant
    bot = pd.DataFrame({"user_id": "bot", "item_id": [f"i{k % 150}" for k in range(120)],
                        "timestamp": start + pd.to_timedelta(np.arange(120) * 0.1, unit="s"),
                        "event_type": "view", "session_id": "b"})
    frame = pd.concat([frame, frame.sample(300, random_state=seed), bot], ignore_index=True)  # duplicates
    return conform_events(frame)


def staged_clean(events: pd.DataFrame, settings: CleaningSettings, chunk_rows: int, tmp_path) -> tuple[pd.DataFrame, dict]:
    with Staging(tmp_path / f"staging-{chunk_rows}", IngestSettings(chunk_rows=chunk_rows)) as staging:
        for start in range(0, len(events), chunk_rows):
            staging.append(events.iloc[start:start + chunk_rows])
        report = staging.clean(settings)
        batches = list(staging.cleaned_batches())
    table = pa.Table.from_batches(batches) if batches else None
    frame = conform_events(table.to_pandas()) if table is not None else events.iloc[:0]
    return frame, report.to_dict()


@pytest.mark.parametrize("k_core", [0, 20])
@pytest.mark.parametrize("chunk_rows", [257, 100_000])
def test_staged_cleaning_equals_the_definition_row_for_row(k_core, chunk_rows, tmp_path):
    events = messy_events()
    settings = CleaningSettings(k_core=k_core, bot_min_events=50, bot_max_events_per_minute=60)
    expected, expected_report = clean_events(events, settings)
    got, report = staged_clean(events, settings, chunk_rows, tmp_path)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    assert report == expected_report.to_dict()
    assert report["bot_users_removed"] == 1 and report["duplicates_removed"] > 0 and report["ids_normalised"] > 0
    assert k_core == 0 or report["k_core_events_removed"] > 0


def test_duplicate_rows_counts_every_copy(tmp_path):
    events = conform_events(pd.DataFrame({
        "user_id": ["a", "a", "a", "b", None, None], "item_id": ["x", "x", "x", "y", "z", "z"],
        "timestamp": ["2024-01-01"] * 6, "event_type": ["view"] * 6}))
    with Staging(tmp_path / "s", IngestSettings(chunk_rows=2)) as staging:
        for start in range(0, 6, 2):
            staging.append(events.iloc[start:start + 2])
        assert staging.duplicate_rows() == 5  # three copies of (a, x) and two of (None, z)


def test_an_empty_batch_cleans_to_nothing(tmp_path):
    with Staging(tmp_path / "s", IngestSettings()) as staging:
        report = staging.clean(CleaningSettings(k_core=5))
        assert report.rows_out == 0 and list(staging.cleaned_batches()) == []
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("k_core", [0, 20])
@pytest.mark.parametrize("bucket_rows", [1, 700])  # 1: capped at MAX_KEY_BUCKETS
def test_cleaning_in_key_buckets_equals_the_definition_row_for_row(bucket_rows, k_core, tmp_path):
    """Above ``staging_bucket_rows`` the duplicates are found bucket by bucket (a hash of the
    key): every copy of a key lands in one bucket, so the result is the definition's."""
    events = messy_events()
    settings = CleaningSettings(k_core=k_core, bot_min_events=50, bot_max_events_per_minute=60)
    expected, expected_report = clean_events(events, settings)
    ingest_settings = IngestSettings(chunk_rows=500, staging_bucket_rows=bucket_rows)
    with Staging(tmp_path / "s", ingest_settings) as staging:
        for start in range(0, len(events), 500):
            staging.append(events.iloc[start:start + 500])
        assert len(staging.key_buckets()) > 1
        assert staging.duplicate_rows() == int(events.duplicated(subset=DUPLICATE_KEY, keep=False).sum())
        report = staging.clean(settings)
        assert not (tmp_path / "s" / "buckets").exists()  # the second copy is gone once the repeats are known
        got = conform_events(pa.Table.from_batches(list(staging.cleaned_batches())).to_pandas())
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    assert report.to_dict() == expected_report.to_dict()


def test_running_out_of_staging_memory_says_which_setting_to_change(tmp_path):
    events = messy_events(20_000)
    with Staging(tmp_path / "s", IngestSettings(staging_memory_limit="1MB", staging_threads=1)) as staging:
        staging.append(events)
        with pytest.raises(StagingMemoryError, match="SHOPREC_INGEST__STAGING_MEMORY_LIMIT"):
            staging.duplicate_rows()
