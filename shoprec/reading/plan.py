"""How one part's raw chunks become canonical events: planned once on the first rows, then
applied to every chunk with vectorised pandas (no per-row Python: 10M events must stream)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from shoprec.reading.errors import InputError, Place, type_error
from shoprec.reading.layout import PartLayout
from shoprec.reading.mapping import resolve_mapping
from shoprec.reading.part import Part
from shoprec.reading.timestamps import TIMESTAMP_UNITS, guess_timestamp_unit, parse_timestamps
from shoprec.schema import EVENT_COLUMNS, REQUIRED_EVENT_COLUMNS, SchemaError, conform_events


@dataclass(frozen=True)
class EventPlan:
    """How one part's raw columns become canonical events (resolved once, used on every chunk)."""

    mapping: dict[str, str]  # canonical -> source
    constants: dict[str, str]
    event_values: dict[str, str]
    user: str  # every row | rows without a user | off
    timestamp_unit: str | None
    timestamp_source: str


def plan_events(part: Part, sample: pd.DataFrame) -> tuple[EventPlan, PartLayout]:
    """The plan for ``part`` and its layout; ``sample`` (its first rows) settles what was left to detect."""
    opts = part.options
    mapping = resolve_mapping(part, EVENT_COLUMNS, "--map")
    user = _user_rule(opts.user_from_session, mapping, opts.constants, sample)
    present = set(mapping) | set(opts.constants) | ({"user_id"} if user != "off" else set())
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in present]
    if missing:
        raise InputError(f"wrong columns: {part.files[0].name}: {part.header_note()}events are missing required "
                         f"column(s): {', '.join(missing)} (the file has columns: {', '.join(part.columns)})")
    unit, unit_source = _timestamp_unit(part, mapping, sample)
    plan = EventPlan(mapping, dict(opts.constants), dict(opts.event_values), user, unit, unit_source)
    return plan, part.layout(mapping, (unit, unit_source if "timestamp" in mapping else "n/a"), user)


def _timestamp_unit(part: Part, mapping: dict[str, str], sample: pd.DataFrame) -> tuple[str | None, str]:
    """(unit, where it came from): the options' (the user's, or a format's preset), else guessed from the sample."""
    unit = part.options.timestamp_unit
    source = "given" if part.given is None or part.given.timestamp_unit else "preset"
    if "timestamp" in mapping and unit is None:
        values = sample[mapping["timestamp"]] if len(sample) else pd.Series([], dtype="string")
        return guess_timestamp_unit(values), "detected"
    return unit, source


def _user_rule(setting: bool | None, mapping: dict[str, str], constants: Mapping[str, str],
              sample: pd.DataFrame) -> str:
    """Where the user comes from the session. True: on rows without a user; None (default): on every
    row when the source has no user column, or its first rows have no user at all; False: never.
    (Sessions as users everywhere, whatever the user column holds: --map user_id=<session column>.)"""
    has_session = "session_id" in mapping
    if setting and not has_session:
        raise InputError("--user-from-session needs a session column (map one: --map session_id=SOURCE)")
    if setting is False or not has_session or "user_id" in constants:
        return "off"
    if "user_id" not in mapping:
        return "every row"
    if setting:
        return "rows without a user"
    source = mapping["user_id"]
    if len(sample) and source in sample and sample[source].isna().all():
        return "every row (the user column is empty in the first rows)"
    return "off"


def canonical_events(raw: pd.DataFrame, plan: EventPlan, place: Place) -> pd.DataFrame:
    """One raw chunk (source names) as canonical events; InputError names file, line and column."""
    frame = pd.DataFrame({canon: raw[src] for canon, src in plan.mapping.items()}, index=raw.index)
    for column, value in plan.constants.items():
        frame[column] = frame[column].fillna(value) if column in frame else value
    _users_from_sessions(frame, plan)
    if plan.event_values and "event_type" in frame:
        frame["event_type"] = frame["event_type"].replace(plan.event_values)
    _convert(frame, plan, place)
    try:
        return conform_events(frame)
    except SchemaError as exc:
        raise InputError(f"wrong types: {place.file.name} lines {place.first_line}-{place.first_line + len(frame) - 1}: {exc}") from exc


def _users_from_sessions(frame: pd.DataFrame, plan: EventPlan) -> None:
    if plan.user.startswith("every row"):
        frame["user_id"] = frame["session_id"]
    elif plan.user == "rows without a user":
        frame["user_id"] = frame["user_id"].fillna(frame["session_id"])


def _convert(frame: pd.DataFrame, plan: EventPlan, place: Place) -> None:
    """Timestamps, prices and quantities from text, in place; any value that does not convert is refused."""
    source = plan.mapping
    if "timestamp" in frame:
        parsed = parse_timestamps(frame["timestamp"], plan.timestamp_unit)
        _refuse(place, source, "timestamp", frame["timestamp"], parsed, "timestamps" + _unit_note(plan))
        frame["timestamp"] = parsed
    for column, kind in (("price", "numbers"), ("quantity", "whole numbers")):
        if column in frame:
            numbers = pd.to_numeric(frame[column], errors="coerce")
            if column == "quantity":
                numbers = numbers.where(numbers == numbers.round())
            _refuse(place, source, column, frame[column], numbers, kind)
            frame[column] = numbers


def _unit_note(plan: EventPlan) -> str:
    if plan.timestamp_unit in TIMESTAMP_UNITS:
        return f" in epoch {plan.timestamp_unit} ({plan.timestamp_source})"
    return ""


def _refuse(place: Place, source: dict, column: str, raw: pd.Series, converted: pd.Series, kind: str) -> None:
    bad = raw.notna() & converted.isna()
    if bad.any():
        raise type_error(place, source.get(column, column), column, raw, bad.reset_index(drop=True), kind)
