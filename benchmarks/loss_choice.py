"""Seconds per training step, full softmax against sampled softmax, as the catalog grows.

    python benchmarks/loss_choice.py [--items 5000 20000 50000 100000] [--steps 10] [--negatives 2048] [--threads 0]

One SASRec step (forward, backward, AdamW) of the ``full`` preset's shape (hidden 64,
2 layers) on a batch of 128 sequences x 20 positions (a 10 M-event shop's typical batch),
with random items, per catalog size and loss. This is the measurement behind
``full_softmax_max_items`` (training.trainer.choose_loss). Writes
docs/results/loss_choice.{md,json} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoprec.config import load_hyperparameters  # noqa: E402  (after the repo is on the path)
from training.models import new_model  # noqa: E402
from training.models.sasrec import SampledSoftmax  # noqa: E402
from training.trainer import tune_cpu_runtime  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def seconds_per_step(n_items: int, sampled: bool, steps: int, negatives: int, batch: int, width: int) -> float:
    hp = load_hyperparameters("sasrec", "full", {"use_text": False})
    torch.manual_seed(0)
    model = new_model(hp, n_items + 1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, fused=True)  # as the Trainer
    probability = torch.full((n_items + 1,), 1.0 / n_items)
    probability[0] = 0
    loss_kind = SampledSoftmax.mixed(probability, negatives) if sampled else None
    items = torch.randint(1, n_items + 1, (batch, width + 1))
    positions = torch.arange(hp.max_len - width, hp.max_len).expand(batch, width)
    times = []
    for step in range(steps + 2):  # two warm-up steps
        started = time.process_time()  # CPU time: the machine may be shared
        loss = model.loss(items[:, :-1], positions, items[:, 1:], sampled=loss_kind, reduction="mean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.process_time() - started)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[5000, 20000, 50000, 100000], help="catalog sizes")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per cell (the median is reported)")
    parser.add_argument("--negatives", type=int, default=2048, help="uniform negatives of the sampled softmax")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=20, help="positions per sequence")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    args = parser.parse_args()
    tune_cpu_runtime(args.threads)
    rows = []
    for n_items in tqdm(args.items, desc="catalog sizes"):
        full = seconds_per_step(n_items, False, args.steps, args.negatives, args.batch, args.width)
        sampled = seconds_per_step(n_items, True, args.steps, args.negatives, args.batch, args.width)
        rows.append({"n_items": n_items, "full_s": round(full, 4), "sampled_s": round(sampled, 4),
                     "ratio": round(full / sampled, 2)})
    header = (f"CPU seconds per training step (median of {args.steps}), batch {args.batch} x {args.width} positions, "
              f"hidden 64, {torch.get_num_threads()} threads; sampled = {args.negatives} shared negatives (half by "
              "popularity, half uniform)")
    lines = [header, "", "| items | full softmax s | sampled softmax s | full / sampled |", "|---|---|---|---|"]
    lines += [f"| {r['n_items']:,} | {r['full_s']:.4f} | {r['sampled_s']:.4f} | {r['ratio']:.1f}x |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loss_choice.md").write_text("# Loss choice: step time by catalog size\n\n" + "\n".join(lines) + "\n\n"
                                            f"Command: `python benchmarks/loss_choice.py {' '.join(sys.argv[1:])}`\n")
    (RESULTS / "loss_choice.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
