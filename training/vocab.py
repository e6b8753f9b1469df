"""The item vocabulary and the padding of index sequences: what a loaded model needs to
score, kept apart from ``training.data`` so loading a model does not import the feature store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: a loaded model never needs pandas here
    import pandas as pd

PAD = 0


class ItemVocab:
    """item_id string <-> index; index 0 is padding, items are 1..n in insertion order."""

    def __init__(self, item_ids: list[str]):
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("item vocabulary has duplicate ids")
        self.item_ids = [str(i) for i in item_ids]
        self.index = {item: i + 1 for i, item in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids) + 1  # with padding

    @classmethod
    def from_events(cls, events: pd.DataFrame, items: pd.DataFrame | None = None) -> "ItemVocab":
        """Catalog items first (in catalog order), then items only seen in events."""
        ids = list(dict.fromkeys(items["item_id"].astype(str))) if items is not None and len(items) else []
        known = set(ids)
        ids += [i for i in dict.fromkeys(events["item_id"].astype(str)) if i not in known]
        return cls(ids)

    def grown(self, new_ids) -> "ItemVocab":
        """A new vocabulary: these indices unchanged, unseen ids appended."""
        return ItemVocab(self.item_ids + [i for i in dict.fromkeys(map(str, new_ids)) if i not in self.index])

    def encode(self, items) -> np.ndarray:
        """Indices of known items; unknown ids are dropped."""
        return np.array([self.index[i] for i in map(str, items) if i in self.index], dtype=np.int64)


def pad_left(seqs: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Most recent ``max_len`` items of each sequence, left-padded to the batch's longest.

    Returns (item indices (B, T), position ids (B, T)): the newest item always has
    position max_len - 1, so trimming the batch to T changes nothing.
    """
    width = max(1, min(max_len, max(len(s) for s in seqs)))
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        tail = seq[-width:]
        if len(tail):
            out[row, width - len(tail):] = tail
    positions = np.broadcast_to(np.arange(max_len - width, max_len), out.shape).copy()
    return out, positions
