"""Ranking metrics in the RecBole style: one small class per metric, each fed the
same ``rank`` array (0-based rank of the target, or -1 when it is not ranked) or the
top-k lists, and each returning one float averaged over users.
"""

from __future__ import annotations

import numpy as np


class HitRate:
    """HR@K (= Recall@K with one target): share of users whose target is in the top K."""

    def __init__(self, k: int):
        self.k, self.name = k, f"HR@{k}"

    def __call__(self, ranks: np.ndarray, **_) -> float:
        ranks = np.asarray(ranks)
        return float(np.mean((ranks >= 0) & (ranks < self.k))) if len(ranks) else 0.0


class NDCG:
    """NDCG@K with one relevant item: 1 / log2(rank + 2) when the target is in the top K."""

    def __init__(self, k: int):
        self.k, self.name = k, f"NDCG@{k}"

    def __call__(self, ranks: np.ndarray, **_) -> float:
        ranks = np.asarray(ranks)
        hit = (ranks >= 0) & (ranks < self.k)
        gains = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
        return float(np.mean(gains)) if len(ranks) else 0.0


class Coverage:
    """Share of the catalog that appears in at least one user's top K."""

    def __init__(self, k: int = 10):
        self.k, self.name = k, f"coverage@{k}"

    def __call__(self, ranks=None, *, top_items: np.ndarray, n_items: int, **_) -> float:
        return float(len(np.unique(top_items[:, : self.k])) / n_items) if n_items else 0.0


class PopularityBias:
    """Mean training popularity percentile (0 = rarest, 1 = most popular) of the top-K items."""

    def __init__(self, k: int = 10):
        self.k, self.name = k, f"popularity_bias@{k}"

    def __call__(self, ranks=None, *, top_items: np.ndarray, item_counts: np.ndarray, **_) -> float:
        order = np.argsort(np.argsort(item_counts, kind="stable"), kind="stable")
        percentile = order / max(len(item_counts) - 1, 1)
        return float(percentile[top_items[:, : self.k]].mean()) if top_items.size else 0.0


RANK_METRICS = [m(k) for k in (5, 10, 20) for m in (HitRate, NDCG)]
LIST_METRICS = [Coverage(10), PopularityBias(10)]


def target_ranks(scores, targets) -> np.ndarray:
    """0-based rank of each row's target among all items (ties count against it: strictly greater scores first).

    ``scores`` (B, n) and ``targets`` (B,) are numpy arrays or torch tensors."""
    target_scores = scores[np.arange(len(targets)), targets]
    ranks = (scores > target_scores[:, None]).sum(1)
    return ranks.numpy() if hasattr(ranks, "numpy") else ranks


def compute_metrics(ranks: np.ndarray, top_items: np.ndarray, item_counts: np.ndarray) -> dict[str, float]:
    """All metrics of the protocol from target ranks and top-k item indices."""
    report = {m.name: m(ranks) for m in RANK_METRICS}
    for m in LIST_METRICS:
        report[m.name] = m(top_items=top_items, n_items=len(item_counts), item_counts=item_counts)
    report["users"] = int(len(ranks))
    return report
