"""One process of a distributed training run: ``torchrun ... -m training.distributed_worker FOLDER``.

``training.distributed.launch`` writes FOLDER (the job, the events, the catalog) and starts
these; the settings arrive in the environment. Rank 0 writes the result, any rank that fails
writes its error there for the launcher to raise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from shoprec.config import load_settings
from training.distributed import JOB_FILE, RESULT_FILE, Job, JobResult, World, backend
from training.pipeline import train_version, warm_start
from training.trainer import pick_device


def run(folder: Path) -> JobResult:
    job = Job(**json.loads((folder / JOB_FILE).read_text()))
    settings = load_settings()
    events = pd.read_parquet(folder / "events.parquet")
    items = pd.read_parquet(folder / "items.parquet") if job.has_items else None
    progress = job.progress and World.current().main
    if job.kind == "warm_start":
        version, report = warm_start(settings, job.base_version, data=job.data, events=events, items=items,
                                     progress=progress)
    else:
        version, report = train_version(settings, data=job.data, protocol=job.protocol, events=events, items=items,
                                        progress=progress, checkpoint=job.checkpoint)
    return JobResult(version, report)


def main(folder: Path) -> int:
    device = pick_device(load_settings().training.device)
    dist.init_process_group(backend(device))
    world = World.current()
    if device.startswith("cuda"):
        torch.cuda.set_device(world.local_rank)
    try:
        result = run(folder)
    except Exception as error:
        (folder / f"error-rank{world.rank}.json").write_text(
            json.dumps({"rank": world.rank, "type": type(error).__name__, "message": str(error)}))
        raise
    if world.main:
        (folder / RESULT_FILE).write_text(json.dumps({"version": result.version, "report": result.report}, default=str))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
