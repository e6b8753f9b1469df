"""Data-parallel training with ``torchrun`` and ``DistributedDataParallel``.

``launch`` runs ``training.distributed_worker`` in ``training.processes`` processes under
``torch.distributed.run`` (``--standalone``, or a fixed rendezvous port with
``training.master_port``); each process builds the same split and the same model, and
``training.trainer.Trainer`` shares every optimizer step among them: all processes draw the
same global batch (one shuffling generator, one seed) and each computes the loss of its
strided shard of the batch's rows, so a step is the step one process would take (the batch
size, learning rate, warm-up and position budget keep their meaning). ``DistributedDataParallel``
sums the gradients (gloo on CPU, NCCL on GPUs). Rank 0 alone validates, decides whether the
epoch is a new best and whether to stop (``EpochDecision``), and broadcasts it; it alone writes
checkpoints and the artifact. Every rank reports a ``ReplicaRun`` (its stop epoch and a checksum
of its final parameters), gathered into the version's metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from shoprec.config import REPO_ROOT, Settings, child_env
from shoprec.processes import stop_process_group

JOB_FILE, RESULT_FILE = "job.json", "result.json"


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> "World":
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), dist.get_node_local_rank(fallback_rank=0))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch: every ``size``-th, from ``rank`` (rows of a batch are
        length-sorted, so each shard is as wide as the batch)."""
        return rows[self.rank :: self.size]

    def threads(self, configured: int = 0) -> int:
        """Torch threads per process: ``configured``, else the cores shared evenly (0: all cores, one process)."""
        if configured or not self.distributed:
            return configured
        return max(1, (os.cpu_count() or 1) // self.size)

    def device(self, device: str) -> str:
        """``cuda`` becomes this process's own GPU (local rank); CPU stays CPU."""
        return f"cuda:{self.local_rank}" if self.distributed and device == "cuda" else device

    def sum(self, value: float, device: str = "cpu") -> float:
        """``value`` summed over the ranks (itself with one process)."""
        if not self.distributed:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return float(total.item())

    def from_main(self, value):
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others, which then find what it cached (item text
        embeddings): never two processes writing one cache file."""
        if self.distributed and not self.main:
            dist.barrier()
        yield
        if self.distributed and self.main:
            dist.barrier()

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        boxes = [None] * self.size
        dist.all_gather_object(boxes, value)
        return boxes


@dataclass(frozen=True)
class EpochDecision:
    """What rank 0 decided after validating an epoch; every rank applies it."""

    improved: bool  # a new best validation NDCG@10: every rank keeps a copy of its (identical) weights
    stale: int  # evaluations since the best; the run stops at ``patience``
    valid: dict  # rank 0's validation metrics


@dataclass(frozen=True)
class ReplicaRun:
    """One rank's view of a finished run: equal on every rank when the ranks stayed in step."""

    rank: int
    epochs: int  # the epoch it stopped after
    best_epoch: int
    stale: int
    shard_positions: int  # target positions this rank computed the loss of (its shard), since it started or resumed
    threads: int
    parameters_sha256: str  # of its final weights: one value across ranks, else the replicas diverged

    def to_dict(self) -> dict:
        return asdict(self)


def parameters_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


@dataclass(frozen=True)
class Job:
    """What the workers run: ``train`` (``training.pipeline.train_version``) or ``warm_start``."""

    kind: str
    data: str
    protocol: str = "full"
    checkpoint: bool = True
    progress: bool = True
    base_version: str | None = None
    has_items: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class JobResult:
    version: str
    report: dict = field(default_factory=dict)


class DistributedTrainingError(RuntimeError):
    pass


def launch(settings: Settings, job: Job, events: pd.DataFrame, items: pd.DataFrame | None) -> tuple[str, dict]:
    """Run ``job`` on ``events``/``items`` in ``settings.training.processes`` processes under torchrun;
    returns rank 0's (version, report). A worker's ValueError is raised here as a ValueError."""
    folder = settings.cache_dir / "distributed" / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    try:
        events.to_parquet(folder / "events.parquet")
        if items is not None:
            items.to_parquet(folder / "items.parquet")
        job = Job(**{**job.to_dict(), "has_items": items is not None})
        (folder / JOB_FILE).write_text(json.dumps(job.to_dict()))
        return _result(folder, _run(torchrun_command(settings, folder), _worker_env(settings)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def torchrun_command(settings: Settings, folder: Path) -> list[str]:
    t = settings.training
    if t.master_port:  # a fixed port: several launches on one host (tests) keep apart
        rendezvous = ["--nnodes", "1", "--master-addr", "127.0.0.1", "--master-port", str(t.master_port)]
    else:
        rendezvous = ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(t.processes), *rendezvous,
            "-m", "training.distributed_worker", str(folder)]


def _run(command: list[str], env: dict[str, str]) -> int:
    """torchrun in a session of its own (Ctrl-C reaches only the launcher); an interrupted launcher
    (Ctrl-C, ``kill``, an Airflow task timeout) stops torchrun and its workers, never leaving them behind."""
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, start_new_session=True)
    with _sigterm_as_exit():
        try:
            return process.wait()
        except BaseException:
            _stop(process)
            raise


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to torchrun, which stops its workers (each in a session of its own) and exits; if it
    does not within a minute, SIGKILL to it and to every worker it started."""
    stop_process_group(process, grace_seconds=60)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """A plain SIGTERM (``kill``) would end Python without unwinding; as SystemExit it reaches the
    clean-up of ``_run``. A handler someone else installed (Airflow's task runner raises) stays."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _worker_env(settings: Settings) -> dict[str, str]:
    threads = World(size=settings.training.processes).threads(settings.training.num_threads)
    # torchrun would set OMP_NUM_THREADS=1 (and warn); the trainer sets torch's threads itself
    return child_env(settings, OMP_NUM_THREADS=str(threads))


def _result(folder: Path, returncode: int) -> tuple[str, dict]:
    errors = sorted(folder.glob("error-rank*.json"))
    if errors:
        error = json.loads(errors[0].read_text())
        kind = ValueError if error["type"] in ("ValueError", "FileNotFoundError") else DistributedTrainingError
        raise kind(f"{error['message']} (rank {error['rank']} of distributed training)")
    if returncode != 0 or not (folder / RESULT_FILE).is_file():
        raise DistributedTrainingError(f"distributed training failed: torchrun exited with {returncode}; see its log above")
    result = JobResult(**json.loads((folder / RESULT_FILE).read_text()))
    return result.version, result.report
