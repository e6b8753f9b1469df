"""/admin/forget_user: the right to erasure.

The user's online rows, event-log rows and feature-table rows go first
(``OnlineFeatures.forget_user``), then their events in the lake: each affected Parquet
file is rewritten to a temp name and renamed, so a crash never leaves a half-written
file and other users' events are never lost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from services.guards import Limits, RequestError
from services.resilience import StoreGuard
from shoprec.config import Settings
from shoprec.features.online import OnlineFeatures
from shoprec.lake import event_files


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
        return Erased(user_id, erase_from_lake(self.lake_dir, user_id))


def erase_from_lake(lake_dir: Path, user_id: str) -> int:
    """Delete ``user_id``'s events from every lake event file; returns how many rows went."""
    removed = 0
    for path in event_files(Path(lake_dir)):
        table = pq.read_table(path)
        is_user = pc.fill_null(pc.equal(table["user_id"], user_id), False)
        hits = pc.sum(is_user).as_py() or 0
        if not hits:
            continue
        kept = table.filter(pc.invert(is_user))
        if kept.num_rows == 0:
            path.unlink()
        else:
            tmp = path.with_name(f".{path.name}.tmp")
            pq.write_table(kept, tmp)
            os.replace(tmp, path)
        removed += hits
    return removed
