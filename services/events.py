"""/events: real-time events into the online store and the offline event log, valid batches only, each event once.

Every event is checked with the rules of ``shoprec.validation`` (the batch gate's rules,
catalog check on; ``validate_event_records``, plain Python): a batch with any invalid event
is refused whole (422, each bad event's index and messages), nothing written. A valid batch
goes through ``OnlineFeatures.push_records`` only, which writes each event online and to the
offline event log once, together with the pushes of the worker's other request threads
(group commit: one online read and write and one event-log fsync per part of a group; the events of
a group are conformed to the canonical schema at once, ``accept_events``): an event whose
``event_id`` (given, or derived from its fields) the user already has is counted as a
duplicate, not written again. The answer comes after the fsyncs of the parts of the group
that hold its events: an acknowledged event is durable. A store outage (503) in the middle
of a group can leave its earlier parts written: the client's retry (the same event ids)
answers those events as duplicates, so each is still written once and none is lost.

A request may carry an ``Idempotency-Key`` header: its retry (same key, same body) gets
the first answer again, and events without ``timestamp`` get the server time stamped on
the first attempt (so they get the same derived ids). The answer says what was written:
``{"accepted": n, "duplicates": m, "written": [event ids], "duplicate_ids": [...],
"erased_ids": [...]}``; events of a user in the erasure ledger are dropped, never written.

An event may name the answer it came from (``recommendation_id``, as /recommend gave it): the
link goes to the impression links log (``ImpressionSink.linked``, off the request path) once
the event is written, and attribution (``shoprec.impressions.attribute``) prefers it.

Only an online-store outage trips the store guard (``StoreGuard``); a refused event or a
bug answers its own error and leaves /recommend alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import pandas as pd

from services.bundle import CurrentModel
from services.experiments import ImpressionSink
from services.guards import Limits, RequestError
from services.resilience import StoreGuard
from shoprec.config import Settings
from shoprec.features.event_index import IdempotencyKeyReused, KeyClaim
from shoprec.features.online import (
    UNAVAILABLE_ERRORS,
    FeatureStoreUnavailable,
    InvalidFeatureRequest,
    OnlineFeatures,
    OnlineStoreBusy,
)
from shoprec.schema import SchemaError
from shoprec.validation import check_id, id_rules, validate_event_records

RETRY_HINT = "retry with the same Idempotency-Key (or event_ids): nothing is written twice"


@dataclass(frozen=True)
class EventsWritten:
    accepted: int
    duplicates: int
    written: list[str]  # event ids written now, in input order
    duplicate_ids: list[str]  # event ids written before (or repeated in this request)
    erased_ids: list[str]  # events of users who asked to be forgotten: dropped, never written

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Replayed:
    """The first answer of an Idempotency-Key, again."""

    answer: dict

    def to_json(self) -> dict:
        return self.answer


class EventIngest:
    def __init__(self, settings: Settings, model: CurrentModel, features: OnlineFeatures | None,
                 store: StoreGuard, limits: Limits, impressions: ImpressionSink | None = None):
        self.settings = settings
        self.model = model
        self.features = features
        self.store = store
        self.limits = limits
        self.impressions = impressions
        self._id_rules = id_rules("recommendation_id", settings.validation.max_id_length, required=False)

    def ingest(self, records: list, idempotency_key: str | None = None) -> EventsWritten | Replayed:
        """Validate every event; all valid -> each one online and in the event log once, else nothing."""
        key = None if idempotency_key is None else self.limits.check_id(idempotency_key, "Idempotency-Key")
        now = pd.Timestamp.now(tz="UTC")
        events = self.validate(records, now)  # before the key is claimed: a refused body claims nothing
        if self.features is None or not self.store.should_try():
            raise RequestError("online store unavailable; nothing was written", status=503)
        claim = self._claim(key, records, now)
        if claim is not None and claim.answer is not None:
            self._link(events, now)  # the first attempt's links may have died in its process's queue
            return Replayed(claim.answer)
        if claim is not None and claim.stamp != now:  # a retry: the first attempt's server time
            events = self.validate(records, claim.stamp)
        try:
            pushed = self.features.push_records([_event_part(r) for r in events])
            answer = EventsWritten(len(pushed.written), len(pushed.duplicates), pushed.written, pushed.duplicates,
                                   pushed.erased)
            if key is not None:
                self.features.index.remember_answer(key, answer.to_json())
        except OnlineStoreBusy as exc:  # the store answers: no outage, the guard stays open
            raise RequestError(f"online store busy: {exc}; {RETRY_HINT}", status=503) from exc
        except (FeatureStoreUnavailable, *UNAVAILABLE_ERRORS) as exc:
            self.store.failed(exc)
            # the error's kind only: its text names the store's host
            raise RequestError(f"online store unavailable ({type(exc).__name__}); {RETRY_HINT}", status=503) from exc
        except (InvalidFeatureRequest, SchemaError, TypeError, ValueError) as exc:
            # the events could not be written as given: the caller's problem, not the store's
            raise RequestError(f"events refused by the feature store: {exc}; {RETRY_HINT}") from exc
        self.store.succeeded()
        self._link(events, now)
        return answer

    def _link(self, events: list[dict], now: pd.Timestamp) -> None:
        """The events that name their recommendation, to the link log; a retry links again (a link
        logged twice is read once)."""
        if self.impressions is not None:
            self.impressions.linked([r for r in events if r.get("recommendation_id") is not None], now)

    def _claim(self, key: str | None, records: list, now: pd.Timestamp) -> KeyClaim | None:
        if key is None:
            return None
        try:
            return self.features.index.claim_key(key, _fingerprint(records), now)
        except IdempotencyKeyReused as exc:
            raise RequestError(f"{exc}; nothing was written") from exc
        except UNAVAILABLE_ERRORS as exc:
            self.store.failed(exc)
            raise RequestError(f"online store unavailable ({type(exc).__name__}); nothing was written", status=503) from exc

    def validate(self, records: list, now: pd.Timestamp | None = None) -> list[dict]:
        """The request's events, checked against the rules (RequestError 422 with every bad event);
        those without a timestamp get ``now`` (the server's time); a ``recommendation_id`` must be an
        id. A whole frame per request (``accept_events``) cost 1 ms of a 1-event request: the push's
        group conforms them."""
        self.limits.check_events(records)
        stamp = (now or pd.Timestamp.now(tz="UTC")).isoformat()
        records = [{**r, "timestamp": stamp} if isinstance(r, dict) and r.get("timestamp") is None else r for r in records]
        errors = validate_event_records([_event_part(r) for r in records], self.settings,
                                        known_items=self.model.bundle().known_items)
        errors = [e + self._recommendation_id_errors(r) for e, r in zip(errors, records)]
        invalid = [(i, e) for i, e in enumerate(errors) if e]
        if invalid:
            detail = [{"index": i, "errors": e} for i, e in invalid]
            raise RequestError(f"{len(invalid)} of {len(records)} events are invalid; nothing was written", detail=detail)
        return records

    def _recommendation_id_errors(self, record: object) -> list[str]:
        if not isinstance(record, dict) or record.get("recommendation_id") is None:
            return []
        if not isinstance(record["recommendation_id"], str):
            return ["recommendation_id must be a string"]
        return check_id(record["recommendation_id"], self._id_rules)[1]

    def warm_up(self) -> None:
        """Pay the validation's and a push's first-call costs on a made-up event; writes nothing."""
        item = self.model.bundle().catalog.item_ids[0]
        self.validate([{"user_id": "warm-up", "item_id": item, "event_type": "view"}])
        if self.features is not None:
            self.features.warm_up()


def _event_part(record: object) -> object:
    """The event of a record: without the ``recommendation_id`` it may name (not an event field)."""
    if isinstance(record, dict) and "recommendation_id" in record:
        return {k: v for k, v in record.items() if k != "recommendation_id"}
    return record


def _fingerprint(records: list) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()

