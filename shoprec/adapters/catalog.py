"""A catalog on its own (price and availability updates): ``PATH`` is the items file(s).

``--map`` names item columns after source ones (``--map item_id=sku --map price=price_eur``);
in text files ``available`` is a word (true/false, 1/0, yes/no) and ``attributes`` ``a|b|c``.
"""

from __future__ import annotations

from shoprec.reading import EventSource, Part, ReadOptions, TableSource, expand


def open(path, options: ReadOptions, catalog=None, catalog_options=None) -> EventSource:
    return TableSource("catalog", [], Part(expand(path), options, role="catalog"))
