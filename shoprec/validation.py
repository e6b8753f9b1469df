"""The validation gate: one set of rules, two ways to run them.

Rules are data (``Rule``): the one definition of what a valid event, catalog item or id
is. From them we build
- the Great Expectations 1.x suites that judge a whole batch (plus batch-only checks:
  schema, duplicate rate, volume against recent batches, share of known items), with the
  result JSON and Data Docs HTML kept next to the batch, and
- the single-record checks in plain Python, fast enough for the serving layer to call per
  request (no GX import on that path): ``validate_event_records`` (messages per event),
  ``accept_events`` (all valid -> ``ValidEvents``, conformed; else ``InvalidEvents``) and
  ``check_id`` (one id against the id rules; the service's request limits and the online
  store's reads use it).

Every field a rule reads is bounded (ids by length and printable characters, numbers by
range), so a valid event always fits the canonical schema.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from shoprec.cleaning import DUPLICATE_KEY
from shoprec.config import Settings
from shoprec.schema import EVENT_COLUMNS, ITEM_COLUMNS, REQUIRED_EVENT_COLUMNS, conform_events, normalise_id

IN_CATALOG_COLUMN = "item_in_catalog"  # derived column the GX suite checks for the known-item ratio
GX_TYPES = {"string": "str", "Float64": "float64", "Int64": "int64", "datetime64[ns, UTC]": "Timestamp", "boolean": "bool"}
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"  # what an id may not contain (the "printable" check)
_CONTROL = re.compile(CONTROL_CHARACTERS)
ID_COLUMNS = ("user_id", "item_id", "session_id", "event_id")  # event_id: optional, what makes an event count once


@dataclass(frozen=True)
class Rule:
    """One row-level check. ``check`` is not_null | in_set | between | length | printable | in_catalog."""

    name: str
    check: str
    column: str
    message: str
    value_set: tuple = ()
    min_value: Any = None
    max_value: Any = None
    mostly: float = 1.0  # share of rows that must pass in a batch; single events always need to pass


@functools.lru_cache(maxsize=1024)
def id_rules(column: str, max_length: int, required: bool = True) -> tuple[Rule, ...]:
    """What an id is: present (when required), 1 to ``max_length`` characters, no control characters.

    Cached: the service checks ids (and ``history[i]`` items) per request."""
    rules = [Rule(f"{column}_not_null", "not_null", column, f"{column} is missing")] if required else []
    return (*rules,
            Rule(f"{column}_length", "length", column, f"{column} must be 1 to {max_length} characters",
                 min_value=1, max_value=max_length),
            Rule(f"{column}_printable", "printable", column, f"{column} contains control characters"))


def event_rules(settings: Settings, now: pd.Timestamp | None = None, with_catalog: bool = False) -> list[Rule]:
    v = settings.validation
    latest = (now or pd.Timestamp.now(tz="UTC")) + pd.Timedelta(seconds=v.max_future_seconds)
    earliest = pd.Timestamp(v.min_timestamp)
    rules = [r for c in ID_COLUMNS for r in id_rules(c, v.max_id_length, required=c in REQUIRED_EVENT_COLUMNS)]
    rules += [Rule(f"{c}_not_null", "not_null", c, f"{c} is missing") for c in ("event_type", "timestamp")]
    rules += [
        Rule("event_type_known", "in_set", "event_type",
             f"event_type is not one of {', '.join(settings.event_types)}", value_set=tuple(settings.event_types)),
        Rule("timestamp_in_range", "between", "timestamp",
             f"timestamp is before {earliest.isoformat()} or in the future (more than {v.max_future_seconds} s ahead)",
             min_value=earliest, max_value=latest),
        Rule("price_in_range", "between", "price", f"price is negative or above {v.max_price:g}",
             min_value=0.0, max_value=v.max_price),
        Rule("quantity_in_range", "between", "quantity", f"quantity is below 1 or above {v.max_quantity}",
             min_value=1, max_value=v.max_quantity),
    ]
    if with_catalog:
        rules.append(Rule("item_in_catalog", "in_catalog", "item_id", "item_id is not in the catalog",
                          mostly=v.min_known_item_ratio))
    return rules


def item_rules(settings: Settings) -> list[Rule]:
    v = settings.validation
    return [
        *id_rules("item_id", v.max_id_length),
        Rule("price_in_range", "between", "price", f"price is negative or above {v.max_price:g}",
             min_value=0.0, max_value=v.max_price),
    ]


# --- single records: the serving layer's path ------------------------------------------

def _missing(value: Any) -> bool:
    """None, or a pandas missing value (a record taken from a DataFrame)."""
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _parse_id(value: Any) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
        raise TypeError("must be a string")
    return normalise_id(value)


def _parse_timestamp(value: Any) -> datetime | None:
    if _missing(value):
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        parsed = datetime.fromisoformat(value)
    else:
        raise TypeError("must be an ISO-8601 date-time string")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _parse_number(value: Any, whole: bool = False) -> float | int | None:
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("must be a number")
    if not math.isfinite(value):
        raise TypeError("must be a finite number")
    if whole and value != int(value):
        raise TypeError("must be a whole number")
    return int(value) if whole else float(value)


PARSERS = {
    "user_id": _parse_id,
    "item_id": _parse_id,
    "session_id": _parse_id,
    "event_id": _parse_id,
    "event_type": lambda v: None if _missing(v) else _parse_id(v).lower(),
    "timestamp": _parse_timestamp,
    "price": _parse_number,
    "quantity": lambda v: _parse_number(v, whole=True),
}


def _passes(rule: Rule, value: Any, known_items: set[str] | None) -> bool:
    if rule.check == "not_null":
        return value is not None
    if value is None:
        return True  # like GX: missing values are only the not_null rule's business
    if rule.check == "in_set":
        return value in rule.value_set
    if rule.check == "between":
        return (rule.min_value is None or value >= rule.min_value) and (rule.max_value is None or value <= rule.max_value)
    if rule.check == "length":
        return rule.min_value <= len(value) <= rule.max_value
    if rule.check == "printable":
        return _CONTROL.search(value) is None
    if rule.check == "in_catalog":
        return known_items is None or value in known_items
    raise ValueError(f"unknown check {rule.check!r}")


def check_id(value: Any, rules: Iterable[Rule]) -> tuple[str | None, list[str]]:
    """One id against its ``id_rules``: (the cleaned id, error messages; empty when valid)."""
    rules = tuple(rules)
    try:
        cleaned = _parse_id(value)
    except TypeError as exc:
        return None, [f"{rules[0].column} {exc}"]
    return cleaned, [r.message for r in rules if not _passes(r, cleaned, None)]


def check_event(record: dict, rules: list[Rule], known_items: set[str] | None = None) -> list[str]:
    """Error messages for one event record (empty list: valid)."""
    if not isinstance(record, dict):
        return ["an event must be a JSON object"]
    errors = [f"unexpected field {k!r}" for k in record if k not in EVENT_COLUMNS]
    values, unreadable = {}, set()
    for column, parse in PARSERS.items():
        try:
            values[column] = parse(record.get(column))
        except TypeError as exc:
            errors.append(f"{column} {exc}")
            unreadable.add(column)
        except ValueError as exc:
            errors.append(f"{column} is not valid: {exc}")
            unreadable.add(column)
    for rule in rules:
        # a value we could not read already has its error; "is missing" would mislead
        if rule.column not in unreadable and not _passes(rule, values[rule.column], known_items):
            errors.append(rule.message)
    return errors


def validate_event_records(
    records: list[dict], settings: Settings, known_items: set[str] | None = None
) -> list[list[str]]:
    """Per-event error messages, in input order (an empty list means the event is valid).

    The same rules as the batch gate, built once per call; ``known_items`` turns on the
    catalog check (strict for single events).
    """
    rules = event_rules(settings, with_catalog=known_items is not None)
    return [check_event(r, rules, known_items) for r in records]


@dataclass(frozen=True)
class ValidEvents:
    """Events that passed every event rule, conformed to the canonical schema (``frame``).

    Only ``accept_events`` makes one, so a consumer (``OnlineFeatures.push_events``) can
    trust it without checking again."""

    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)


class InvalidEvents(ValueError):
    """Some events broke a rule; ``errors`` has one list of messages per event, in input order."""

    def __init__(self, errors: list[list[str]]):
        self.errors = errors
        self.invalid = [(i, e) for i, e in enumerate(errors) if e]
        super().__init__(f"{len(self.invalid)} of {len(errors)} events are invalid: "
                         + "; ".join(f"#{i}: {', '.join(e)}" for i, e in self.invalid[:3]))


def accept_events(records: list[dict] | pd.DataFrame, settings: Settings,
                  known_items: set[str] | None = None) -> ValidEvents:
    """All events valid -> ``ValidEvents``; otherwise ``InvalidEvents`` (nothing is half-accepted).

    ``records`` are event dicts (the API's JSON) or a frame of them (each row one record)."""
    if isinstance(records, pd.DataFrame):
        records = records.astype(object).to_dict("records")
    errors = validate_event_records(records, settings, known_items)
    if any(errors):
        raise InvalidEvents(errors)
    return ValidEvents(conform_events(pd.DataFrame.from_records(records, columns=_columns_of(records))))


def _columns_of(records: list[dict]) -> list[str]:
    present = {k for r in records for k in r}
    return [c for c in EVENT_COLUMNS if c in present]


# --- whole batches: Great Expectations ------------------------------------------------

@dataclass
class ValidationResult:
    success: bool
    failures: list[str] = field(default_factory=list)  # one short human line per failed check
    results: dict = field(default_factory=dict)  # GX result JSON per suite
    docs: Path | None = None  # Data Docs index.html

    def to_dict(self) -> dict:
        return {"success": self.success, "failures": self.failures, "docs": str(self.docs) if self.docs else None,
                "results": self.results}


def volume_bounds(settings: Settings, recent_sizes: Iterable[int]) -> tuple[int, int | None]:
    """Allowed event count: within a factor of the median of recent non-empty batches."""
    v = settings.validation
    sizes = [n for n in recent_sizes if n > 0][-v.volume_history:]
    if not sizes:
        return v.min_rows, None
    median = statistics.median(sizes)
    return max(v.min_rows, math.floor(median / v.volume_tolerance)), math.ceil(median * v.volume_tolerance)


def _row_expectation(gxe, rule: Rule):
    kw = {"meta": {"rule": rule.name, "message": rule.message}}
    if rule.mostly < 1.0:
        kw["mostly"] = rule.mostly
    if rule.check == "not_null":
        return gxe.ExpectColumnValuesToNotBeNull(column=rule.column, **kw)
    if rule.check == "in_set":
        return gxe.ExpectColumnValuesToBeInSet(column=rule.column, value_set=list(rule.value_set), **kw)
    if rule.check == "between":
        return gxe.ExpectColumnValuesToBeBetween(column=rule.column, min_value=rule.min_value, max_value=rule.max_value, **kw)
    if rule.check == "length":
        return gxe.ExpectColumnValueLengthsToBeBetween(column=rule.column, min_value=rule.min_value, max_value=rule.max_value, **kw)
    if rule.check == "printable":
        return gxe.ExpectColumnValuesToNotMatchRegex(column=rule.column, regex=CONTROL_CHARACTERS, **kw)
    if rule.check == "in_catalog":
        return gxe.ExpectColumnValuesToBeInSet(column=IN_CATALOG_COLUMN, value_set=[True], **kw)
    raise ValueError(f"unknown check {rule.check!r}")


def _schema_expectations(gxe, columns: dict[str, str], extra: Iterable[str] = ()) -> list:
    meta = {"rule": "schema", "message": "columns or types differ from the canonical model"}
    expectations = [gxe.ExpectTableColumnsToMatchSet(column_set=list(columns) + list(extra), exact_match=True, meta=meta)]
    expectations += [
        gxe.ExpectColumnValuesToBeOfType(column=c, type_=GX_TYPES[t], meta=meta) for c, t in columns.items() if t in GX_TYPES
    ]
    return expectations


def event_suite_expectations(settings: Settings, recent_sizes: Iterable[int], with_catalog: bool) -> list:
    import great_expectations.expectations as gxe  # GX takes seconds to import: only batch validation pays it

    low, high = volume_bounds(settings, recent_sizes)
    v = settings.validation
    expectations = _schema_expectations(gxe, EVENT_COLUMNS, [IN_CATALOG_COLUMN] if with_catalog else [])
    expectations += [_row_expectation(gxe, r) for r in event_rules(settings, with_catalog=with_catalog)]
    expectations += [
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=DUPLICATE_KEY, mostly=1.0 - v.max_duplicate_ratio, ignore_row_if="never",
            meta={"rule": "duplicate_rate", "message": f"more than {v.max_duplicate_ratio:.0%} of rows are duplicates"}),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=low, max_value=high,
            meta={"rule": "volume", "message": f"event count outside [{low}, {high if high is not None else 'inf'}] "
                                               "(the bounds from recent batches)"}),
    ]
    return expectations


def item_suite_expectations(settings: Settings) -> list:
    import great_expectations.expectations as gxe  # see event_suite_expectations

    expectations = _schema_expectations(gxe, ITEM_COLUMNS)
    expectations += [_row_expectation(gxe, r) for r in item_rules(settings)]
    expectations.append(gxe.ExpectColumnValuesToBeUnique(
        column="item_id", meta={"rule": "item_id_unique", "message": "item_id appears more than once in the catalog"}))
    return expectations


def _gx_context():
    import great_expectations as gx  # see event_suite_expectations

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    return context


def write_data_docs(outcomes: dict, docs_dir: Path) -> Path:
    """One Data Docs page per suite (GX's own renderer) and an index linking them.

    Rendering pages directly takes ~0.2 s; a full GX site build (checkpoint action) ~5 s.
    """
    # GX's renderers: only when Data Docs are written (see event_suite_expectations)
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    docs_dir.mkdir(parents=True, exist_ok=True)
    links = []
    for name, outcome in outcomes.items():
        page = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(outcome))
        (docs_dir / f"{name}.html").write_text(page, encoding="utf-8")
        verdict = "passed" if outcome.success else "FAILED"
        links.append(f'<li><a href="{name}.html">{name}</a>: {verdict}</li>')
    index = docs_dir / "index.html"
    index.write_text("<!doctype html><meta charset='utf-8'><title>ShopRec validation</title>"
                     f"<h1>ShopRec validation (Great Expectations Data Docs)</h1><ul>{''.join(links)}</ul>", encoding="utf-8")
    return index


def _failure_line(suite: str, result, rows: int) -> str:
    meta = result.expectation_config.meta or {}
    message = meta.get("message") or result.expectation_config.type
    if result.exception_info and result.exception_info.get("raised_exception"):
        return f"{suite}: {message} (check could not run: {result.exception_info.get('exception_message')})"
    details = result.result or {}
    column = result.expectation_config.kwargs.get("column")
    if details.get("unexpected_count") is not None:
        examples = ", ".join(str(x) for x in (details.get("partial_unexpected_list") or [])[:3])
        where = f" [{column}]" if meta.get("rule") == "schema" and column else ""
        return f"{suite}: {message}{where}: {details['unexpected_count']} of {rows} rows" + (f", e.g. {examples}" if examples else "")
    observed = details.get("observed_value")
    where = f" [{column}]" if column else ""
    return f"{suite}: {message}{where} (observed: {observed})"


def validate_batch(
    events: pd.DataFrame,
    items: pd.DataFrame,
    settings: Settings,
    known_items: set[str] | None = None,
    recent_sizes: Iterable[int] = (),
    docs_dir: Path | None = None,
) -> ValidationResult:
    """Run the events (and, if any, catalog) suites; Data Docs go to ``docs_dir`` when given.

    ``known_items`` is the catalog the events are checked against (None: no catalog known).
    A catalog update (items, no events) is judged by the catalog suite alone.
    """
    import great_expectations as gx  # see event_suite_expectations

    context = _gx_context()
    source = context.data_sources.add_pandas("shoprec")
    frames, suites = {}, {}
    if len(events) or not len(items):
        with_catalog = known_items is not None
        frames["events"] = events
        if with_catalog:
            in_catalog = events["item_id"].isin(known_items).astype("boolean").mask(events["item_id"].isna())
            frames["events"] = events.assign(**{IN_CATALOG_COLUMN: in_catalog})
        suites["events"] = event_suite_expectations(settings, recent_sizes, with_catalog)
    if len(items):
        frames["items"] = items
        suites["items"] = item_suite_expectations(settings)

    outcomes, failures = {}, []
    for name, expectations in suites.items():
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole").get_batch(
            batch_parameters={"dataframe": frames[name]})
        outcomes[name] = batch.validate(suite, result_format="SUMMARY")
        failures += [_failure_line(name, r, len(frames[name])) for r in outcomes[name].results if not r.success]
    docs = write_data_docs(outcomes, docs_dir) if docs_dir is not None else None
    return ValidationResult(
        success=all(o.success for o in outcomes.values()),
        failures=failures,
        results={name: o.to_json_dict() for name, o in outcomes.items()},
        docs=docs,
    )
