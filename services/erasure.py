"""/admin/forget_user: the right to erasure.

The user's online rows, event-log rows and feature-table rows go first
(``OnlineFeatures.forget_user``), then their events in the lake (``shoprec.lake.drop_user``:
each affected Parquet file is rewritten to a temp name and renamed, so a crash never leaves
a half-written file and other users' events are never lost).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.guards import Limits, RequestError
from services.resilience import StoreGuard
from shoprec.config import Settings
from shoprec.features.online import OnlineFeatures
from shoprec.lake import drop_user


@dataclass(frozen=True)
class Erased:
    user_id: str
    lake_events_removed: int

    def to_json(self) -> dict:
        return {"user_id": self.user_id, "online_features": "removed", "event_log": "removed",
                "lake_events_removed": self.lake_events_removed}


class Erasure:
    def __init__(self, settings: Settings, features: OnlineFeatures | None, store: StoreGuard, limits: Limits):
        self.lake_dir = settings.lake_dir
        self.features = features
        self.store = store
        self.limits = limits

    def forget_user(self, user_id: str) -> Erased:
        user_id = self.limits.check_id(user_id, "user_id")
        if self.features is None:
            raise RequestError("no online store configured, nothing was erased", status=503)
        try:
            self.features.forget_user(user_id)
        except Exception as exc:
            self.store.failed(exc)
            raise RequestError(f"online store unavailable, nothing was erased: {exc}", status=503) from exc
        return Erased(user_id, drop_user(self.lake_dir, user_id))

