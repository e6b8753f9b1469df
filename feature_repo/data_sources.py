"""Where the features come from: Parquet feature tables built by ``shoprec features build``.

The tables live under ``$SHOPREC_HOME/feast/offline`` (the home of the settings,
``shoprec.config.load_settings``), so this repo holds no path of its own; their source type follows ``offline_store.engine``
(a FileSource, or a SparkSource for Spark: ``shoprec.features.offline_engine``). ``user_recent_items``
also has a PushSource: the real-time path writes a user's new sequence straight to the
online store; its batch source is the offline table of sequence snapshots.
"""

from feast import PushSource

from shoprec.config import load_settings
from shoprec.features.offline_engine import table_source
from shoprec.features.tables import table_path

SETTINGS = load_settings()


def _table(name: str):
    return table_source(SETTINGS, name, table_path(SETTINGS, name))


user_recent_items_table = _table("user_recent_items")
item_stats_table = _table("item_stats")

user_events_push = PushSource(name="user_events_push", batch_source=user_recent_items_table)
