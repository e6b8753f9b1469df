"""The public RetailRocket ``events.csv``: timestamp (epoch ms), visitorid, event, itemid, transactionid.

Events ``view``/``addtocart``/``transaction`` become view/add_to_cart/purchase.
``transactionid`` only groups purchases into orders, which the canonical model does not keep.
"""

from __future__ import annotations

from shoprec.adapters import events
from shoprec.adapters.base import Batch

MAPPING = {"timestamp": "timestamp", "user_id": "visitorid", "event_type": "event", "item_id": "itemid"}
EVENT_VALUES = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
IGNORED = ("transactionid",)


def read(path, **_options) -> Batch:
    return events.read(
        path, mapping=MAPPING, timestamp_unit="ms", ignore=IGNORED, event_values=EVENT_VALUES, fmt="retailrocket"
    )
