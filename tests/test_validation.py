"""The gate's rules: single-event checks and the Great Expectations suites come from one definition."""

from __future__ import annotations

import pandas as pd
import pytest

from shoprec.config import load_settings
from shoprec.schema import SchemaError, conform_events, conform_items
from shoprec.validation import (InvalidEvents, accept_events, check_id, event_rules, id_rules, validate_batch,
                                validate_event_records, volume_bounds)

NOW = pd.Timestamp.now(tz="UTC")
GOOD = {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "2024-05-01T10:00:00Z"}


def test_a_good_event_has_no_errors(settings):
    assert validate_event_records([GOOD, {**GOOD, "price": 9.5, "quantity": 2, "session_id": "s"}], settings) == [[], []]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"user_id": None}, "user_id is missing"),
        ({"event_type": "click"}, "event_type is not one of view, add_to_cart, purchase"),
        ({"timestamp": (NOW + pd.Timedelta(days=1)).isoformat()}, "in the future"),
        ({"timestamp": "1990-01-01T00:00:00Z"}, "timestamp is before"),
        ({"price": -1.0}, "price is negative"),
        ({"quantity": 0}, "quantity is below 1"),
        ({"quantity": 2**63}, "quantity is below 1 or above 10000"),
        ({"quantity": 1e300}, "quantity is below 1 or above 10000"),
        ({"quantity": float("inf")}, "quantity must be a finite number"),
        ({"price": float("inf")}, "price must be a finite number"),
        ({"user_id": "u\x01"}, "user_id contains control characters"),
        ({"session_id": "s\x7f"}, "session_id contains control characters"),
        ({"item_id": ""}, "item_id must be 1 to 128 characters"),
        ({"price": "cheap"}, "price must be a number"),
        ({"timestamp": "yesterday"}, "timestamp is not valid"),
        ({"colour": "red"}, "unexpected field 'colour'"),
    ],
)
def test_each_rule_refuses_a_bad_single_event(settings, change, message):
    (errors,) = validate_event_records([{**GOOD, **change}], settings)
    assert any(message in e for e in errors), errors


def test_unreadable_value_is_reported_once_not_also_as_missing(settings):
    (errors,) = validate_event_records([{**GOOD, "timestamp": 12.5}], settings)
    assert errors == ["timestamp must be an ISO-8601 date-time string"]


def test_catalog_check_for_single_events_only_with_known_items(settings):
    assert validate_event_records([GOOD], settings, known_items={"i1"}) == [[]]
    assert validate_event_records([GOOD], settings, known_items={"other"}) == [["item_id is not in the catalog"]]


def test_configured_event_types_are_accepted(home, monkeypatch):
    settings = load_settings(event_types=["view", "add_to_cart", "purchase", "wishlist"])
    assert validate_event_records([{**GOOD, "event_type": "Wishlist"}], settings) == [[]]


def test_volume_bounds_follow_recent_batches(settings):
    assert volume_bounds(settings, []) == (1, None)
    low, high = volume_bounds(settings, [1000, 1200, 0, 800])
    assert (low, high) == (100, 10000)


def _frame(records: list[dict]) -> pd.DataFrame:
    return conform_events(pd.DataFrame(records))


def test_gx_suite_and_single_event_checks_agree(settings):
    """Every row rule the per-event path reports is one the GX suite fails, and vice versa."""
    records = [
        GOOD,
        {**GOOD, "user_id": None},
        {**GOOD, "event_type": "click"},
        {**GOOD, "timestamp": (NOW + pd.Timedelta(days=2)).isoformat()},
        {**GOOD, "price": -3.0},
        {**GOOD, "quantity": 0},
        {**GOOD, "quantity": 20_000},
        {**GOOD, "item_id": "i\x00"},
    ] + [{**GOOD, "item_id": f"i{k}", "timestamp": f"2024-05-02T10:00:{k:02d}Z"} for k in range(20)]
    per_event = {m for errors in validate_event_records(records, settings) for m in errors}
    result = validate_batch(_frame(records), conform_items(pd.DataFrame({"item_id": []})), settings)
    assert not result.success
    messages_by_rule = {r.message for r in event_rules(settings)}
    gx_failed = {m for m in messages_by_rule if any(m in f for f in result.failures)}
    per_event_rules = {m for m in messages_by_rule if m in per_event}
    assert gx_failed == per_event_rules and len(gx_failed) == 6


def test_accepted_events_come_back_conformed_and_a_bad_one_refuses_the_batch(settings):
    valid = accept_events([{**GOOD, "event_type": " VIEW", "quantity": 3}, {**GOOD, "user_id": 42}], settings)
    assert list(valid.frame.columns) == list(conform_events(pd.DataFrame([GOOD])).columns)
    assert valid.frame["event_type"].tolist() == ["view", "view"] and valid.frame["user_id"].tolist() == ["u1", "42"]
    assert valid.frame["quantity"].tolist()[0] == 3 and str(valid.frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    with pytest.raises(InvalidEvents) as refused:
        accept_events([GOOD, {**GOOD, "quantity": 2**63}, "not an event"], settings)
    assert [i for i, _ in refused.value.invalid] == [1, 2]
    frame = pd.DataFrame([GOOD, {**GOOD, "event_type": "teleport"}])  # a frame's rows are records too
    with pytest.raises(InvalidEvents, match="event_type is not one of"):
        accept_events(frame, settings)


def test_id_rules_are_one_definition_for_every_id(settings):
    rules = id_rules("history[3]", 8)
    assert check_id(" abc ", rules) == ("abc", [])
    assert check_id("x" * 9, rules)[1] == ["history[3] must be 1 to 8 characters"]
    assert check_id("a\tb", rules)[1] == ["history[3] contains control characters"]
    assert check_id(7, rules) == ("7", []) and check_id(None, rules)[1] == ["history[3] is missing"]
    assert set(id_rules("user_id", settings.validation.max_id_length)) <= set(event_rules(settings))


def test_a_whole_number_beyond_64_bits_is_a_schema_error_not_a_crash():
    frame = pd.DataFrame([{**GOOD, "quantity": str(2**63)}])
    with pytest.raises(SchemaError, match="'quantity': 1 value"):
        conform_events(frame)


def test_clean_batch_passes_and_reports_both_suites(settings, tmp_path):
    events = _frame([{**GOOD, "item_id": f"i{k % 3}", "timestamp": f"2024-05-01T10:{k:02d}:00Z"} for k in range(30)])
    items = conform_items(pd.DataFrame({"item_id": ["i0", "i1", "i2"], "title": ["a", "b", "c"], "price": [1.0, 2.0, 3.0]}))
    result = validate_batch(events, items, settings, known_items={"i0", "i1", "i2"}, docs_dir=tmp_path / "docs")
    assert result.success, result.failures
    assert set(result.results) == {"events", "items"}
    assert (tmp_path / "docs" / "index.html").exists()


def test_batch_only_rules_duplicates_volume_unknown_items_and_catalog(settings):
    rows = [{**GOOD, "timestamp": f"2024-05-01T10:{k:02d}:00Z"} for k in range(10)]
    events = _frame(rows + rows[:5])  # a third duplicates
    items = conform_items(pd.DataFrame({"item_id": ["i1", "i1"], "price": [-1.0, 2.0]}))
    result = validate_batch(events, items, settings, known_items={"x"}, recent_sizes=[1000, 1000])
    text = "\n".join(result.failures)
    assert "more than 5% of rows are duplicates" in text
    assert "event count outside [100, 10000]" in text
    assert "item_id is not in the catalog: 15 of 15 rows" in text
    assert "items: price is negative" in text
    assert "items: item_id appears more than once" in text
