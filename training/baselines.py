"""Non-neural baselines scored by the same protocol: popularity and a first-order Markov chain."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from training.data import item_counts


def popularity_scorer(train: list[np.ndarray], n_vocab: int):
    """Every user gets the catalog ranked by training interaction counts."""
    counts = item_counts(train, n_vocab).astype(np.float32)

    def score(histories: list[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(counts, (len(histories), n_vocab))

    return score


def markov_scorer(train: list[np.ndarray], n_vocab: int):
    """P(next | last item) from training transitions; popularity breaks ties and covers unseen last items."""
    src = np.concatenate([s[:-1] for s in train if len(s) > 1] or [np.zeros(0, np.int64)])
    dst = np.concatenate([s[1:] for s in train if len(s) > 1] or [np.zeros(0, np.int64)])
    transitions = sparse.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(n_vocab, n_vocab))
    counts = item_counts(train, n_vocab).astype(np.float32)
    tie_break = counts / (counts.max() + 1.0) * 1e-3

    def score(histories: list[np.ndarray]) -> np.ndarray:
        last = np.array([h[-1] if len(h) else 0 for h in histories])
        return np.asarray(transitions[last].todense(), dtype=np.float32) + tie_break

    return score


def baseline_scorers(train: list[np.ndarray], n_vocab: int) -> dict:
    return {"popularity": popularity_scorer(train, n_vocab), "markov": markov_scorer(train, n_vocab)}
