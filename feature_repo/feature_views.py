"""What the model and the service read. Sequences are lists, oldest first."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Float64, Int64, String, UnixTimestamp, Bool

from data_sources import (
    item_stats_table,
    item_text_embedding_table,
    user_events_push,
    user_stats_table,
)
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

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=NO_TTL,
    schema=[
        Field(name="n_events", dtype=Int64),
        Field(name="n_view", dtype=Int64),
        Field(name="n_add_to_cart", dtype=Int64),
        Field(name="n_purchase", dtype=Int64),
        Field(name="last_activity", dtype=UnixTimestamp),
        Field(name="preferred_categories", dtype=Array(String)),
    ],
    source=user_stats_table,
    description="Counts per event type, last activity and top categories, as of each active day.",
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

item_text_embedding = FeatureView(
    name="item_text_embedding",
    entities=[item],
    ttl=NO_TTL,
    schema=[Field(name="embedding", dtype=Array(Float32))],
    source=item_text_embedding_table,
    description="384-d MiniLM embedding of title | category | brand (L2-normalised).",
)
