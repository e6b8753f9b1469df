"""The evaluation protocol: full ranking over all items, history items excluded.

Scores every item for each evaluation input, masks the items of the input history
(and padding), ranks the target, and reports HR/NDCG@5/10/20 plus coverage and
popularity bias of the top-10. Baselines are scored by the same code.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from shoprec.memory import release_freed_memory
from training.data import PAD, EvalSet, SplitData, item_counts, pad_left
from training.metrics import compute_metrics, target_ranks

Scorer = Callable[[list[np.ndarray]], np.ndarray]  # histories -> (B, n_vocab) scores
TOP_K = 20
# scores held at once (rows x catalog): 1,024 rows of a 100,000-item catalog would be 400 MB per copy, and the
# chunk is copied three times; 2^24 floats (64 MB) keep 167 rows there and leave smaller catalogs' chunks as asked
MAX_SCORES_PER_CHUNK = 1 << 24


def model_scorer(model, device: str = "cpu") -> Scorer:
    """Wrap a sequence model as a Scorer (eval mode, no gradients)."""

    def score(histories: list[np.ndarray]) -> np.ndarray:
        items, positions = pad_left(histories, model.max_len)
        with torch.inference_mode():
            out = model.score_last(torch.from_numpy(items).to(device), torch.from_numpy(positions).to(device))
        return out.float().cpu().numpy()

    return score


def evaluate_scorer(score: Scorer, evalset: EvalSet, counts: np.ndarray, batch_size: int = 1024) -> dict:
    """Metrics of one scorer on one evaluation set (``counts``: training interactions per index)."""
    if len(evalset) == 0:
        raise ValueError("the evaluation set is empty: no user has an item to predict")
    batch_size = max(1, min(batch_size, MAX_SCORES_PER_CHUNK // max(len(counts), 1)))
    ranks, tops = [], []
    for start in range(0, len(evalset), batch_size):
        inputs = evalset.inputs[start : start + batch_size]
        # torch ops run on every core; the masking, ranking and top-k were numpy loops before (8 s per Beauty pass)
        scores = torch.from_numpy(np.array(score(inputs), dtype=np.float32, copy=True))
        rows = np.repeat(np.arange(len(inputs)), [len(h) for h in inputs])
        scores[torch.from_numpy(rows), torch.from_numpy(np.concatenate(inputs).astype(np.int64))] = -torch.inf
        scores[:, PAD] = -torch.inf
        targets = torch.from_numpy(np.asarray(evalset.targets[start : start + batch_size], dtype=np.int64))
        ranks.append(target_ranks(scores, targets))
        k = min(TOP_K, scores.shape[1] - 1)
        tops.append((torch.topk(scores, k, dim=1).indices - 1).numpy())  # vocab index -> catalog column
        del scores
        release_freed_memory()  # else 12 GB resident for 110,000 users x 100,000 items (shoprec.memory)
    return compute_metrics(np.concatenate(ranks), np.concatenate(tops), counts[1:])


def evaluate_all(scorers: dict[str, Scorer], split: SplitData, n_vocab: int, which: str = "test", batch_size: int = 1024) -> dict[str, dict]:
    """{name: metrics} for every scorer on the split's ``test`` or ``valid`` set."""
    evalset = split.test if which == "test" else split.valid
    if evalset is None:
        raise ValueError(f"protocol {split.protocol!r} has no {which} set")
    counts = item_counts(split.train, n_vocab)
    return {name: evaluate_scorer(fn, evalset, counts, batch_size) for name, fn in scorers.items()}
