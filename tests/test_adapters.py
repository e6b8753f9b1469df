"""Each ingestion adapter on small fixtures, and every kind of unreadable input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoprec.adapters import read_batch
from shoprec.adapters.events import InputError
from shoprec.schema import EVENT_COLUMNS

FIXTURES = Path(__file__).parent / "fixtures"


def test_retailrocket_layout_maps_events_and_millisecond_timestamps():
    raw = pd.read_csv(FIXTURES / "retailrocket_events.csv", dtype=str)
    batch = read_batch("retailrocket", FIXTURES / "retailrocket_events.csv")
    events = batch.events
    assert list(events.columns) == list(EVENT_COLUMNS)
    assert len(events) == len(raw) == 40
    assert set(events["event_type"]) <= {"view", "add_to_cart", "purchase"}
    assert (events["event_type"] == "purchase").sum() == (raw["event"] == "transaction").sum()
    assert (events["event_type"] == "add_to_cart").sum() == (raw["event"] == "addtocart").sum()
    assert events["user_id"].tolist() == raw["visitorid"].tolist()  # ids exactly as the source wrote them
    first = pd.Timestamp(int(raw["timestamp"][0]), unit="ms", tz="UTC")
    assert events["timestamp"][0] == first and first.year == 2015
    assert batch.metadata["format"] == "retailrocket"


def test_session_log_layout_is_views_with_sessions_and_leading_zero_ids():
    batch = read_batch("sessions", FIXTURES / "session_log.csv")
    events = batch.events
    assert len(events) == 36
    assert set(events["event_type"]) == {"view"}
    assert events["item_id"].str.match(r"^\d{5}$").all()  # "00007" stays "00007"
    assert events["session_id"].notna().all()
    assert str(events["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_events_folder_reads_events_and_catalog():
    batch = read_batch("events", FIXTURES / "shop")
    assert len(batch.events) == 48 and len(batch.items) == 12
    assert "007" in set(batch.events["user_id"])
    assert batch.items.loc[batch.items["item_id"] == "i000", "attributes"].iloc[0] == ["red", "wool"]
    assert batch.items["available"].tolist().count(False) == 1
    assert batch.events.loc[batch.events["event_type"] == "purchase", "quantity"].eq(1).all()


def test_events_column_mapping_and_epoch_seconds(tmp_path):
    path = tmp_path / "clicks.csv"
    pd.DataFrame({"visitor": ["a", "b"], "product": ["p1", "p2"], "action": ["view", "purchase"],
                  "ts": [1700000000, 1700000060]}).to_csv(path, index=False)
    mapping = {"user_id": "visitor", "item_id": "product", "event_type": "action", "timestamp": "ts"}
    events = read_batch("events", path, mapping=mapping, timestamp_unit="s").events
    assert events["user_id"].tolist() == ["a", "b"]
    assert events["timestamp"][1] == pd.Timestamp(1700000060, unit="s", tz="UTC")


def test_events_parquet_file(tmp_path):
    path = tmp_path / "events.parquet"
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [10, 20], "event_type": ["view", "view"],
                          "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True)})
    pq.write_table(pa.Table.from_pandas(frame), path)
    events = read_batch("events", path).events
    assert events["user_id"].tolist() == ["1", "2"] and events["item_id"].tolist() == ["10", "20"]


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


GOOD = b"user_id,item_id,event_type,timestamp\nu1,i1,view,2024-01-01T00:00:00Z\n"


@pytest.mark.parametrize(
    "name, content, mapping, message",
    [
        ("empty.csv", b"", None, "is empty"),
        ("latin1.csv", GOOD.replace(b"u1", b"caf\xe9"), None, "not UTF-8"),
        ("missing.csv", b"user_id,event_type,timestamp\nu1,view,2024-01-01\n", None, "missing required column(s): item_id"),
        ("extra.csv", b"user_id,item_id,event_type,timestamp,colour\nu1,i1,view,2024-01-01,red\n", None, "unexpected column(s): colour"),
        ("types.csv", GOOD.replace(b"2024-01-01T00:00:00Z", b"yesterday"), None, "column 'timestamp': 1 value(s) are not timestamps"),
        ("price.csv", b"user_id,item_id,event_type,timestamp,price\nu1,i1,view,2024-01-01,cheap\n", None, "'price': 1 value(s) are not numbers"),
        ("mapped.csv", GOOD, {"user_id": "visitor"}, "mapped source column(s) not in the file: visitor"),
        ("events.xlsx", GOOD, None, "unsupported file type"),
    ],
)
def test_malformed_input_raises_a_clear_input_error(tmp_path, name, content, mapping, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(InputError) as info:
        read_batch("events", path, **({"mapping": mapping} if mapping else {}))
    assert message in str(info.value)


def test_truncated_parquet_is_refused(tmp_path):
    good = tmp_path / "good.parquet"
    frame = pd.DataFrame({"user_id": ["u"] * 100, "item_id": ["i"] * 100, "event_type": ["view"] * 100,
                          "timestamp": pd.date_range("2024-01-01", periods=100, tz="UTC")})
    pq.write_table(pa.Table.from_pandas(frame), good)
    data = good.read_bytes()
    truncated = _write(tmp_path / "events.parquet", data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_batch("events", truncated)


def test_folder_without_events_or_catalog_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"holds no events.parquet\|csv and no items.parquet\|csv"):
        read_batch("events", tmp_path)


def test_folder_with_only_a_catalog_is_a_catalog_update(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title,available,price\ni1,Soap,false,2.5\n")
    batch = read_batch("events", tmp_path)
    assert len(batch.events) == 0 and list(batch.items["item_id"]) == ["i1"]
    assert not batch.items["available"].iloc[0]
