"""Champion vs challenger: the glue of the training DAG around the training steps.

The hold-out is the newest ``airflow.holdout_fraction`` of the events, by time. The
challenger trains on the users' sequences just before it, read from the feature store by
a point-in-time join (from scratch, or warm-started from production); challenger and
champion are then scored by the same metric code on the same hold-out targets, the
champion through its own vocabulary mapped onto the challenger's (items it does not know
rank last). What is evaluated is what is shipped: the promoted
version is the challenger (or its compressed variant the compression gate picked).

Every function takes and returns small JSON-able dicts (they travel as Airflow XComs) and
records its result in the run's folder, so re-running a task reuses its own output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from training.data import ItemVocab, PAD, feature_store_events, load_events, time_split
from training.evaluate import evaluate_scorer, model_scorer
from training.registry import production_version

METRIC = "NDCG@10"


def run_dir(settings, run_id: str) -> Path:
    return Path(settings.models_dir) / "runs" / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


def _recorded(path: Path, make) -> dict:
    """The JSON result at ``path``, made (and written) only if absent: tasks re-run idempotently."""
    if path.is_file():
        return json.loads(path.read_text())
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return result


def build_training_set(settings, run_id: str) -> dict:
    """Fix the run's data: the hold-out cutoff, the training events from the feature store
    (point in time: each user's sequence just before the cutoff) and the lake's events for
    the hold-out."""
    folder = run_dir(settings, run_id)

    def make() -> dict:
        events, items = load_events("lake", settings)
        cutoff = pd.Timestamp(events["timestamp"].quantile(1.0 - settings.airflow.holdout_fraction))
        before = events[events["timestamp"] < cutoff]
        train = feature_store_events(settings, before["user_id"].unique(), cutoff - pd.Timedelta(microseconds=1))
        events.to_parquet(folder / "events.parquet")
        train.to_parquet(folder / "train_events.parquet")
        items.to_parquet(folder / "items.parquet")
        return {"run_dir": str(folder), "cutoff": cutoff.isoformat(), "events": int(len(events)),
                "train_events": int(len(train)), "train_source": "feature store (point-in-time join)"}

    folder.mkdir(parents=True, exist_ok=True)
    return _recorded(folder / "training_set.json", make)


def _data(dataset: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """(all events of the run, for the hold-out; the catalog; the cutoff)."""
    folder = Path(dataset["run_dir"])
    return (pd.read_parquet(folder / "events.parquet"), pd.read_parquet(folder / "items.parquet"),
            pd.Timestamp(dataset["cutoff"]))


def _training_events(dataset: dict) -> pd.DataFrame:
    return pd.read_parquet(Path(dataset["run_dir"]) / "train_events.parquet")


def train_challenger(settings, dataset: dict, mode: str = "auto", profile: str | None = None,
                     overrides: dict | None = None) -> dict:
    """Train on the events before the cutoff: ``full``, ``warm`` (from production) or ``auto``."""
    from training.pipeline import train_version, warm_start

    def make() -> dict:
        _, items, _ = _data(dataset)
        before = _training_events(dataset)
        champion = production_version(settings)
        chosen = mode
        if mode == "auto":
            chosen = "warm" if champion and _has_events_after_training(settings, champion, before) else "full"
        train_profile = profile or settings.training.profile
        if chosen == "warm":
            version, report = warm_start(settings, champion, profile=train_profile, events=before, items=items,
                                         progress=False)
        else:
            version, report = train_version(settings, profile=train_profile, events=before, items=items,
                                            overrides=overrides, progress=False, checkpoint=False)
        return {"version": version, "mode": chosen, "profile": train_profile, "champion": champion}

    return _recorded(Path(dataset["run_dir"]) / "challenger.json", make)


def _has_events_after_training(settings, version: str, events: pd.DataFrame) -> bool:
    from training.artifact import load_recommender

    try:
        data_end = pd.Timestamp(load_recommender(version, settings).metadata["data_end"])
    except Exception:  # a variant or unreadable champion: train from scratch
        return False
    return bool((events["timestamp"] > data_end).any())


def _champion_scorer(model, vocab: ItemVocab):
    """Score in the challenger's index space with another model's vocabulary."""
    names = np.array(["<pad>", *vocab.item_ids], dtype=object)
    columns = np.array([vocab.index.get(str(item), -1) for item in model.item_ids])
    known = columns >= 0
    model_items = set(map(str, model.item_ids))

    def score(histories: list[np.ndarray]) -> np.ndarray:
        out = np.full((len(histories), len(vocab)), -1e9, dtype=np.float32)
        for row, history in enumerate(histories):
            items = [i for i in names[history] if i in model_items]
            if items:
                out[row, columns[known]] = model.score([items])[0][known]
        out[:, PAD] = -np.inf
        return out

    return score


def challenger_vs_champion(settings, challenger: dict, dataset: dict) -> dict:
    """Metrics of both models on the same hold-out (champion: None when there is no production model)."""
    from training.artifact import load_recommender
    from training.compression.variant import load_served_model

    def make() -> dict:
        events, _, cutoff = _data(dataset)
        model = load_recommender(challenger["version"], settings)
        vocab = ItemVocab(model.item_ids)
        split = time_split(events, vocab, cutoff)
        counts = np.bincount(np.concatenate(split.train) if split.train else np.zeros(0, np.int64), minlength=len(vocab))
        result = {"holdout_users": len(split.test), "challenger": evaluate_scorer(model_scorer(model.torch_model), split.test, counts)}
        champion = production_version(settings)
        if champion:
            result["champion_version"] = champion
            result["champion"] = evaluate_scorer(_champion_scorer(load_served_model(champion, settings), vocab),
                                                 split.test, counts)
        return result

    return _recorded(Path(dataset["run_dir"]) / "evaluation.json", make)


DAG_COMPRESSION = {"rounds_b1": 50, "rounds_b32": 10}  # a benchmark sized for a pipeline run


def compression_options(overrides: dict | None = None):
    """The DAG's CompressionOptions, with ``overrides`` (field -> value) on top; ValueError on an unknown field."""
    from dataclasses import fields

    from training.compression.pipeline import CompressionOptions

    known = {f.name for f in fields(CompressionOptions)} - {"thresholds"}
    unknown = set(overrides or {}) - known
    if unknown:
        raise ValueError(f"unknown compression option(s) {sorted(unknown)}; known: {sorted(known)}")
    return CompressionOptions(**{**DAG_COMPRESSION, **(overrides or {})})


def compress_challenger(settings, challenger: dict, dataset: dict, overrides: dict | None = None) -> dict:
    """Every compressed variant of the challenger, measured on the hold-out; the compression gate picks one.
    ``overrides``: CompressionOptions fields (e.g. a lighter benchmark for the demo)."""
    from training.artifact import load_recommender
    from training.compression.pipeline import compress_recommender
    from training.trainer import tune_cpu_runtime

    options = compression_options(overrides)
    tune_cpu_runtime(settings.training.num_threads)  # latencies are measured with the threads serving would use

    def make() -> dict:
        events, _, cutoff = _data(dataset)
        parent = load_recommender(challenger["version"], settings)
        split = time_split(events, ItemVocab(parent.item_ids), cutoff)
        report = compress_recommender(parent, Path(settings.models_dir) / parent.version, split, settings, options,
                                      "lake, time hold-out")
        served = report["served_version"] or parent.version
        row = next(r for r in report["variants"] if r["version"] == served)
        return {"served_version": served, "latency_b1_p50_ms": row["latency_b1_p50_ms"], "gate": report["gate"],
                "report": report["report"]}

    return _recorded(Path(dataset["run_dir"]) / "compression.json", make)


def passes_gate(settings, evaluation: dict, compressed: dict) -> dict:
    """The promotion decision with its reasons: the challenger must not lose to the champion
    (beyond ``max_ndcg_drop_vs_champion``) and the served model must meet the latency budget."""
    reasons = []
    ours = evaluation["challenger"][METRIC]
    if "champion" in evaluation:
        theirs = evaluation["champion"][METRIC]
        floor = theirs * (1.0 - settings.airflow.max_ndcg_drop_vs_champion)
        if ours < floor:
            reasons.append(f"challenger {METRIC} {ours:.4f} < champion {theirs:.4f} (floor {floor:.4f})")
    budget = settings.airflow.latency_budget_ms
    if compressed["latency_b1_p50_ms"] > budget:
        reasons.append(f"served model p50 {compressed['latency_b1_p50_ms']:.2f} ms > budget {budget:.2f} ms")
    return {"promote": not reasons, "reasons": reasons or [f"challenger {METRIC} {ours:.4f} wins"],
            "served_version": compressed["served_version"]}
