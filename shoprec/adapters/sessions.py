"""Session logs: timestamp, user_id, item_id, session_id - one row per click.

Such logs record item views only, so every row is a ``view`` unless the file says otherwise.
Timestamps: date strings, or epoch numbers (unit by magnitude, or ``timestamp_unit``).
"""

from __future__ import annotations

from shoprec.adapters import events
from shoprec.reading import EventSource, ReadOptions

PRESET = ReadOptions(constants={"event_type": "view"})


def open(path, options: ReadOptions, catalog=None, catalog_options=None) -> EventSource:
    return events.open(path, options, catalog, catalog_options, preset=PRESET, fmt="sessions")
