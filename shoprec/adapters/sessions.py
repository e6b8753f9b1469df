"""Session logs: timestamp, user_id, item_id, session_id - one row per click.

Such logs record item views only, so every row becomes a ``view`` event. Timestamps are
date strings unless ``timestamp_unit`` says they are epoch numbers.
"""

from __future__ import annotations

from shoprec.adapters import events
from shoprec.adapters.base import Batch


def read(path, timestamp_unit: str | None = None, **_options) -> Batch:
    return events.read(path, timestamp_unit=timestamp_unit, defaults={"event_type": "view"}, fmt="sessions")
