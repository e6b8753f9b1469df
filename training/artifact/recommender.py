"""``Recommender``: the one inference contract over every model format.

Scores are float32; ``score`` columns follow ``item_ids`` (index order), ``score_indices``
columns the vocabulary (column 0 = padding). Every format answers every edge case the
same way: an empty history or one whose items are all unknown is a ValueError, unknown
items inside a history are ignored, only the most recent ``max_len`` items count,
``k <= 0`` is a ValueError and a ``k`` beyond the catalog returns every item.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from training.artifact.item_space import ItemSpace, TextProjection
from training.vocab import ItemVocab, pad_left


class Recommender:
    """Inference over one model version. ``net.score_last(items, positions)`` gives (B, n_vocab)
    scores; ``space`` supplies the item table when the net hides it (ONNX) and the text
    projection of new items."""

    def __init__(self, version: str, item_ids: list[str], metadata: dict, net, max_len: int,
                 space: ItemSpace | None = None, path: Path | None = None):
        self.version, self.metadata, self.max_len, self.path = version, metadata, max_len, path
        self.vocab = ItemVocab(item_ids)
        self.item_ids = self.vocab.item_ids
        self.net = net
        self.space = space or ItemSpace(None, TextProjection.of_module(net))

    @property
    def torch_model(self) -> torch.nn.Module | None:
        """The PyTorch module that scores (None for ONNX)."""
        return self.net if isinstance(self.net, torch.nn.Module) else None

    def encode(self, history: list[str]) -> np.ndarray:
        """Vocabulary indices of the known items of ``history`` (the most recent ``max_len``)."""
        if len(history) == 0:
            raise ValueError("empty history: a recommendation needs at least one item")
        known = self.vocab.encode(history)
        if len(known) == 0:
            raise ValueError(f"none of the {len(history)} history items is known to model {self.version}")
        return known[-self.max_len:]

    def score_indices(self, histories: list[np.ndarray]) -> np.ndarray:
        """(B, n_vocab) scores from vocabulary-index histories (the evaluation protocol's Scorer)."""
        if len(histories) == 0:
            return np.zeros((0, len(self.vocab)), dtype=np.float32)
        for history in histories:
            if len(history) == 0:
                raise ValueError("empty history: a recommendation needs at least one item")
            if int(np.min(history)) < 1 or int(np.max(history)) >= len(self.vocab):
                raise ValueError(f"history indices must be in 1..{len(self.vocab) - 1} for model {self.version}")
        items, positions = pad_left(list(histories), self.max_len)
        with torch.inference_mode():
            out = self.net.score_last(torch.from_numpy(items), torch.from_numpy(positions))
        if isinstance(out, torch.Tensor):
            out = out.float().numpy()
        return np.asarray(out, dtype=np.float32)

    def score(self, histories: list[list[str]]) -> np.ndarray:
        """(batch, n_items) scores, columns in ``item_ids`` order."""
        if len(histories) == 0:
            return np.zeros((0, len(self.item_ids)), dtype=np.float32)
        return self.score_indices([self.encode(h) for h in histories])[:, 1:]

    def recommend(self, history: list[str], k: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """Top-k (item_id, score), best first, leaving out ``exclude`` (unknown ids there are ignored)."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        scores = self.score([history])[0].copy()
        scores[self.vocab.encode(list(exclude)) - 1] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.item_ids[i], float(scores[i])) for i in top]

    def item_embeddings(self) -> np.ndarray:
        """(n_items, d) item representations in ``item_ids`` order (the space /similar_items searches)."""
        if self.space.table is not None:
            return np.asarray(self.space.table[1:], dtype=np.float32)
        with torch.inference_mode():
            return self.torch_model.items.table()[1:].float().numpy()

    def embed_new_item_text(self, text_embedding: np.ndarray) -> np.ndarray:
        """An item with text but no interactions, in ``item_embeddings``' space:
        (text_dim,) -> (d,), (n, text_dim) -> (n, d)."""
        if self.space.projection is None:
            raise ValueError(f"model {self.version} was trained without item text")
        return self.space.projection(text_embedding)

