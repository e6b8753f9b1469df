"""A short training loop shared by pruning (fine-tune under masks) and distillation."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from training.data import SplitData
from training.trainer import batch_tensors, length_bucketed_batches, training_examples

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # items, positions, targets -> loss


def train_steps(model: torch.nn.Module, split: SplitData, loss_fn: LossFn, *, epochs: int, lr: float,
                batch_size: int = 128, seed: int = 0, after_step: Callable[[], None] | None = None,
                desc: str = "fine-tune", max_positions: int = 0) -> list[float]:
    """``epochs`` passes over every training prefix, ending early once ``max_positions`` target
    positions were trained on (0: no bound); returns the mean loss per epoch (the last one over the
    batches it ran). Leaves ``model`` in eval mode."""
    inputs, targets, lengths = training_examples(split.train, model.max_len)
    if len(inputs) == 0:
        raise ValueError("no training sequences with at least two items")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = np.random.default_rng(seed)
    losses, positions = [], 0
    for epoch in range(epochs):
        model.train()
        # plain random batches: these losses average per batch, which bucketing would skew
        total, steps = 0.0, 0
        for rows in tqdm(length_bucketed_batches(lengths, batch_size, generator, bucket_batches=1),
                         desc=f"{desc} {epoch + 1}/{epochs}", leave=False):
            batch = batch_tensors(rows, inputs, targets, lengths, model.max_len)
            loss = loss_fn(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total, steps = total + loss.item(), steps + 1
            positions += int((batch[2] != 0).sum())
            if max_positions and positions >= max_positions:
                break
        losses.append(total / max(steps, 1))
        if max_positions and positions >= max_positions:
            break
    model.eval()
    return losses
