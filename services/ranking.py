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


def top_k(
    scores: np.ndarray,
    k: int,
    *,
    banned: np.ndarray,
    categories: np.ndarray | None = None,
    max_per_category: int = 0,
) -> list[int]:
    """Indices of the best ``k`` allowed scores, best first, honouring the category cap.

    ``banned`` is a boolean mask (True = never recommend). Items without a category
    (None) are not capped.
    """
    masked = np.where(banned, -np.inf, scores.astype(np.float64, copy=False))
    allowed = int((~banned).sum())
    if allowed == 0:
        return []
    # enough candidates for the cap to skip some; widen the search if not
    want = min(allowed, k if not max_per_category else k * 4 + 16)
    while True:
        part = np.argpartition(-masked, want - 1)[:want] if want < len(masked) else np.arange(len(masked))
        order = part[np.argsort(-masked[part], kind="stable")]
        picked = _apply_cap(order, masked, k, categories, max_per_category)
        if len(picked) == k or want >= allowed:
            return picked
        want = min(allowed, want * 4)


def _apply_cap(order, masked, k, categories, max_per_category) -> list[int]:
    picked: list[int] = []
    per_category: Counter = Counter()
    for idx in order:
        if masked[idx] == -np.inf:
            break
        if max_per_category and categories is not None and categories[idx] is not None:
            if per_category[categories[idx]] >= max_per_category:
                continue
            per_category[categories[idx]] += 1
        picked.append(int(idx))
        if len(picked) == k:
            break
    return picked


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
