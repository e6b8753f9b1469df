"""Unstructured magnitude pruning of the weight matrices, then a short fine-tune under the masks.

Per tensor, the ``amount`` smallest-|w| entries of the item table and of every
Transformer weight matrix are zeroed; the fine-tune re-applies the masks after each
step so pruned weights stay zero. Stored dense (fp32): pruning alone saves no disk
space, its report line shows what it costs in accuracy.
"""

from __future__ import annotations

import copy

import torch

from training.compression.finetune import train_steps
from training.compression.variant import TorchVariant
from training.data import SplitData


def prunable(name: str, tensor: torch.Tensor) -> bool:
    return tensor.dim() == 2 and (name == "items.ids.weight" or (name.startswith("encoder.h.") and name.endswith(".weight")))


def magnitude_masks(model: torch.nn.Module, amount: float) -> dict[str, torch.Tensor]:
    """name -> keep-mask (True = kept) zeroing the ``amount`` share of smallest |w| per tensor."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning amount must be in [0, 1), got {amount}")
    masks = {}
    for name, param in model.named_parameters():
        if prunable(name, param):
            drop = int(amount * param.numel())
            if drop == 0:
                masks[name] = torch.ones_like(param, dtype=torch.bool)
                continue
            threshold = param.detach().abs().flatten().kthvalue(drop).values
            masks[name] = param.detach().abs() > threshold
    return masks


def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def sparsity(model: torch.nn.Module) -> float:
    """Share of zeros over the prunable tensors."""
    tensors = [p for n, p in model.named_parameters() if prunable(n, p)]
    return float(sum((t == 0).sum().item() for t in tensors) / sum(t.numel() for t in tensors))


def magnitude_pruning(folded: torch.nn.Module, split: SplitData | None, amount: float = 0.5,
                      finetune_epochs: int = 1, lr: float = 2e-4, label_smoothing: float = 0.0,
                      method: str = "pruned", max_positions: int = 0) -> TorchVariant:
    """Variant: prune ``amount`` of each weight matrix, fine-tune ``finetune_epochs`` (0 = none) with the training loss."""
    model = copy.deepcopy(folded)
    masks = magnitude_masks(model, amount)
    apply_masks(model, masks)
    losses = []
    if finetune_epochs > 0:
        if split is None:
            raise ValueError("fine-tuning needs the training split")
        losses = train_steps(
            model, split, lambda i, p, t: model.loss(i, p, t, label_smoothing),
            epochs=finetune_epochs, lr=lr, after_step=lambda: apply_masks(model, masks), desc="prune fine-tune",
            max_positions=max_positions,
        )
    model.eval()
    return TorchVariant(
        method=method,
        model=model,
        codecs=lambda name, t: "fp32",
        parameters={"amount": amount, "finetune_epochs": finetune_epochs, "max_positions": max_positions, "lr": lr,
                    "sparsity": round(sparsity(model), 4), "finetune_loss": [round(x, 4) for x in losses]},
    )
