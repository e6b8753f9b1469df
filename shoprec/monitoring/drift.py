"""Input drift: how far today's event stream moved from a reference window.

Distributions are ``pandas.Series`` of shares indexed by category (event type, item id).
Two distances, both 0 for identical distributions:

- ``js_divergence``: Jensen-Shannon divergence in bits, bounded by 1 (disjoint supports),
  defined even where one side has a zero share.
- ``psi``: the population stability index, sum of (c - r) * ln(c / r); unbounded, so shares
  are floored at ``PSI_FLOOR`` (a category one side lacks counts as 1 in 10,000, the usual
  convention). Rules of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PSI_FLOOR = 1e-4
OTHER = "(other)"  # the bin of every item outside the reference's top N


def shares(values: pd.Series) -> pd.Series:
    """Each distinct value's share of ``values``, largest first (ties by value), as float."""
    counts = values.astype("string").value_counts(sort=False)
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")
    total = counts.sum()
    return (counts / total).astype(float) if total else counts.astype(float)


def _aligned(p: pd.Series, q: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    index = p.index.union(q.index)
    return p.reindex(index, fill_value=0.0).to_numpy(float), q.reindex(index, fill_value=0.0).to_numpy(float)


def _kl_bits(p: np.ndarray, m: np.ndarray) -> float:
    present = p > 0  # 0 * log 0 = 0; m > 0 wherever p > 0
    return float(np.sum(p[present] * np.log2(p[present] / m[present])))


def js_divergence(p: pd.Series, q: pd.Series) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two share distributions."""
    a, b = _aligned(p, q)
    m = (a + b) / 2
    return max(0.0, 0.5 * _kl_bits(a, m) + 0.5 * _kl_bits(b, m))


def psi(reference: pd.Series, current: pd.Series, floor: float = PSI_FLOOR) -> float:
    """Population stability index of ``current`` against ``reference`` (shares floored at ``floor``)."""
    r, c = _aligned(reference, current)
    r, c = np.maximum(r, floor), np.maximum(c, floor)
    return float(np.sum((c - r) * np.log(c / r)))


def event_mix(events: pd.DataFrame) -> pd.Series:
    """Shares of the event types."""
    return shares(events["event_type"])


def item_bins(reference: pd.DataFrame, current: pd.DataFrame, top_n: int) -> tuple[pd.Series, pd.Series]:
    """The item distributions of both windows over the reference's ``top_n`` items, every other
    item (also one new today) in the one bin ``OTHER``; the reference's order."""
    top = shares(reference["item_id"]).index[:top_n]

    def binned(events: pd.DataFrame) -> pd.Series:
        items = events["item_id"].astype("string")
        return shares(items.where(items.isin(top), OTHER))

    order = [*top, OTHER]
    ref, cur = binned(reference), binned(current)
    return ref.reindex(order, fill_value=0.0), cur.reindex(order, fill_value=0.0)


def unknown_share(values: pd.Series, known) -> float | None:
    """The share of ``values`` not in ``known`` (None for no values)."""
    if not len(values):
        return None
    return float((~values.astype("string").isin(known)).mean())
