"""A training run end to end: data -> split -> text -> model -> fit -> evaluate -> artifact.

``train_version`` is what ``shoprec train`` and the Airflow DAG call; ``warm_start``
fine-tunes an existing version on new events only.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pandas as pd
import torch

from training.artifact import load_recommender, save_artifact
from training.baselines import baseline_scorers
from training.data import (ItemVocab, SplitData, fingerprint, full_split, leave_one_out, load_events,
                           user_sequences)
from training.evaluate import evaluate_all, model_scorer
from training.models import build_model, load_hyperparameters
from training.trainer import fit, pick_device, tune_cpu_runtime


def item_text_matrix(items: pd.DataFrame | None, vocab: ItemVocab, settings, progress: bool = True) -> np.ndarray | None:
    """(n_vocab, 384) MiniLM embeddings in vocabulary order, zeros for items without text; None when no item has text."""
    from shoprec.text_embedding import EMBEDDING_DIM, embed_items, item_text

    if items is None or items.empty:
        return None
    catalog = items.drop_duplicates("item_id").reset_index(drop=True)
    ids = catalog["item_id"].astype(str)
    catalog = catalog[(item_text(catalog).fillna("").str.len() > 0).to_numpy() & ids.isin(vocab.index).to_numpy()]
    if catalog.empty:
        return None
    vectors, _ = embed_items(catalog, settings.cache_dir / "text_embeddings.parquet", progress=progress)
    table = np.zeros((len(vocab), EMBEDDING_DIM), dtype=np.float32)
    table[[vocab.index[i] for i in catalog["item_id"].astype(str)]] = vectors
    return table


def make_split(protocol: str, sequences: pd.DataFrame, vocab: ItemVocab) -> SplitData:
    if protocol == "loo":
        return leave_one_out(sequences, vocab)
    if protocol == "full":
        return full_split(sequences, vocab)
    raise ValueError(f"unknown protocol {protocol!r}; choose loo or full")


def train_version(settings, *, data: str = "lake", protocol: str = "full", profile: str = "full", model: str = "sasrec",
                  events: pd.DataFrame | None = None, items: pd.DataFrame | None = None, overrides: dict | None = None,
                  progress: bool = True, checkpoint: bool = True) -> tuple[str, dict]:
    """Train a new version from scratch and save it; returns (version, report).

    ``events``/``items`` given directly skip ``load_events`` (tests, generated data).
    """
    hp = {**load_hyperparameters(model, profile), **(overrides or {})}
    tune_cpu_runtime(settings.training.num_threads)
    device = pick_device(settings.training.device)
    if events is None:
        events, items = load_events(data, settings)
    started = time.perf_counter()
    vocab = ItemVocab.from_events(events, items)
    split = make_split(protocol, user_sequences(events), vocab)
    text = item_text_matrix(items, vocab, settings, progress) if hp["use_text"] else None
    config = {key: hp[key] for key in ("model", "hidden", "layers", "heads", "inner", "dropout", "attn_dropout", "max_len")}
    config.update(n_vocab=len(vocab), text_dim=0 if text is None else text.shape[1])
    net = build_model(config, None if text is None else torch.from_numpy(text))
    # resume only the same run: same data and the same hyperparameters
    run_key = hashlib.sha256(json.dumps(hp, sort_keys=True, default=str).encode()).hexdigest()[:8]
    ckpt_dir = settings.cache_dir / "checkpoints" / f"{model}-{protocol}-{run_key}-{fingerprint(events)}" if checkpoint else None
    result = fit(net, split, hp, device=device, checkpoint_dir=ckpt_dir, progress=progress)
    net.to("cpu")
    report = evaluation_report(net, split, len(vocab), hp["eval_batch_size"])
    report.update(training=_training_summary(result, time.perf_counter() - started))
    metadata = _metadata(hp, protocol, data, events, text is not None, report)
    path = save_artifact(net, vocab.item_ids, settings.models_dir, metadata)
    if ckpt_dir is not None:
        (ckpt_dir / "checkpoint.pt").unlink(missing_ok=True)
    return path.name, report


def evaluation_report(net, split: SplitData, n_vocab: int, batch_size: int = 1024) -> dict:
    """Metrics of the model and the baselines on the split's test set (validation set for ``full``)."""
    which = "test" if split.test is not None else "valid"
    scorers = {"model": model_scorer(net), **baseline_scorers(split.train, n_vocab)}
    results = evaluate_all(scorers, split, n_vocab, which, batch_size)
    return {"protocol": split.protocol, "split": which, "metrics": results.pop("model"), "baselines": results}


def warm_start(settings, base_version: str, *, data: str = "lake", profile: str = "full",
               events: pd.DataFrame | None = None, items: pd.DataFrame | None = None,
               progress: bool = True) -> tuple[str, dict]:
    """Fine-tune ``base_version`` on the events after its training data ended, growing the vocabulary.

    Only users with new events are trained on (their whole recent history gives the context).
    New items get a zero ID vector and their text projection, so they are rankable from the start.
    """
    base = load_recommender(base_version, settings)
    hp = load_hyperparameters(base.torch_model.config["model"], profile)
    tune_cpu_runtime(settings.training.num_threads)
    if events is None:
        events, items = load_events(data, settings)
    data_end = pd.Timestamp(base.metadata["data_end"])
    new_events = events[events["timestamp"] > data_end]
    if new_events.empty:
        raise ValueError(f"no events after {data_end} (the end of {base.version}'s training data): nothing to warm-start on")
    started = time.perf_counter()
    old_vocab = ItemVocab(base.item_ids)
    vocab = old_vocab.grown(new_events["item_id"].astype(str))
    touched = events[events["user_id"].isin(set(new_events["user_id"]))]
    split = full_split(user_sequences(touched), vocab)
    net = _grown_model(base, vocab, items, settings, progress)
    result = fit(net, split, hp, epochs=hp["warm_start_epochs"], lr=hp["warm_start_lr"], progress=progress)
    report = evaluation_report(net, split, len(vocab), hp["eval_batch_size"])
    report.update(training=_training_summary(result, time.perf_counter() - started),
                  new_items=len(vocab) - len(old_vocab), new_events=len(new_events))
    metadata = _metadata(hp, "warm_start", data, events, net.items.text_dim > 0, report)
    metadata.update(parent_version=base.version, warm_start_events_fingerprint=fingerprint(new_events))
    path = save_artifact(net, vocab.item_ids, settings.models_dir, metadata)
    return path.name, report


def _grown_model(base, vocab: ItemVocab, items, settings, progress: bool):
    """A copy of the base model with rows for the new items appended (text rows from MiniLM when available)."""
    old = base.torch_model
    config = {**old.config, "n_vocab": len(vocab)}
    old_state = old.state_dict()
    text = None
    if old.items.text_dim:
        text = torch.zeros(len(vocab), old.items.text_dim)
        text[: old.config["n_vocab"]] = old_state["items.text"]
        fresh = item_text_matrix(items, vocab, settings, progress)
        if fresh is not None:
            new_rows = slice(old.config["n_vocab"], len(vocab))
            text[new_rows] = torch.from_numpy(fresh[new_rows])
    net = build_model(config, text)
    state = net.state_dict()
    for key, value in old_state.items():
        if key == "items.ids.weight":
            state[key] = torch.zeros_like(state[key])
            state[key][: value.shape[0]] = value
        elif key != "items.text":
            state[key] = value
    net.load_state_dict(state)
    return net


def _training_summary(result, wall_seconds: float) -> dict:
    return {
        "epochs": result.epochs, "best_epoch": result.best_epoch, "train_seconds": round(result.train_seconds, 1),
        "seconds_per_epoch": round(result.seconds_per_epoch, 2), "wall_seconds": round(wall_seconds, 1),
        "device": result.device, "valid": result.best_valid, "history": result.history,
    }


def _metadata(hp: dict, protocol: str, data: str, events: pd.DataFrame, used_text: bool, report: dict) -> dict:
    from shoprec.text_embedding import embedding_version

    return {
        "protocol": protocol,
        "data_source": data,
        "data_fingerprint": fingerprint(events),
        "data_end": str(events["timestamp"].max()),
        "n_events": int(len(events)),
        "text_embedding_version": embedding_version() if used_text else None,
        "hyperparameters": hp,
        "metrics": report["metrics"],
        "baselines": report["baselines"],
        "training": report["training"],
    }


def evaluate_version(settings, version: str | None = None) -> tuple[str, dict]:
    """Re-run a saved version's protocol on its data source; returns (version, report).

    The data must still fingerprint the same as at training time, else the numbers would
    not be about the data the model saw.
    """
    from training.registry import list_versions, production_version

    if version is None:
        version = production_version(settings) or next(reversed([v["version"] for v in list_versions(settings)]), None)
        if version is None:
            raise ValueError(f"no model versions in {settings.models_dir}; run `shoprec train` first")
    rec = load_recommender(version, settings)
    protocol = rec.metadata["protocol"]
    if protocol not in ("loo", "full"):
        raise ValueError(f"version {version} was trained with protocol {protocol!r}; evaluate a loo or full version")
    events, _ = load_events(rec.metadata["data_source"], settings)
    if fingerprint(events) != rec.metadata["data_fingerprint"]:
        raise ValueError(f"the {rec.metadata['data_source']} data changed since {version} was trained "
                         "(fingerprint differs); train a new version to evaluate on it")
    split = make_split(protocol, user_sequences(events), ItemVocab(rec.item_ids))
    return rec.version, evaluation_report(rec.torch_model, split, len(rec.item_ids) + 1)
