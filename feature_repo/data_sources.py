"""Where the features come from: Parquet feature tables built by ``shoprec features build``.

The tables live under ``$SHOPREC_HOME/feast/offline`` (the same home the rest of
ShopRec uses), so this repo holds no path of its own. ``user_recent_items`` also
has a PushSource: the real-time path writes a user's new sequence straight to
the online store; its batch source is the offline table of sequence snapshots.
"""

import os
from pathlib import Path

from feast import FileSource, PushSource

from shoprec.config import REPO_ROOT

OFFLINE_DIR = Path(os.environ.get("SHOPREC_HOME", REPO_ROOT / ".shoprec")).resolve() / "feast" / "offline"


def _table(name: str) -> FileSource:
    return FileSource(name=name, path=str(OFFLINE_DIR / f"{name}.parquet"), timestamp_field="event_timestamp")


user_recent_items_table = _table("user_recent_items")
user_stats_table = _table("user_stats")
item_stats_table = _table("item_stats")
item_text_embedding_table = _table("item_text_embedding")

user_events_push = PushSource(name="user_events_push", batch_source=user_recent_items_table)
