"""What the model and the service read. Sequences are lists, oldest first.

user_recent_items: the model's input (training reads it point in time, the service online).
item_stats: the service reads availability and price online for the items it is about to
recommend; its fallback rankings read the daily counts from the offline table.
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Bool, Float64, Int64, String, UnixTimestamp

from data_sources import item_stats_table, user_events_push
from entities import item, user

# ttl=0: a user's history and an item's description never expire on their own.
NO_TTL = timedelta(0)

user_recent_items = FeatureView(
    name="user_recent_items",
    entities=[user],
    ttl=NO_TTL,
    schema=[
        Field(name="item_ids", dtype=Array(String)),
        Field(name="event_types", dtype=Array(String)),
        Field(name="timestamps", dtype=Array(UnixTimestamp)),
    ],
    source=user_events_push,
    description="The user's last N events (N = features.sequence_length), oldest first: the model's input.",
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=NO_TTL,
    schema=[
        Field(name="popularity_1d", dtype=Int64),
        Field(name="popularity_7d", dtype=Int64),
        Field(name="popularity_30d", dtype=Int64),
        Field(name="add_to_cart_rate", dtype=Float64),
        Field(name="purchase_rate", dtype=Float64),
        Field(name="price", dtype=Float64),
        Field(name="available", dtype=Bool),
    ],
    source=item_stats_table,
    description="Popularity over 1/7/30 days, cart and purchase rates (30 days), catalog price and availability.",
)
