"""A deliberately bad model version, made through the normal artifact format: the experiments'
end-to-end test and benchmark put it against a trained one."""

from __future__ import annotations

import torch

from shoprec.config import Settings
from training.artifact import load_recommender
from training.compression.folding import fold_text_tower
from training.compression.variant import TorchVariant, save_variant


def shuffled_variant(settings: Settings, version: str, seed: int) -> str:
    """``version`` with its item table's rows permuted (``<version>-shuffled<seed>``): the same
    architecture and scores' spread, but each item answers with another item's vector, so what it
    recommends has nothing to do with the history's tastes."""
    parent = load_recommender(version, settings)
    folded = fold_text_tower(parent.torch_model)
    with torch.no_grad():
        table = folded.items.ids.weight
        order = 1 + torch.randperm(table.shape[0] - 1, generator=torch.Generator().manual_seed(seed))
        table[1:] = table[order].clone()
    variant = TorchVariant(f"shuffled{seed}", folded, lambda name, tensor: "fp32", {"seed": seed})
    return save_variant(variant, parent, settings.models_dir)
