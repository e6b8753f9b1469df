"""A training run end to end: data -> split -> text -> model -> fit -> evaluate -> artifact.

``train_version`` is what ``shoprec train`` and the Airflow DAG call; ``warm_start``
fine-tunes an existing version on new events only. Both take their hyperparameters from
``settings.hyperparameters`` (choose a preset or override one with ``settings.with_overrides``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shoprec.config import Hyperparameters, Settings
from shoprec.text_embedding import EMBEDDING_DIM, embed_items, embedding_version, item_text
from training.artifact import Recommender, load_recommender, save_artifact
from training.baselines import baseline_scorers
from training.data import (ItemVocab, SplitData, fingerprint, full_split, leave_one_out, load_events,
                           user_sequences)
from training.distributed import Job, World, launch
from training.evaluate import Scorer, evaluate_all, model_scorer
from training.models import build_model, new_model
from training.registry import list_versions, production_version, trained_root
from training.trainer import Trainer, TrainResult, pick_device, tune_cpu_runtime

EVALUATION_METADATA = ("protocol", "data_source", "data_fingerprint")  # what re-running a version's protocol needs


def train_version(settings: Settings, *, data: str = "lake", protocol: str = "full", events: pd.DataFrame | None = None,
                  items: pd.DataFrame | None = None, progress: bool = True, checkpoint: bool = True) -> tuple[str, dict]:
    """Train a new version from scratch with ``settings.hyperparameters`` and save it; returns (version, report).

    ``events``/``items`` given directly skip ``load_events`` (tests, generated data). With
    ``checkpoint``, an interrupted run of the same data and hyperparameters resumes. With
    ``training.processes`` > 1 the run happens in that many processes under torchrun
    (``training.distributed``); rank 0 saves the version.
    """
    hyperparameters = settings.hyperparameters
    if events is None:
        events, items = load_events(data, settings)
    if _should_launch(settings):
        return launch(settings, Job("train", data, protocol, checkpoint, progress), events, items)
    world = World.current()
    device = _prepare_runtime(settings, world)
    started = time.perf_counter()
    vocab = ItemVocab.from_events(events, items)
    split = make_split(protocol, user_sequences(events), vocab, hyperparameters.eval_max_scores, hyperparameters.seed)
    with world.main_first():
        text = item_text_matrix(items, vocab, settings, progress) if hyperparameters.use_text else None
    net = new_model(hyperparameters, len(vocab), None if text is None else torch.from_numpy(text))
    ckpt_dir = checkpoint_dir(settings, hyperparameters, protocol, events) if checkpoint else None
    result = Trainer(net, split, hyperparameters, device=device, checkpoint_dir=ckpt_dir, progress=progress).fit()
    if not world.main:  # rank 0 reports and saves
        return "", {}
    report = _report(net, split, hyperparameters, result, started)
    metadata = _metadata(hyperparameters, protocol, data, events, net.items.text_dim > 0, report)
    path = save_artifact(net, vocab.item_ids, settings.models_dir, metadata)
    if ckpt_dir is not None:
        (ckpt_dir / "checkpoint.pt").unlink(missing_ok=True)
    return path.name, report


def warm_start(settings: Settings, base_version: str, *, data: str = "lake", events: pd.DataFrame | None = None,
               items: pd.DataFrame | None = None, progress: bool = True) -> tuple[str, dict]:
    """Fine-tune the trained (FP32) ``base_version`` on the events after its training data ended,
    growing the vocabulary; ``warm_start_epochs`` at ``warm_start_lr`` of ``settings.hyperparameters``.

    Only users with new events are trained on (their whole recent history gives the context).
    New items get a zero ID vector and their text projection, so they are rankable from the start.
    A compressed variant is no base: resolve it first with ``training.registry.trained_root``.
    """
    base = load_recommender(base_version, settings)
    _require_trained(base, settings)
    hyperparameters = warm_start_hyperparameters(settings.hyperparameters, base.torch_model.config)
    if events is None:
        events, items = load_events(data, settings)
    new_events = _events_after_training(base, events)
    if _should_launch(settings):
        return launch(settings, Job("warm_start", data, progress=progress, base_version=base.version), events, items)
    world = World.current()
    device = _prepare_runtime(settings, world)
    started = time.perf_counter()
    old_vocab = ItemVocab(base.item_ids)
    vocab = old_vocab.grown(new_events["item_id"].astype(str))
    touched = events[events["user_id"].isin(set(new_events["user_id"]))]
    split = full_split(user_sequences(touched), vocab)
    with world.main_first():
        net = grown_model(base.torch_model, vocab, items, settings, progress)
    trainer = Trainer(net, split, hyperparameters, device=device, progress=progress)
    result = trainer.fit(hyperparameters.warm_start_epochs, hyperparameters.warm_start_lr)
    if not world.main:
        return "", {}
    report = _report(net, split, hyperparameters, result, started)
    report.update(new_items=len(vocab) - len(old_vocab), new_events=len(new_events))
    metadata = _metadata(hyperparameters, "warm_start", data, events, net.items.text_dim > 0, report)
    metadata.update(parent_version=base.version, warm_start_events_fingerprint=fingerprint(new_events))
    path = save_artifact(net, vocab.item_ids, settings.models_dir, metadata)
    return path.name, report


def evaluate_version(settings: Settings, version: str | None = None) -> tuple[str, dict]:
    """Re-run a saved version's protocol on its data source; returns (version, report).

    The data must still fingerprint the same as at training time, else the numbers would
    not be about the data the model saw.
    """
    version = version or _newest_or_production(settings)
    rec = load_recommender(version, settings)
    missing = [key for key in EVALUATION_METADATA if key not in rec.metadata]
    if missing:
        raise ValueError(f"version {rec.version} lacks {', '.join(missing)} in its metadata (it was not saved by "
                         "train_version); evaluate a version `shoprec train` made")
    protocol = rec.metadata["protocol"]
    if protocol not in ("loo", "full"):
        raise ValueError(f"version {version} was trained with protocol {protocol!r}; evaluate a loo or full version")
    events, _ = load_events(rec.metadata["data_source"], settings)
    if fingerprint(events) != rec.metadata["data_fingerprint"]:
        raise ValueError(f"the {rec.metadata['data_source']} data changed since {version} was trained "
                         "(fingerprint differs); train a new version to evaluate on it")
    used = rec.metadata.get("hyperparameters", {})  # a version from before eval_max_scores was evaluated on all users
    split = make_split(protocol, user_sequences(events), ItemVocab(rec.item_ids), used.get("eval_max_scores", 0),
                       used.get("seed", 0))
    return rec.version, evaluation_report(rec.score_indices, split, len(rec.item_ids) + 1)  # any format, ONNX too


def make_split(protocol: str, sequences: pd.DataFrame, vocab: ItemVocab, max_eval_scores: int = 0,
               seed: int = 0) -> SplitData:
    """The ``protocol``'s split, its evaluation sets sampled to at most ``max_eval_scores`` users x
    items (the ``eval_max_scores`` hyperparameter; the same users for the model and the
    baselines, and again when ``evaluate_version`` re-runs it)."""
    if protocol == "loo":
        split = leave_one_out(sequences, vocab)
    elif protocol == "full":
        split = full_split(sequences, vocab)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; choose loo or full")
    return split.with_eval_scores(max_eval_scores, len(vocab) - 1, seed)


def item_text_matrix(items: pd.DataFrame | None, vocab: ItemVocab, settings: Settings,
                     progress: bool = True) -> np.ndarray | None:
    """(n_vocab, 384) MiniLM embeddings in vocabulary order, zeros for items without text; None when no item has text."""
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


def checkpoint_dir(settings: Settings, hyperparameters: Hyperparameters, protocol: str, events: pd.DataFrame) -> Path:
    """The checkpoint folder of one run: a resume continues only the same data and the same hyperparameters."""
    encoded = json.dumps(hyperparameters.model_dump(), sort_keys=True, default=str).encode()
    run_key = hashlib.sha256(encoded).hexdigest()[:8]
    return settings.cache_dir / "checkpoints" / f"{hyperparameters.model}-{protocol}-{run_key}-{fingerprint(events)}"


def warm_start_hyperparameters(current: Hyperparameters, base_config: dict) -> Hyperparameters:
    """The base model's architecture (and whether it has the text tower) with ``current``'s training settings."""
    shape = {key: base_config[key] for key in current.architecture()}
    return Hyperparameters(**{**current.model_dump(), **shape, "use_text": bool(base_config.get("text_dim", 0))})


def grown_model(old: torch.nn.Module, vocab: ItemVocab, items: pd.DataFrame | None, settings: Settings,
                progress: bool) -> torch.nn.Module:
    """A copy of ``old`` with rows for the new items of ``vocab`` appended (text rows from MiniLM when available)."""
    old_state = old.state_dict()
    text = _grown_text_table(old, vocab, items, settings, progress) if old.items.text_dim else None
    net = build_model({**old.config, "n_vocab": len(vocab)}, text)
    state = net.state_dict()
    for key, value in old_state.items():
        if key == "items.ids.weight":
            state[key] = torch.zeros_like(state[key])
            state[key][: value.shape[0]] = value
        elif key != "items.text":
            state[key] = value
    net.load_state_dict(state)
    return net


def _grown_text_table(old: torch.nn.Module, vocab: ItemVocab, items: pd.DataFrame | None, settings: Settings,
                      progress: bool) -> torch.Tensor:
    """The old text rows unchanged (the model learned on them), fresh MiniLM rows for the new items."""
    n_old = old.config["n_vocab"]
    text = torch.zeros(len(vocab), old.items.text_dim)
    text[:n_old] = old.state_dict()["items.text"]
    fresh = item_text_matrix(items, vocab, settings, progress)
    if fresh is not None:
        text[n_old:] = torch.from_numpy(fresh[n_old:])
    return text


def evaluation_report(model: Scorer, split: SplitData, n_vocab: int, batch_size: int = 1024) -> dict:
    """Metrics of the ``model`` scorer and the baselines on the split's test set (validation set for ``full``)."""
    which = "test" if split.test is not None else "valid"
    scorers = {"model": model, **baseline_scorers(split.train, n_vocab)}
    results = evaluate_all(scorers, split, n_vocab, which, batch_size)
    return {"protocol": split.protocol, "split": which, "metrics": results.pop("model"), "baselines": results}


def _should_launch(settings: Settings) -> bool:
    """Several processes configured, and this is not already one of them."""
    return settings.training.processes > 1 and not World.current().distributed


def _prepare_runtime(settings: Settings, world: World) -> str:
    """Tune the CPU runtime (the cores shared among the processes) and pick the device training runs on."""
    tune_cpu_runtime(world.threads(settings.training.num_threads))
    return world.device(pick_device(settings.training.device))


def _require_trained(base: Recommender, settings: Settings) -> None:
    if base.metadata.get("lineage"):
        raise ValueError(f"{base.version} is a compressed variant; warm-start from the trained version it came from, "
                         f"{trained_root(base.version, settings)} (training.registry.trained_root)")


def _events_after_training(base: Recommender, events: pd.DataFrame) -> pd.DataFrame:
    data_end = pd.Timestamp(base.metadata["data_end"])
    new_events = events[events["timestamp"] > data_end]
    if new_events.empty:
        raise ValueError(f"no events after {data_end} (the end of {base.version}'s training data): nothing to warm-start on")
    return new_events


def _newest_or_production(settings: Settings) -> str:
    versions = list_versions(settings)
    version = production_version(settings) or (versions[-1].version if versions else None)
    if version is None:
        raise ValueError(f"no model versions in {settings.models_dir}; run `shoprec train` first")
    return version


def _report(net: torch.nn.Module, split: SplitData, hyperparameters: Hyperparameters, result: TrainResult,
            started: float) -> dict:
    """The evaluation report (on CPU, where serving runs) with the training summary."""
    net.to("cpu")
    report = evaluation_report(model_scorer(net), split, net.config["n_vocab"], hyperparameters.eval_batch_size)
    report.update(training=_training_summary(result, time.perf_counter() - started))
    return report


def _training_summary(result: TrainResult, wall_seconds: float) -> dict:
    return {
        "epochs": result.epochs, "best_epoch": result.best_epoch, "train_seconds": round(result.train_seconds, 1),
        "seconds_per_epoch": round(result.seconds_per_epoch, 2), "wall_seconds": round(wall_seconds, 1),
        "device": result.device, "valid": result.best_valid, "history": result.history,
        "steps": result.steps, "positions": result.positions, "loss": result.loss,
        **({"processes": len(result.replicas), "replicas": [r.to_dict() for r in result.replicas]}
           if result.replicas else {}),
        **({"resumed_after": result.resumed_after} if result.resumed_after else {}),
    }


def _metadata(hyperparameters: Hyperparameters, protocol: str, data: str, events: pd.DataFrame, used_text: bool,
              report: dict) -> dict:
    return {
        "protocol": protocol,
        "data_source": data,
        "data_fingerprint": fingerprint(events),
        "data_end": str(events["timestamp"].max()),
        "n_events": int(len(events)),
        "text_embedding_version": embedding_version() if used_text else None,
        "hyperparameters": hyperparameters.model_dump(),  # a plain dict: readers of older versions keep working
        "metrics": report["metrics"],
        "baselines": report["baselines"],
        "training": report["training"],
        "loss": report["training"]["loss"],  # training.trainer.LossChoice: full or sampled softmax, and why
    }
