"""The item-embedding space of a variant: what /similar_items needs beside the scorer.

Every variant keeps, in ``item_space.safetensors``:

- the parent's text projection (``LayerNorm(Linear(text))``), so an item with text but no
  interactions can still be placed among the catalog, plus ``to_variant``, the
  least-squares map from the parent's (folded) table to the variant's own table: a
  pruned or distilled table is not the parent's space (a student's is not even its size);
- ``item_table`` for variants whose scorer hides its table (ONNX): the folded table,
  stored with the variant's table codec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from training.artifact.codec import read_weights, write_weights

ITEM_SPACE_FILE = "item_space.safetensors"
TABLE = "item_table"
PROJECTION_KEYS = ("text_proj.weight", "text_proj.bias", "text_norm.weight", "text_norm.bias")
TO_VARIANT = "to_variant"


@dataclass
class TextProjection:
    """Text embedding -> item representation: the parent's projection, then its map into the variant's space."""

    state: dict[str, torch.Tensor]  # PROJECTION_KEYS (+ TO_VARIANT)
    eps: float = 1e-5

    @classmethod
    def of_module(cls, model) -> "TextProjection | None":
        """The projection of a model with a text tower (None: no text tower)."""
        items = getattr(model, "items", None)
        if items is None or not getattr(items, "text_dim", 0):
            return None
        state = {f"{name}.{p}": getattr(getattr(items, name), p).detach().float().clone()
                 for name in ("text_proj", "text_norm") for p in ("weight", "bias")}
        return cls(state, items.text_norm.eps)

    @property
    def text_dim(self) -> int:
        return int(self.state["text_proj.weight"].shape[1])

    def mapped_to(self, reference_table: torch.Tensor, variant_table: torch.Tensor) -> "TextProjection":
        """This projection followed by the least-squares map from ``reference_table`` rows (the space
        this projection lands in) to ``variant_table`` rows; a map it already has comes first."""
        step = torch.linalg.lstsq(reference_table.double(), variant_table.double()).solution.float()
        to_variant = self.state[TO_VARIANT] @ step if TO_VARIANT in self.state else step
        return TextProjection({**self.state, TO_VARIANT: to_variant}, self.eps)

    def __call__(self, text_embedding) -> np.ndarray:
        vector = np.asarray(text_embedding, dtype=np.float32)
        if vector.ndim not in (1, 2) or vector.shape[-1] != self.text_dim:
            raise ValueError(f"expected text embeddings of dimension {self.text_dim}, got shape {vector.shape}")
        s = self.state
        with torch.inference_mode():
            out = F.linear(torch.from_numpy(vector), s["text_proj.weight"], s["text_proj.bias"])
            out = F.layer_norm(out, out.shape[-1:], s["text_norm.weight"], s["text_norm.bias"], self.eps)
            if TO_VARIANT in s:
                out = out @ s[TO_VARIANT]
        return out.numpy()


@dataclass
class ItemSpace:
    table: np.ndarray | None  # (n_vocab, d) with row 0 = padding; None: the scorer's own table
    projection: TextProjection | None


def write_item_space(path: Path, space: ItemSpace, table_codec: str = "fp32") -> None:
    """Write ``space``'s tensors (its LayerNorm eps goes in the manifest, ``text_norm_eps``)."""
    tensors = dict(space.projection.state) if space.projection else {}
    if space.table is not None:
        tensors[TABLE] = torch.as_tensor(space.table, dtype=torch.float32)
    write_weights(path, tensors, lambda name, t: table_codec if name == TABLE else "fp32")


def read_item_space(path: Path, eps: float = 1e-5) -> ItemSpace:
    """The item space written by ``write_item_space`` (raises CodecError when unreadable)."""
    state = read_weights(path)
    table = state.pop(TABLE, None)
    projection = TextProjection(state, eps) if all(key in state for key in PROJECTION_KEYS) else None
    return ItemSpace(None if table is None else table.numpy(), projection)
