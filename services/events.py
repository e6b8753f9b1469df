"""/events: real-time events into the online store and the offline event log, all or nothing.

Every event is checked once, with the rules of ``shoprec.validation`` (the batch gate's
rules, catalog check on): a batch with any invalid event is refused whole (422, each bad
event's index and messages), nothing written. A valid batch goes through
``OnlineFeatures.push_events`` only, which trusts the ``ValidEvents`` it gets, appends
them to the offline event log and pushes each user's updated sequence online. Events
without ``timestamp`` get the server's time.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from services.bundle import CurrentModel
from services.guards import Limits, RequestError
from services.resilience import StoreGuard
from shoprec.config import Settings
from shoprec.features.online import InvalidFeatureRequest, OnlineFeatures
from shoprec.validation import InvalidEvents, ValidEvents, accept_events


@dataclass(frozen=True)
class Accepted:
    accepted: int

    def to_json(self) -> dict:
        return {"accepted": self.accepted}


class EventIngest:
    def __init__(self, settings: Settings, model: CurrentModel, features: OnlineFeatures | None,
                 store: StoreGuard, limits: Limits):
        self.settings = settings
        self.model = model
        self.features = features
        self.store = store
        self.limits = limits

    def ingest(self, records: list) -> Accepted:
        """Validate every event; all valid -> online store + offline event log (one push), else nothing."""
        events = self.validate(records)
        if self.features is None or not self.store.should_try():
            raise RequestError(f"online store unavailable ({self.store.last_error}); nothing was written", status=503)
        try:
            self.features.push_events(events)
        except InvalidFeatureRequest as exc:
            raise RequestError(f"events refused by the feature store; nothing was written: {exc}") from exc
        except Exception as exc:
            self.store.failed(exc)
            raise RequestError(
                f"online store unavailable: the events are in the offline event log but not online yet: {exc}", status=503
            ) from exc
        self.store.succeeded()
        return Accepted(len(events))

    def validate(self, records: list) -> ValidEvents:
        """The request's events, checked against the rules (RequestError 422 with every bad event)."""
        self.limits.check_events(records)
        now = pd.Timestamp.now(tz="UTC").isoformat()
        records = [{**r, "timestamp": now} if isinstance(r, dict) and r.get("timestamp") is None else r for r in records]
        try:
            return accept_events(records, self.settings, known_items=self.model.bundle().known_items)
        except InvalidEvents as exc:
            detail = [{"index": i, "errors": errors} for i, errors in exc.invalid]
            raise RequestError(f"{len(exc.invalid)} of {len(records)} events are invalid; nothing was written",
                               detail=detail) from exc

    def warm_up(self) -> None:
        """Pay the validation's and a push's first-call costs on a made-up event; writes nothing."""
        item = self.model.bundle().catalog.item_ids[0]
        self.validate([{"user_id": "warm-up", "item_id": item, "event_type": "view"}])
        if self.features is not None:
            self.features.warm_up()
