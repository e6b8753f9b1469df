"""The training loop (``Trainer``): AdamW with linear warm-up, cross-entropy over the full
catalog or over sampled negatives (``choose_loss``), early stopping on validation NDCG@10,
a budget of training positions for large shops, deterministic seeds, checkpoints with resume,
CPU by default and GPU with bf16 autocast when present; data-parallel in several processes
under torchrun (``training.distributed``: each rank computes its shard of every batch).
"""

from __future__ import annotations

import copy
import ctypes
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from shoprec.config import Hyperparameters
from training.data import SplitData, item_counts
from training.distributed import EpochDecision, ReplicaRun, World, parameters_sha256
from training.evaluate import evaluate_scorer, model_scorer
from training.models.sasrec import SampledSoftmax

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


@dataclass(frozen=True)
class LossChoice:
    """Which loss a run trains with, and why (recorded in the version's metadata as ``loss``)."""

    loss: str  # "full" | "sampled"
    requested: str  # the ``loss`` hyperparameter: auto | full | sampled
    n_items: int
    threshold: int  # full_softmax_max_items: auto picks full softmax up to this many items
    num_negatives: int  # shared negatives per batch (0: full softmax)
    negatives: str  # what a target is scored against

    def to_dict(self) -> dict:
        return asdict(self)


def choose_loss(hyperparameters: Hyperparameters, n_items: int) -> LossChoice:
    """Full softmax up to ``full_softmax_max_items`` items (or when asked), sampled softmax above.

    Full softmax is the better loss (SASRec with full cross-entropy: Klenitskiy & Vasilev,
    RecSys 2023) while its (positions x catalog) logit matrix is affordable; its cost per
    position grows with the catalog, the sampled one's does not. CPU seconds per step, one core,
    hidden 64, batch 128 x 20 positions (benchmarks/loss_choice.py): full 0.12 / 0.38 / 0.87 /
    3.7 at 5,000 / 20,000 / 50,000 / 100,000 items, sampled (2048 negatives) 0.084 - 0.095 at
    all four. The default threshold, 20,000, keeps Beauty (12,101 items) and the 1 M-event shop
    (20,000) on the full softmax, at most ~5x a sampled step.
    """
    hp = hyperparameters
    loss = hp.loss if hp.loss != "auto" else ("full" if n_items <= hp.full_softmax_max_items else "sampled")
    if loss == "full":
        return LossChoice("full", hp.loss, n_items, hp.full_softmax_max_items, 0, f"all {n_items} items")
    popular = hp.num_negatives // 2
    return LossChoice("sampled", hp.loss, n_items, hp.full_softmax_max_items, hp.num_negatives,
                      f"{hp.num_negatives} shared negatives per batch ({popular} by popularity, "
                      f"{hp.num_negatives - popular} uniform), logQ-corrected")


@dataclass
class TrainResult:
    best_epoch: int = 0
    best_valid: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, seconds, valid NDCG@10/HR@10
    epochs: int = 0
    train_seconds: float = 0.0
    device: str = "cpu"
    steps: int = 0  # optimizer steps taken
    positions: int = 0  # target positions trained on (what max_train_positions bounds)
    loss: dict = field(default_factory=dict)  # LossChoice.to_dict()
    replicas: list[ReplicaRun] = field(default_factory=list)  # per rank, when trained in several processes
    resumed_after: int = 0  # the epoch of the checkpoint this run resumed (0: started afresh)

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds / max(self.epochs, 1)


def training_examples(train: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every sequence -> (input, next-item target) pairs at every position, most recent
    ``max_len``, left-padded to max_len. Returns inputs, targets, lengths (int32: half the
    memory of a 500,000-user shop's arrays; ``batch_tensors`` widens each batch)."""
    inputs = np.zeros((len(train), max_len), dtype=np.int32)
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
    items = torch.from_numpy(inputs[rows, -width:]).long().to(device)
    positions = torch.arange(max_len - width, max_len, device=device).expand_as(items)
    return items, positions, torch.from_numpy(targets[rows, -width:]).long().to(device)


class _BatchLoss(torch.nn.Module):
    """The model's summed loss as ``forward``: what DistributedDataParallel wraps (it reduces the
    gradients of what its forward computed)."""

    def __init__(self, model: torch.nn.Module, label_smoothing: float, sampled: SampledSoftmax | None):
        super().__init__()
        self.model, self.label_smoothing, self.sampled = model, label_smoothing, sampled

    def forward(self, items: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model.loss(items, positions, targets, self.label_smoothing, self.sampled, reduction="sum")


@dataclass
class _RunState:
    """What an epoch changes and a checkpoint keeps: optimizer, schedule, shuffling, progress."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: np.random.Generator
    result: TrainResult
    best_state: dict | None = None
    stale: int = 0  # evaluations since the best validation NDCG@10
    shard_positions: int = 0  # positions this process computed the loss of since it started (all, in one process)

    @property
    def steps(self) -> int:
        return self.scheduler.last_epoch  # the schedule steps once per optimizer step (and resumes with it)


class Trainer:
    """Trains ``model`` on ``split.train`` with early stopping on ``split.valid`` NDCG@10, with the
    loss ``choose_loss`` picks for the catalog's size (``loss_choice``), for at most ``max_epochs``
    epochs and ``max_train_positions`` target positions (the budget that ends a large shop's run;
    its last, partial epoch is validated too).

    With ``checkpoint_dir``, a checkpoint is written after every epoch and an existing one
    is resumed (the caller keys the folder by data and hyperparameters: a checkpoint of
    another run must not be resumed).
    """

    def __init__(self, model: torch.nn.Module, split: SplitData, hyperparameters: Hyperparameters, *,
                 device: str = "cpu", checkpoint_dir: Path | None = None, progress: bool = True):
        self.model, self.split, self.hyperparameters = model, split, hyperparameters
        self.device, self.progress, self.world = device, progress, World.current()
        self.checkpoint_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
        self.inputs, self.targets, self.lengths = training_examples(split.train, model.max_len)
        if len(self.inputs) == 0:
            raise ValueError("no training sequences with at least two items")
        self.counts = item_counts(split.train, model.config["n_vocab"])
        self.loss_choice = choose_loss(hyperparameters, model.config["n_vocab"] - 1)
        self.sampled = self._sampled_softmax() if self.loss_choice.loss == "sampled" else None
        # batches hold rows of similar length, so a per-batch mean would weigh a short user's
        # positions ~10x more than a long user's: sum, and divide by a batch's expected count
        self.positions_per_batch = hyperparameters.batch_size * float(self.lengths.mean())
        self.loss_module = _BatchLoss(model, hyperparameters.label_smoothing, self.sampled)

    def fit(self, epochs: int | None = None, lr: float | None = None) -> TrainResult:
        """Train up to ``epochs`` (default ``max_epochs``) at peak ``lr`` (default ``lr``);
        the model ends with its best weights, in eval mode."""
        seed_everything(self.hyperparameters.seed)
        self.model.to(self.device)
        run = self._start(lr or self.hyperparameters.lr)
        self._resume(run)
        self._replicate()
        max_epochs = epochs or self.hyperparameters.max_epochs
        for epoch in range(run.result.epochs + 1, max_epochs + 1):
            if run.stale >= self.hyperparameters.patience or self._out_of_budget(run):
                break
            started = time.perf_counter()
            record = self._train_epoch(epoch, run)
            run.result.train_seconds += time.perf_counter() - started
            run.result.epochs, run.result.steps = epoch, run.steps
            if epoch % self.hyperparameters.eval_every == 0 or epoch == max_epochs or self._out_of_budget(run):
                record.update(self._validate(epoch, run))
            record["seconds"] = time.perf_counter() - started
            run.result.history.append(record)
            self._log(record)
            self._write_checkpoint(run)
        if run.best_state is not None:
            self.model.load_state_dict(run.best_state)
        self.model.eval()
        if self.world.distributed:
            run.result.replicas = self.world.gather(self._replica_run(run))
        return run.result

    def _replicate(self) -> None:
        """In several processes: wrap the loss in DistributedDataParallel (which starts every rank from
        rank 0's weights) and give each rank its own dropout and negative-sampling stream."""
        from torch.nn.parallel import DistributedDataParallel

        if not self.world.distributed or isinstance(self.loss_module, DistributedDataParallel):  # a second fit()
            return
        if self.world.rank:
            torch.manual_seed(self.hyperparameters.seed + self.world.rank)
        device_ids = [self.world.local_rank] if self.device.startswith("cuda") else None
        # static_graph: GPT-2's token table (vocab 1) gets no gradient, the same each step;
        # no buffer sync per forward: the only buffer, the item text table, never changes
        self.loss_module = DistributedDataParallel(self.loss_module, device_ids=device_ids, static_graph=True,
                                                  forward_sync_buffers=False)

    def _replica_run(self, run: _RunState) -> ReplicaRun:
        r = run.result
        return ReplicaRun(self.world.rank, r.epochs, r.best_epoch, run.stale, run.shard_positions,
                          torch.get_num_threads(), parameters_sha256(self.model))

    def _start(self, lr: float) -> _RunState:
        """AdamW with a linear warm-up to ``lr`` over ``warmup_steps`` steps."""
        # fused: one kernel per tensor instead of a dozen passes; the 100,000-item table's update took a third of a step
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=self.hyperparameters.weight_decay,
                                      fused=True)
        warmup = max(1, self.hyperparameters.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        generator = np.random.default_rng(self.hyperparameters.seed)
        return _RunState(optimizer, scheduler, generator, TrainResult(device=self.device, loss=self.loss_choice.to_dict()))

    def _sampled_softmax(self) -> SampledSoftmax:
        counts = np.bincount(self.targets[self.targets > 0], minlength=self.model.config["n_vocab"]).astype(np.float64)
        return SampledSoftmax.mixed(torch.from_numpy(counts / counts.sum()).float(), self.hyperparameters.num_negatives)

    def _out_of_budget(self, run: _RunState) -> bool:
        return 0 < self.hyperparameters.max_train_positions <= run.result.positions

    def _resume(self, run: _RunState) -> None:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return
        state = torch.load(self.checkpoint_path, weights_only=False)  # our own file: it pickles TrainResult
        self.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.generator.bit_generator.state = state["generator"]
        run.result, run.best_state, run.stale = state["result"], state["best_state"], state["stale"]
        run.result.resumed_after = run.result.epochs
        torch.set_rng_state(state["torch_rng"])

    def _train_epoch(self, epoch: int, run: _RunState) -> dict:
        """One pass over every training prefix in length-bucketed batches (cut short by ``max_train_positions``);
        returns the epoch's record."""
        self.model.train()
        total, done, batches = 0.0, 0, length_bucketed_batches(self.lengths, self.hyperparameters.batch_size, run.generator)
        for rows in tqdm(batches, desc=f"epoch {epoch}", unit="batch", disable=not self.progress, leave=False):
            if self._out_of_budget(run):
                break
            loss = self._batch_loss(rows, run)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            total, done = total + loss.item(), done + 1
            run.result.positions += int(self.lengths[rows].sum())
        # the ranks' losses are shares of one batch's loss (see _batch_loss): their mean is the batch's
        total = self.world.sum(total, self.device) / self.world.size
        return {"epoch": epoch, "loss": total / max(done, 1), "steps": run.steps, "positions": run.result.positions}

    def _batch_loss(self, rows: np.ndarray, run: _RunState) -> torch.Tensor:
        """The loss of this process's shard of the batch ``rows``, scaled so that the gradients
        DistributedDataParallel averages over the ranks are the whole batch's gradient."""
        mine, weight = self.world.shard(rows), float(self.world.size)
        if len(mine) == 0:  # a last batch smaller than the ranks: still take part in the gradient reduction
            mine, weight = rows[:1], 0.0
        else:
            run.shard_positions += int(self.lengths[mine].sum())
        items, positions, targets = batch_tensors(mine, self.inputs, self.targets, self.lengths, self.model.max_len,
                                                  self.device)
        with self._autocast():
            loss = self.loss_module(items, positions, targets)
        return loss * weight / self.positions_per_batch  # one process: weight 1.0, exactly the plain loss

    def _autocast(self):
        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _validate(self, epoch: int, run: _RunState) -> dict:
        """Validation NDCG@10/HR@10 on rank 0, whose decision every rank follows: a new best keeps a
        copy of the weights, otherwise the run grows stale."""
        self.model.eval()
        decision = self.world.from_main(self._decide(run) if self.world.main else None)
        if decision.improved:
            run.result.best_epoch, run.result.best_valid = epoch, decision.valid
            run.best_state = copy.deepcopy(self.model.state_dict())
        run.stale = decision.stale
        return {"valid_NDCG@10": decision.valid["NDCG@10"], "valid_HR@10": decision.valid["HR@10"]}

    def _decide(self, run: _RunState) -> EpochDecision:
        valid = evaluate_scorer(model_scorer(self.model, self.device), self.split.valid, self.counts,
                                self.hyperparameters.eval_batch_size)
        improved = valid["NDCG@10"] > run.result.best_valid.get("NDCG@10", -1.0)
        return EpochDecision(improved, 0 if improved else run.stale + 1, valid)

    def _log(self, record: dict) -> None:
        if self.progress and self.world.main:
            tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                       file=sys.stderr)

    def _write_checkpoint(self, run: _RunState) -> None:
        """Everything ``_resume`` needs, written to a temp file and renamed (never a half-written checkpoint)."""
        if self.checkpoint_path is None or not self.world.main:
            return
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict(), "generator": run.generator.bit_generator.state,
                    "result": run.result, "best_state": run.best_state, "stale": run.stale,
                    "torch_rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, self.checkpoint_path)

