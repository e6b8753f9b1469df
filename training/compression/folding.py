"""Fold the frozen text tower into the item table: the serving form every variant starts from.

SASRec's item table is ``ids + LayerNorm(Linear(text))`` over a frozen MiniLM matrix
(n_items x 384). At inference that sum is a constant, yet the trained model stores the
384-d matrix and recomputes the projection on every call. Folding stores the (n_items x
hidden) result as the ID table of an ID-only SASRec: exact (same scores), far smaller,
and no per-request projection. The padding row stays zero because the model masks it.
"""

from __future__ import annotations

import torch

from training.models import build_model


def folded_config(config: dict) -> dict:
    return {**config, "text_dim": 0}


def fold_text_tower(model) -> torch.nn.Module:
    """An ID-only SASRec whose scores equal ``model``'s (eval mode)."""
    with torch.no_grad():
        table = model.items.table().detach().clone()
    folded = build_model(folded_config(model.config))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("items.")}
    state["items.ids.weight"] = table
    folded.load_state_dict(state, strict=True)
    return folded.eval()
