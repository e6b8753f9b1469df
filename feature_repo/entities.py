"""The two things ShopRec keys features by: a shopper and a catalog item (ids are strings)."""

from feast import Entity, ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A shopper")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A catalog item")
