"""Champion vs challenger: the training DAG's steps around the training run.

train -> compress -> evaluate -> gate. The hold-out is the newest
``promotion.holdout_fraction`` of the events, by time. The challenger trains on the users'
sequences just before it, read from the feature store by a point-in-time join (from
scratch, or warm-started from the trained version behind production); the compression
gate picks the version it would be served as; that SERVED version and the champion's
served version (production) are then scored by the same metric code on the same hold-out
targets, the champion through its own vocabulary mapped onto the challenger's (items it
does not know rank last). What is evaluated is what would be shipped against what is.

Every step returns a small typed result with ``to_dict``/``from_dict`` (they travel as
Airflow XComs) and records it in the run's folder, so re-running a task reuses its output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from shoprec import lake
from shoprec.config import Settings
from training.artifact import Recommender, load_recommender
from training.compression.pipeline import compress_recommender
from training.data import (PAD, ItemVocab, LakeEvents, feature_store_event_batches, item_counts, read_split_events,
                           time_split, without_erased, write_run_events)
from training.evaluate import Scorer, evaluate_scorer
from training.pipeline import train_version, warm_start
from training.registry import production_version, trained_root
from training.trainer import tune_cpu_runtime

METRIC = "NDCG@10"
UNKNOWN_TO_CHAMPION = -1e9  # the score of an item the champion does not know: below every real score
MODES = ("auto", "full", "warm")


class _Record:
    """A step result: a dataclass that round-trips through a JSON-able dict."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class TrainingSet(_Record):
    run_dir: str
    cutoff: str  # ISO timestamp: training data before it, the hold-out from it on
    events: int
    train_events: int
    train_source: str


@dataclass
class Challenger(_Record):
    version: str  # the trained (FP32) challenger
    mode: str  # full | warm, as chosen
    preset: str
    champion: str | None  # production when it trained
    base_version: str | None = None  # warm: the trained version it continued from


@dataclass
class CompressedChallenger(_Record):
    trained_version: str
    served_version: str  # the compression gate's pick, else the folded model
    latency_b1_p50_ms: float
    gate_why: str
    report: dict = field(default_factory=dict)


@dataclass
class Evaluation(_Record):
    holdout_users: int
    challenger_version: str  # the challenger's served version
    challenger: dict[str, float]  # its metrics on the hold-out
    champion_version: str | None = None  # production's (served) version
    champion: dict[str, float] | None = None


@dataclass
class PromotionDecision(_Record):
    promote: bool
    reasons: list[str]
    served_version: str


R = TypeVar("R", bound=_Record)


def run_dir(settings: Settings, run_id: str) -> Path:
    return Path(settings.models_dir) / "runs" / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


def _recorded(path: Path, kind: type[R], make: Callable[[], R]) -> R:
    """The result recorded at ``path``, made (and written) only if absent: tasks re-run idempotently."""
    if path.is_file():
        return kind.from_dict(json.loads(path.read_text()))
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def build_training_set(settings: Settings, run_id: str) -> TrainingSet:
    """Fix the run's data: the hold-out cutoff, the training events from the feature store
    (point in time: each user's sequence just before the cutoff) and the lake's events for
    the hold-out."""
    folder = run_dir(settings, run_id)

    def make() -> TrainingSet:
        cutoff, users, events = _write_lake_events(settings, folder / "events.parquet")
        train = feature_store_event_batches(settings, users, cutoff - pd.Timedelta(microseconds=1))
        written = write_run_events((without_erased(batch, settings) for batch in train), folder / "train_events.parquet")
        lake.read_items(settings.lake_dir).to_parquet(folder / "items.parquet")
        return TrainingSet(str(folder), cutoff.isoformat(), events, written, "feature store (point-in-time join)")

    folder.mkdir(parents=True, exist_ok=True)
    return _recorded(folder / "training_set.json", TrainingSet, make)


def _write_lake_events(settings: Settings, path: Path) -> tuple[pd.Timestamp, pa.Array, int]:
    """The lake's events (no erased user: the ledger) into a run's ``events.parquet``; returns the
    hold-out cutoff, the users with an event before it (in the order of their first) and the
    events written. The lake's Arrow table is let go on return, before the sequences are read."""
    events = LakeEvents.read(settings)
    times = pd.Series(pd.to_datetime(events.times, utc=True))
    cutoff = pd.Timestamp(times.quantile(1.0 - settings.promotion.holdout_fraction))
    return cutoff, events.users_before(cutoff), write_run_events(events.batches(), path)


def _data(dataset: TrainingSet) -> tuple[pd.DataFrame, pd.Timestamp]:
    """(all events of the run, the columns ``time_split`` reads; the cutoff)."""
    return read_split_events(Path(dataset.run_dir) / "events.parquet"), pd.Timestamp(dataset.cutoff)


def _items(dataset: TrainingSet) -> pd.DataFrame:
    return pd.read_parquet(Path(dataset.run_dir) / "items.parquet")


def _training_events(dataset: TrainingSet) -> pd.DataFrame:
    return pd.read_parquet(Path(dataset.run_dir) / "train_events.parquet")


def train_challenger(settings: Settings, dataset: TrainingSet, mode: str = "auto") -> Challenger:
    """Train on the events before the cutoff: ``full`` (from scratch), ``warm`` (continue the
    trained version behind production, even when a compressed variant of it serves) or
    ``auto`` (warm when production's training data ended before some of these events)."""
    if mode not in MODES:
        raise ValueError(f"unknown training mode {mode!r}; choose one of {', '.join(MODES)}")

    def make() -> Challenger:
        items = _items(dataset)
        before = _training_events(dataset)
        champion = production_version(settings)
        base = trained_root(champion, settings) if champion else None
        chosen = mode
        if mode == "auto":
            chosen = "warm" if base and _has_events_after_training(settings, base, before) else "full"
        if chosen == "warm":
            if base is None:
                raise ValueError("mode=warm needs a production model to continue from; there is none")
            version, _ = warm_start(settings, base, events=before, items=items, progress=False)
        else:
            version, _ = train_version(settings, events=before, items=items, protocol="full", progress=False,
                                       checkpoint=False)
        return Challenger(version, chosen, settings.training.preset, champion, base if chosen == "warm" else None)

    return _recorded(Path(dataset.run_dir) / "challenger.json", Challenger, make)


def _has_events_after_training(settings: Settings, trained_version: str, events: pd.DataFrame) -> bool:
    """Whether ``events`` hold any event after the end of ``trained_version``'s training data."""
    data_end = pd.Timestamp(load_recommender(trained_version, settings).metadata["data_end"])
    return bool((events["timestamp"] > data_end).any())


def compress_challenger(settings: Settings, challenger: Challenger, dataset: TrainingSet) -> CompressedChallenger:
    """Every compressed variant of the challenger, measured on the hold-out; the compression gate
    (``settings.compression``) picks the one it would be served as."""
    tune_cpu_runtime(settings.training.num_threads)  # latencies are measured with the threads serving would use

    def make() -> CompressedChallenger:
        events, cutoff = _data(dataset)
        parent = load_recommender(challenger.version, settings)
        split = time_split(events, ItemVocab(parent.item_ids), cutoff)
        result = compress_recommender(parent, split, settings, "lake, time hold-out")
        served = result.measurement(result.served_version)
        return CompressedChallenger(parent.version, result.served_version, served.latency_b1_p50_ms, result.gate.why,
                                    result.report)

    return _recorded(Path(dataset.run_dir) / "compression.json", CompressedChallenger, make)


def _champion_scorer(model: Recommender, vocab: ItemVocab) -> Scorer:
    """Score in ``vocab``'s index space with a model of another vocabulary: history items it does
    not know are dropped, items it does not know rank last, padding is -inf. A history with no
    item it knows gets no score (every item ranks last)."""
    own = {item: index for index, item in enumerate(model.item_ids, start=1)}
    to_model = np.array([PAD] + [own.get(item, PAD) for item in vocab.item_ids], dtype=np.int64)
    known_columns = np.flatnonzero(to_model != PAD)

    def score(histories: list[np.ndarray]) -> np.ndarray:
        out = np.full((len(histories), len(vocab)), UNKNOWN_TO_CHAMPION, dtype=np.float32)
        mapped = [to_model[np.asarray(h, dtype=np.int64)] for h in histories]
        mapped = [m[m != PAD] for m in mapped]
        rows = [row for row, m in enumerate(mapped) if len(m)]
        if rows:
            scores = model.score_indices([mapped[row] for row in rows])
            out[np.ix_(rows, known_columns)] = scores[:, to_model[known_columns]]
        out[:, PAD] = -np.inf
        return out

    return score


def challenger_vs_champion(settings: Settings, compressed: CompressedChallenger, dataset: TrainingSet) -> Evaluation:
    """Metrics of the challenger's served version and of the champion's (production) on the same
    hold-out; no champion metrics when nothing is in production."""

    def make() -> Evaluation:
        events, cutoff = _data(dataset)
        model = load_recommender(compressed.served_version, settings)
        vocab = ItemVocab(model.item_ids)
        split = time_split(events, vocab, cutoff)
        counts = item_counts(split.train, len(vocab))
        result = Evaluation(len(split.test), model.version, evaluate_scorer(model.score_indices, split.test, counts))
        champion = production_version(settings)
        if champion:
            scorer = _champion_scorer(load_recommender(champion, settings), vocab)
            result.champion_version, result.champion = champion, evaluate_scorer(scorer, split.test, counts)
        return result

    return _recorded(Path(dataset.run_dir) / "evaluation.json", Evaluation, make)


def passes_gate(settings: Settings, evaluation: Evaluation, compressed: CompressedChallenger) -> PromotionDecision:
    """The promotion decision with its reasons (``settings.promotion``): the challenger's served
    version must not lose to the champion's (beyond ``max_ndcg_drop_vs_champion``, relative) and
    must meet the batch-1 latency budget."""
    policy = settings.promotion
    reasons = []
    ours = evaluation.challenger[METRIC]
    if evaluation.champion is not None:
        theirs = evaluation.champion[METRIC]
        floor = theirs * (1.0 - policy.max_ndcg_drop_vs_champion)
        if ours < floor:
            reasons.append(f"challenger {METRIC} {ours:.4f} < champion {theirs:.4f} (floor {floor:.4f})")
    if compressed.latency_b1_p50_ms > policy.latency_budget_ms:
        reasons.append(f"served model p50 {compressed.latency_b1_p50_ms:.2f} ms > budget {policy.latency_budget_ms:.2f} ms")
    wins = f"challenger {METRIC} {ours:.4f}" + (f" vs champion {evaluation.champion[METRIC]:.4f}"
                                                if evaluation.champion is not None else " (no champion)")
    return PromotionDecision(not reasons, reasons or [wins], compressed.served_version)
