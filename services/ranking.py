"""What may be recommended, in which order, and why - pure NumPy, no model and no store.

Business rules from configuration (``settings.serving``) over a score vector of the
model's vocabulary: excluded items (purchased, or everything seen), unavailable items,
an optional cap per category. The reason names the history item that contributed
most to a pick: the one whose item representation (the served model's item
embedding) is closest to it; ties go to the most recent event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PURCHASE = "purchase"
PHRASES = {
    "view": "because you viewed {title}",
    "add_to_cart": "because you added {title} to your cart",
    "purchase": "because you bought {title}",
}
TRENDING = "trending now"
POPULAR = "popular in the shop"


@dataclass(frozen=True)
class Rules:
    exclude: str  # "seen" | "purchased" | "none" (ServingSettings.exclude)
    hide_unavailable: bool
    max_per_category: int  # 0 = no cap


def excluded_items(history: list[tuple[str, str]], exclude: str, exclude_seen: bool) -> set[str]:
    """Items of the (item_id, event_type) history that must not be recommended back.

    ``exclude`` is the shop's rule; a request with ``exclude_seen=false`` may show
    seen items again, but never purchased ones when the shop excludes purchases.
    """
    if exclude == "none":
        return set()
    if exclude == "seen" and exclude_seen:
        return {item for item, _ in history}
    return {item for item, event_type in history if event_type == PURCHASE}


def best_first(scores: np.ndarray, banned: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` best scores that are not ``banned``, best first (equal scores by index,
    also at the cut-off)."""
    n_banned = int(np.count_nonzero(banned))
    count = min(count, len(scores) - n_banned)
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    candidates = _top_candidates(scores, count + n_banned)
    candidates = candidates[~banned[candidates]]
    return candidates[np.lexsort((candidates, -scores[candidates]))][:count]


def _top_candidates(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of a small superset of the ``count`` best scores (every score tied with them included).

    The ``count``-th largest of the maxima of ``8 * count`` blocks is a lower bound on the
    ``count``-th largest score, so everything at or above it holds the top. Two passes over
    the scores and no copy: 0.05 ms of CPU for 100,000 scores against 0.18 ms for a masked copy
    and ``argpartition``, which was ~40% of an in-process /recommend answer's CPU at that size."""
    blocks = 8 * count
    if len(scores) < 4 * blocks:
        return np.arange(len(scores))
    width = len(scores) // blocks
    maxima = np.asarray(scores[: blocks * width]).reshape(blocks, width).max(axis=1)
    return np.flatnonzero(scores >= np.partition(maxima, blocks - count)[blocks - count])


def walk(order: np.ndarray, k: int, skip: Callable[[int], bool] = lambda i: False,
         categories: np.ndarray | None = None, max_per_category: int = 0) -> tuple[list[int], int]:
    """Pick up to ``k`` items from ``order`` (best first): not ``skip``-ped, at most
    ``max_per_category`` per category (items without a category, None, are not capped).

    Returns (picks, how many items of ``order`` were looked at). The walk is greedy in
    order, so picks made within a prefix of the full ranking are the full ranking's picks."""
    picked: list[int] = []
    per_category: Counter = Counter()
    looked = 0
    for idx in order.tolist():
        looked += 1
        if skip(idx):
            continue
        if max_per_category and categories is not None and categories[idx] is not None:
            if per_category[categories[idx]] >= max_per_category:
                continue
            per_category[categories[idx]] += 1
        picked.append(idx)
        if len(picked) == k:
            break
    return picked, looked


def search_depth(k: int, max_per_category: int) -> int:
    """How many best-first candidates a walk starts with: enough for a category cap to skip some."""
    return k if not max_per_category else k * 4 + 16


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def explain(
    picks: list[int],
    history: list[tuple[int, str]],
    unit_embeddings: np.ndarray,
    title_of: Callable[[int], str],
) -> list[str]:
    """One reason per picked vocabulary index; ``history`` is (index, event_type), oldest first."""
    if not history:
        return [TRENDING] * len(picks)
    hist_idx = np.array([i for i, _ in history][::-1])  # newest first, so argmax prefers recent
    hist_types = [t for _, t in history][::-1]
    best = (unit_embeddings[picks] @ unit_embeddings[hist_idx].T).argmax(axis=1)
    return [PHRASES.get(hist_types[b], PHRASES["view"]).format(title=title_of(int(hist_idx[b]))) for b in best]
