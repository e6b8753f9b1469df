"""The unit of ingestion: a batch of events, optionally with catalog items."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from shoprec.schema import conform_events, conform_items, empty_items, event_row_hashes, item_row_hashes


@dataclass
class Batch:
    events: pd.DataFrame
    items: pd.DataFrame = field(default_factory=empty_items)
    source: str = ""  # where it came from (path, generator seed)
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. synthetic_timestamps: true

    @classmethod
    def from_frames(cls, events: pd.DataFrame, items: pd.DataFrame | None = None, **kw) -> "Batch":
        items = conform_items(items) if items is not None else empty_items()
        return cls(events=conform_events(events), items=items, **kw)

    @property
    def batch_id(self) -> str:
        """Content hash: the same data always gets the same id, so re-ingesting is idempotent."""
        digest = hashlib.sha256(event_row_hashes(self.events))
        digest.update(item_row_hashes(self.items))
        return digest.hexdigest()[:16]
