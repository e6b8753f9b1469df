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
from dataclasses import asdict, dataclass, field
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


def event_suite_expectations(settings: Settings, with_catalog: bool) -> list:
    """The row-level events suite (schema and every rule); it runs on each chunk of a batch."""
    import great_expectations.expectations as gxe  # GX takes seconds to import: only batch validation pays it

    expectations = _schema_expectations(gxe, EVENT_COLUMNS, [IN_CATALOG_COLUMN] if with_catalog else [])
    return expectations + [_row_expectation(gxe, r) for r in event_rules(settings, with_catalog=with_catalog)]


@dataclass(frozen=True)
class BatchCheck:
    """A check of the whole batch (it needs every chunk's rows): volume, duplicate rate."""

    rule: str
    message: str
    success: bool
    observed: Any
    unexpected: int | None = None  # rows that fail it, when it counts rows

    def failure_line(self, rows: int) -> str:
        if self.unexpected is not None:
            return f"events: {self.message}: {self.unexpected} of {rows} rows"
        return f"events: {self.message} (observed: {self.observed})"


def batch_checks(settings: Settings, rows: int, duplicate_rows: int, recent_sizes: Iterable[int]) -> list[BatchCheck]:
    """Volume against recent batches, and the share of rows in duplicate groups (every copy
    counts, as Great Expectations' compound-uniqueness check counts them)."""
    v = settings.validation
    low, high = volume_bounds(settings, recent_sizes)
    volume_ok = rows >= low and (high is None or rows <= high)
    unique_share = 1.0 - duplicate_rows / rows if rows else 1.0
    return [
        BatchCheck("duplicate_rate", f"more than {v.max_duplicate_ratio:.0%} of rows are duplicates",
                   unique_share >= 1.0 - v.max_duplicate_ratio, round(1.0 - unique_share, 6), duplicate_rows),
        BatchCheck("volume", f"event count outside [{low}, {high if high is not None else 'inf'}] "
                             "(the bounds from recent batches)", volume_ok, rows),
    ]


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


class _Failures:
    """Failed expectations summed over a batch's chunks: one line per rule, counts of all rows."""

    def __init__(self):
        self._by_rule: dict[tuple, dict] = {}

    def add(self, suite: str, outcome, first_row: int) -> None:
        for result in outcome.results:
            if result.success:
                continue
            meta = result.expectation_config.meta or {}
            column = result.expectation_config.kwargs.get("column")
            entry = self._by_rule.setdefault((suite, meta.get("rule"), column), {
                "suite": suite, "message": meta.get("message") or result.expectation_config.type,
                "schema": meta.get("rule") == "schema", "column": column, "count": None,
                "examples": [], "rows": [], "observed": None, "error": None})
            _merge(entry, result, first_row)

    def lines(self, rows: dict[str, int]) -> list[str]:
        return [_line(entry, rows[entry["suite"]]) for entry in self._by_rule.values()]


def _merge(entry: dict, result, first_row: int) -> None:
    if result.exception_info and result.exception_info.get("raised_exception"):
        entry["error"] = result.exception_info.get("exception_message")
        return
    details = result.result or {}
    if details.get("unexpected_count") is None:
        entry["observed"] = details.get("observed_value")
        return
    entry["count"] = (entry["count"] or 0) + details["unexpected_count"]
    entry["examples"] += [str(x) for x in (details.get("partial_unexpected_list") or [])][:3 - len(entry["examples"])]
    index = details.get("partial_unexpected_index_list") or []
    entry["rows"] += [first_row + int(i) for i in index if isinstance(i, (int, numbers.Integral))][:3 - len(entry["rows"])]


def _line(entry: dict, rows: int) -> str:
    suite, message = entry["suite"], entry["message"]
    where = f" [{entry['column']}]" if entry["column"] else ""
    if entry["error"] is not None:
        return f"{suite}: {message} (check could not run: {entry['error']})"
    if entry["count"] is not None:
        examples = ", ".join(entry["examples"])
        at = ", ".join(f"{r + 1:,}" for r in entry["rows"])
        return (f"{suite}: {message}{where if entry['schema'] else ''}: {entry['count']} of {rows} rows"
                + (f", e.g. {examples}" if examples else "") + (f" (row {at} of the batch)" if at else ""))
    return f"{suite}: {message}{where} (observed: {entry['observed']})"


class BatchGate:
    """The gate over one batch, fed chunk by chunk: Great Expectations' events suite runs on
    every chunk (every row is checked, none sampled) and the failures are summed; the checks that
    need the whole batch (``batch_checks``) and the catalog suite run once in ``finish``.

    ``known_items`` is the catalog the events are checked against (None: no catalog known)."""

    MAX_DOCUMENTED_CHUNKS = 5  # Data Docs pages: the first chunk and failing ones, not hundreds

    def __init__(self, settings: Settings, known_items: set[str] | None = None, recent_sizes: Iterable[int] = ()):
        import great_expectations as gx  # see event_suite_expectations

        self.settings = settings
        self.known_items = known_items
        self.recent_sizes = list(recent_sizes)
        self._context = _gx_context()
        self._source = self._context.data_sources.add_pandas("shoprec")
        self._events_suite = self._context.suites.add(gx.ExpectationSuite(
            name="events", expectations=event_suite_expectations(settings, known_items is not None)))
        self._events_batches = self._source.add_dataframe_asset("events").add_batch_definition_whole_dataframe("whole")
        self._failures = _Failures()
        self._documented: dict[str, Any] = {}
        self.rows = 0
        self.chunks_failed = 0

    def check_events(self, events: pd.DataFrame) -> bool:
        """Run the events suite on the next chunk (conformed, as delivered); False if it failed."""
        frame = events.reset_index(drop=True)
        if self.known_items is not None:
            in_catalog = frame["item_id"].isin(self.known_items).astype("boolean").mask(frame["item_id"].isna())
            frame = frame.assign(**{IN_CATALOG_COLUMN: in_catalog})
        outcome = self._events_batches.get_batch(batch_parameters={"dataframe": frame}).validate(
            self._events_suite, result_format="SUMMARY")
        self._failures.add("events", outcome, self.rows)
        if (not self._documented or not outcome.success) and len(self._documented) < self.MAX_DOCUMENTED_CHUNKS:
            self._documented[f"events-rows-{self.rows + 1}-{self.rows + len(frame)}"] = outcome
        self.rows += len(frame)
        self.chunks_failed += not outcome.success
        return outcome.success

    def finish(self, duplicate_rows: int, items: pd.DataFrame, docs_dir: Path | None = None,
               judge_events: bool = True) -> ValidationResult:
        """The verdict on the whole batch. ``judge_events`` False: a catalog update (items, no
        events), judged by the catalog suite alone."""
        checks = batch_checks(self.settings, self.rows, duplicate_rows, self.recent_sizes) if judge_events else []
        outcomes = dict(self._documented) if judge_events else {}
        failures = self._failures.lines({"events": self.rows}) if judge_events else []
        results: dict[str, Any] = {}
        if judge_events:
            results["events"] = {
                "rows": self.rows, "chunks_failed": self.chunks_failed,
                "batch_checks": [asdict(c) for c in checks],
                "chunks": {name: o.to_json_dict() for name, o in outcomes.items()},
            }
            failures += [c.failure_line(self.rows) for c in checks if not c.success]
        success = (not judge_events or (self.chunks_failed == 0 and all(c.success for c in checks)))
        if len(items):
            outcome = self._validate_items(items)
            outcomes["items"] = outcome
            results["items"] = outcome.to_json_dict()
            failures += self._item_failures(outcome, len(items))
            success = success and outcome.success
        docs = write_data_docs(outcomes, docs_dir) if docs_dir is not None else None
        return ValidationResult(success=success, failures=failures, results=results, docs=docs)

    def _validate_items(self, items: pd.DataFrame):
        import great_expectations as gx  # see event_suite_expectations

        suite = self._context.suites.add(gx.ExpectationSuite(name="items", expectations=item_suite_expectations(self.settings)))
        batch = self._source.add_dataframe_asset("items").add_batch_definition_whole_dataframe("whole").get_batch(
            batch_parameters={"dataframe": items.reset_index(drop=True)})
        return batch.validate(suite, result_format="SUMMARY")

    @staticmethod
    def _item_failures(outcome, rows: int) -> list[str]:
        failures = _Failures()
        failures.add("items", outcome, 0)
        return failures.lines({"items": rows})


def validate_batch(
    events: pd.DataFrame,
    items: pd.DataFrame,
    settings: Settings,
    known_items: set[str] | None = None,
    recent_sizes: Iterable[int] = (),
    docs_dir: Path | None = None,
) -> ValidationResult:
    """The gate on a batch held in memory: ``BatchGate`` with the batch as its one chunk.

    A catalog update (items, no events) is judged by the catalog suite alone."""
    gate = BatchGate(settings, known_items, recent_sizes)
    judge_events = bool(len(events)) or not len(items)
    if judge_events:
        gate.check_events(events)
    duplicates = int(events.duplicated(subset=DUPLICATE_KEY, keep=False).sum())
    return gate.finish(duplicates, items, docs_dir, judge_events=judge_events)
