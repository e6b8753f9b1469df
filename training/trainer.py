"""The training loop: AdamW with linear warm-up, full-softmax CE, early stopping on
validation NDCG@10, deterministic seeds, checkpoints with resume, CPU by default and
GPU with bf16 autocast when present.
"""

from __future__ import annotations

import copy
import ctypes
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from training.data import PAD, SplitData, item_counts
from training.evaluate import evaluate_scorer, model_scorer

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_runtime_tuned = False


def tune_cpu_runtime(num_threads: int = 0) -> None:
    """Keep glibc from returning the big per-step softmax buffers to the OS (4x faster epochs
    on these machines, see STACK.md) and use every core (or ``num_threads``)."""
    global _runtime_tuned
    if not _runtime_tuned:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 29)
            libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        except OSError:  # not glibc: nothing to tune
            pass
        _runtime_tuned = True
    torch.set_num_threads(num_threads or os.cpu_count() or 1)


def pick_device(name: str = "auto") -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA GPU is available")
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    best_epoch: int = 0
    best_valid: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, seconds, valid NDCG@10/HR@10
    epochs: int = 0
    train_seconds: float = 0.0
    device: str = "cpu"

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds / max(self.epochs, 1)


def training_examples(train: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every sequence -> (input, next-item target) pairs at every position, most recent
    ``max_len``, left-padded to max_len. Returns inputs, targets, lengths."""
    inputs = np.zeros((len(train), max_len), dtype=np.int64)
    targets = np.zeros_like(inputs)
    lengths = np.zeros(len(train), dtype=np.int64)
    for row, seq in enumerate(train):
        tail = seq[-(max_len + 1):]
        n = len(tail) - 1
        if n > 0:
            inputs[row, max_len - n:] = tail[:-1]
            targets[row, max_len - n:] = tail[1:]
            lengths[row] = n
    keep = lengths > 0
    return inputs[keep], targets[keep], lengths[keep]


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, generator: np.random.Generator,
                            bucket_batches: int = 50) -> list[np.ndarray]:
    """Row indices per batch for one epoch: shuffled, then sorted by length within windows of
    ``bucket_batches`` batches, and the batches shuffled again.

    Most Beauty users have a handful of items but a batch is as wide as its longest row, so
    random batches pad ~6 real items to 50; bucketing keeps batches narrow (2x faster epochs)
    while every epoch still sees the rows in a new random grouping. ``bucket_batches=1``
    gives plain random batches.
    """
    order = generator.permutation(len(lengths))
    window = batch_size * bucket_batches
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        order[start : start + window] = chunk[np.argsort(lengths[chunk], kind="stable")]
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return [batches[i] for i in generator.permutation(len(batches))]


def batch_tensors(rows: np.ndarray, inputs: np.ndarray, targets: np.ndarray, lengths: np.ndarray, max_len: int,
                  device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(items, positions, targets) of ``rows``, cut to the longest row's width (left padding dropped)."""
    width = int(lengths[rows].max())
    items = torch.from_numpy(inputs[rows, -width:]).to(device)
    positions = torch.arange(max_len - width, max_len, device=device).expand_as(items)
    return items, positions, torch.from_numpy(targets[rows, -width:]).to(device)


def fit(model, split: SplitData, hp: dict, *, device: str = "cpu", checkpoint_dir: Path | None = None,
        epochs: int | None = None, lr: float | None = None, progress: bool = True) -> TrainResult:
    """Train ``model`` on ``split.train``; early stopping on ``split.valid`` NDCG@10; the model ends with its best weights.

    With ``checkpoint_dir``, a checkpoint is written after every epoch and an existing one is resumed.
    """
    seed_everything(hp["seed"])
    model.to(device)
    max_len = model.max_len
    inputs, targets, lengths = training_examples(split.train, max_len)
    if len(inputs) == 0:
        raise ValueError("no training sequences with at least two items")
    counts = item_counts(split.train, model.config["n_vocab"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr or hp["lr"], weight_decay=hp["weight_decay"])
    warmup = max(1, hp["warmup_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    max_epochs = epochs or hp["max_epochs"]
    generator = np.random.default_rng(hp["seed"])
    result, best_state, start_epoch, stale = TrainResult(device=device), None, 1, 0
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.bit_generator.state = state["generator"]
        result, best_state, stale = state["result"], state["best_state"], state["stale"]
        torch.set_rng_state(state["torch_rng"])
        start_epoch = result.epochs + 1
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    for epoch in range(start_epoch, max_epochs + 1):
        if stale >= hp["patience"]:
            break
        started = time.perf_counter()
        model.train()
        total, batches = 0.0, length_bucketed_batches(lengths, hp["batch_size"], generator)
        # batches hold rows of similar length, so a per-batch mean would weigh a short user's
        # positions ~10x more than a long user's: sum, and divide by a batch's expected count
        positions_per_batch = hp["batch_size"] * float(lengths.mean())
        for rows in tqdm(batches, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False):
            batch_items, positions, batch_targets = batch_tensors(rows, inputs, targets, lengths, max_len, device)
            with autocast:
                loss = model.loss(batch_items, positions, batch_targets, hp["label_smoothing"], hp.get("negatives", 0),
                                  reduction="sum") / positions_per_batch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        record = {"epoch": epoch, "loss": total / len(batches)}
        result.train_seconds += time.perf_counter() - started
        result.epochs = epoch
        if epoch % hp["eval_every"] == 0 or epoch == max_epochs:
            model.eval()
            valid = evaluate_scorer(model_scorer(model, device), split.valid, counts, hp["eval_batch_size"])
            record.update({"valid_NDCG@10": valid["NDCG@10"], "valid_HR@10": valid["HR@10"]})
            if valid["NDCG@10"] > result.best_valid.get("NDCG@10", -1.0):
                result.best_epoch, result.best_valid, stale = epoch, valid, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        record["seconds"] = time.perf_counter() - started
        result.history.append(record)
        if progress:
            tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), file=sys.stderr)
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "generator": generator.bit_generator.state, "result": result, "best_state": best_state,
                        "stale": stale, "torch_rng": torch.get_rng_state()}, ckpt.with_suffix(".tmp"))
            os.replace(ckpt.with_suffix(".tmp"), ckpt)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
