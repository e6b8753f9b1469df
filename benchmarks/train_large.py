"""Train on a large synthetic shop (default 10 M events: ~400 k users, 100 k items) and compare with the baselines.

    python benchmarks/train_large.py [--events 10000000] [--seed 0] [--protocol loo|full|time] [--threads 0]
                                     [--set max_steps=3000 --set use_text=false ...]

The shop comes from ``simulator.shop.generate`` (not timed); training is ``train_version``,
the function ``shoprec train`` calls, with the ``full`` preset and the ``--set`` overrides,
so the loss is the one ``choose_loss`` picks for the catalog (sampled softmax at 100 k items).
Reports the loss choice, seconds per epoch and per step, the evaluation of the model and
of the popularity and Markov baselines on the same hold-out users, wall time and peak RSS.
``--protocol time`` is the training DAG's hold-out (``training.champion``, as ``shop_scale.py``
runs it, without the feature store): the newest ``promotion.holdout_fraction`` of the events by
time is held out, the model trains (protocol ``full``) on each user's last
``features.sequence_length`` events before the cutoff (what the point-in-time join returns), and
the model and the baselines are scored on ``time_split``'s targets, sampled as training samples.
Writes docs/results/train_large.{md,json} (``--out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from entrypoints.commands.training import parse_assignments  # noqa: E402  (after the repo is on the path)
from shoprec.config import load_settings  # noqa: E402
from simulator.shop import generate  # noqa: E402
from training.artifact import load_recommender  # noqa: E402
from training.baselines import baseline_scorers  # noqa: E402
from training.data import item_counts, time_split  # noqa: E402
from training.evaluate import evaluate_scorer  # noqa: E402
from training.pipeline import train_version  # noqa: E402
from training.vocab import ItemVocab  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
KEYS = ("NDCG@10", "HR@10", "NDCG@20", "HR@20", "coverage@10")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def before_cutoff(events: pd.DataFrame, settings) -> tuple[pd.DataFrame, pd.Timestamp]:
    """(each user's last ``features.sequence_length`` events before the cutoff, the cutoff):
    ``training.champion.build_training_set``'s training data without the feature store."""
    cutoff = pd.Timestamp(events["timestamp"].quantile(1.0 - settings.promotion.holdout_fraction))
    before = events[events["timestamp"] < cutoff].sort_values(["user_id", "timestamp"], kind="stable")
    return before.groupby("user_id", sort=False, observed=True).tail(settings.features.sequence_length), cutoff


def time_holdout_report(settings, version: str, events: pd.DataFrame, cutoff: pd.Timestamp) -> dict:
    """The trained model and the baselines on ``time_split``'s targets (``shop_scale.py``'s evaluate stage)."""
    model = load_recommender(version, settings)
    vocab = ItemVocab(model.item_ids)
    hp = settings.hyperparameters
    split = time_split(events, vocab, cutoff).with_eval_scores(hp.eval_max_scores, len(vocab), hp.seed)
    counts = item_counts(split.train, len(vocab))
    scorers = {"model": model.score_indices, **baseline_scorers(split.train, len(vocab))}
    scores = {name: evaluate_scorer(scorer, split.test, counts) for name, scorer in scorers.items()}
    return {"metrics": scores.pop("model"), "baselines": scores}


def markdown(result: dict) -> str:
    t, loss = result["training"], result["loss"]
    lines = [f"{result['events']:,} events, {result['users']:,} users, {result['items']:,} items, protocol "
             f"{result['protocol']} ({result['eval_users']:,} hold-out users), {result['threads']} threads", "",
             f"Loss: {loss['loss']} softmax ({loss['negatives']}; auto threshold {loss['threshold']:,} items)", "",
             f"Training: {t['epochs']} epochs, {t['steps']} steps, {t['positions']:,} positions "
             f"({result['positions_per_second']:,}/s), {t['seconds_per_epoch']:.1f} s/epoch, "
             f"{result['seconds_per_step']:.3f} s/step, train {t['train_seconds']:.0f} s; train_version wall "
             f"{result['train_version_seconds']:.0f} s, CPU {result['cpu_seconds']:.0f} s, peak RSS "
             f"{result['peak_rss_mib']:,.0f} MiB", ""]
    lines += _table(result["metrics"], result["baselines"])
    if result.get("validation"):
        lines += ["", "Validation set (each user's last item before the cutoff, which picks the epoch):", "",
                  *_table(result["validation"]["metrics"], result["validation"]["baselines"])]
    return "\n".join(lines) + "\n"


def _table(model: dict, baselines: dict) -> list[str]:
    rows = ["| scorer | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    return rows + [f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in KEYS) + " |"
                   for name, m in [("SASRec", model), *baselines.items()]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", choices=["loo", "full", "time"], default="loo",
                        help="loo: a test item per user apart from the validation item that picks the epoch; "
                             "time: the training DAG's time hold-out")
    parser.add_argument("--preset", choices=["quick", "full"], default="full")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyperparameter override, as `shoprec train --set` (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_large", help="writes OUT.md and OUT.json")
    args = parser.parse_args()

    batch = generate(args.events, seed=args.seed, progress=True)
    events, items = batch.events, batch.items
    with tempfile.TemporaryDirectory(prefix="shoprec-train-large-") as home:
        settings = load_settings(home=Path(home), training={
            "preset": args.preset, "overrides": parse_assignments(tuple(args.assignments)), "num_threads": args.threads})
        train_events, cutoff = before_cutoff(events, settings) if args.protocol == "time" else (events, None)
        protocol = "full" if args.protocol == "time" else args.protocol
        started, cpu_before = time.perf_counter(), _cpu_seconds()
        version, report = train_version(settings, events=train_events, items=items, protocol=protocol, checkpoint=False)
        wall, cpu_after = time.perf_counter() - started, _cpu_seconds()
        if cutoff is not None:
            # the full protocol's validation set (each user's last item before the cutoff) is kept beside it
            report.update(validation={k: report[k] for k in ("metrics", "baselines")},
                          **time_holdout_report(settings, version, events, cutoff))
    print(json.dumps({k: report[k] for k in ("metrics", "baselines")}, indent=1), flush=True)  # kept if what follows fails
    training = {k: v for k, v in report["training"].items() if k != "history"}
    result = {
        "command": "python benchmarks/train_large.py " + " ".join(sys.argv[1:]),
        "events": len(events), "users": int(events["user_id"].nunique()), "items": int(items["item_id"].nunique()),
        "protocol": args.protocol, "threads": settings.training.num_threads or "all", "eval_users": report["metrics"]["users"],
        "loss": report["training"]["loss"], "training": training, "history": report["training"]["history"],
        "seconds_per_step": training["train_seconds"] / max(training["steps"], 1),
        "train_version_seconds": round(wall, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_seconds": round(cpu_after - cpu_before, 1),  # of train_version: wall time suffers on a shared machine
        "positions_per_second": round(training["positions"] / max(training["train_seconds"], 1e-9)),
        "metrics": report["metrics"], "baselines": report["baselines"], "validation": report.get("validation"),
        "hyperparameters": settings.hyperparameters.model_dump(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    text = markdown(result)
    args.out.with_suffix(".md").write_text(f"# Training a large shop\n\n{text}\nCommand: `{result['command']}`\n")
    print(text)


if __name__ == "__main__":
    main()
