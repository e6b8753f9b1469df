"""Training data: canonical events -> per-user item sequences -> index tensors.

Sequences follow ``shoprec.features.sequence.recent_items`` (the one definition of a
user's sequence; ``user_sequences`` is its vectorised form, tested against it), so
training sees exactly what serving will see. Item index
0 is padding; the vocabulary (``training.vocab``) maps item_id strings to 1..n.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from shoprec import lake
from shoprec.adapters import read_batch
from shoprec.config import SHARED_DATA_DIR
from shoprec.features.sequence import recent_items
from shoprec.schema import conform_events
from training.vocab import PAD, ItemVocab, pad_left  # noqa: F401  (pad_left: callers import it from here)


def load_events(source: str, settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, items) for training: ``lake`` (ingested data) or ``beauty`` (the benchmark file).

    The benchmark and ``shoprec train`` read whole histories here; the training DAG
    reads the feature store instead (``feature_store_events``).
    """
    if source == "lake":
        events = lake.read_events(settings.lake_dir)
        if events.empty:
            raise ValueError(f"the lake at {settings.lake_dir} holds no events; run `shoprec ingest` first")
        return events, lake.read_items(settings.lake_dir)
    if source == "beauty":
        batch = read_batch("s3rec", SHARED_DATA_DIR / "amazon-beauty")
        return batch.events, batch.items
    raise ValueError(f"unknown data source {source!r}; choose lake or beauty")


def feature_store_events(settings, user_ids, as_of: pd.Timestamp) -> pd.DataFrame:
    """Each user's recent events as of ``as_of``, from the feature store's offline side.

    A Feast point-in-time join on ``user_recent_items`` (one entity row per user, at
    ``as_of``), exploded back into events: the last ``features.sequence_length`` events of
    each user that the online store would have served at that moment, and nothing later.
    """
    from shoprec.features.store import training_set  # Feast: seconds to import, which a training process never needs

    refs = [f"user_recent_items:{c}" for c in ("item_ids", "event_types", "timestamps")]
    entity = pd.DataFrame({"user_id": pd.Series(user_ids, dtype="string"), "event_timestamp": pd.Timestamp(as_of)})
    rows = training_set(entity, settings, refs)
    rows = rows[rows["item_ids"].map(lambda xs: xs is not None and not isinstance(xs, float) and len(xs) > 0)]
    if rows.empty:
        raise ValueError(f"the feature store holds no user sequence as of {as_of}; run the features DAG first")
    events = rows[["user_id", "item_ids", "event_types", "timestamps"]].explode(["item_ids", "event_types", "timestamps"])
    events = events.rename(columns={"item_ids": "item_id", "event_types": "event_type", "timestamps": "timestamp"})
    return conform_events(events.reset_index(drop=True))


def user_sequences(events: pd.DataFrame, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per user the whole item history, oldest first: columns user_id, item_ids, timestamps (arrays).

    ``recent_items(events, None, as_of)``'s rule (stable sort by user and time, users in
    sorted order; a test checks they agree) in one vectorised pass: its per-group list
    aggregation builds a Timestamp object per event, 10 M of them for a 10 M-event shop
    (minutes); here each user's items and times are slices of two sorted arrays.
    """
    if events.empty:
        raise ValueError("no events to build sequences from")
    if as_of is not None:
        events = events[events["timestamp"] <= as_of]
    ordered = events[["user_id", "item_id", "timestamp"]].sort_values(["user_id", "timestamp"], kind="stable")
    if ordered.empty:
        raise ValueError(f"no events before {as_of} to build sequences from")
    users = ordered["user_id"]
    codes = pd.factorize(users.to_numpy(dtype=object))[0]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    items = np.split(ordered["item_id"].astype(str).to_numpy(dtype=object), starts[1:])
    times = np.split(ordered["timestamp"].to_numpy(), starts[1:])
    return pd.DataFrame({"user_id": users.iloc[starts].astype(str).to_numpy(dtype=object), "item_ids": items,
                         "timestamps": times})


def fingerprint(events: pd.DataFrame) -> str:
    """Content hash of the training events (user, item, time), independent of row order."""
    cols = events[["user_id", "item_id", "timestamp"]].sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    return hashlib.sha256(pd.util.hash_pandas_object(cols, index=False).values.tobytes()).hexdigest()[:16]


def encode_sequences(item_lists, vocab: ItemVocab) -> list[np.ndarray]:
    """``[vocab.encode(items) for items in item_lists]`` in one vectorised lookup (unknown ids dropped):
    a dictionary lookup per event in Python took minutes for a 10 M-event shop."""
    lengths = np.fromiter((len(items) for items in item_lists), dtype=np.int64, count=len(item_lists))
    if lengths.sum() == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(len(item_lists))]
    flat = pd.Series(np.concatenate([np.asarray(items, dtype=object) for items in item_lists]), dtype=object)
    codes = flat.astype(str).map(vocab.index)
    known = codes.notna().to_numpy()
    owners = np.repeat(np.arange(len(item_lists)), lengths)[known]
    values = codes.to_numpy()[known].astype(np.int64)
    return np.split(values, np.cumsum(np.bincount(owners, minlength=len(item_lists)))[:-1])


@dataclass
class EvalSet:
    """Inputs (index arrays, oldest first) and the one target each; users with nothing to predict are left out."""

    inputs: list[np.ndarray]
    targets: np.ndarray
    user_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)


    def sample(self, max_users: int, seed: int) -> "EvalSet":
        """At most ``max_users`` of its users, a seeded random choice kept in their order (0: all)."""
        if not max_users or len(self) <= max_users:
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), max_users, replace=False))
        return EvalSet([self.inputs[i] for i in rows], self.targets[rows],
                       [self.user_ids[i] for i in rows] if self.user_ids else [])


@dataclass
class SplitData:
    train: list[np.ndarray]  # training sequences; every position predicts the next one
    valid: EvalSet
    test: EvalSet | None
    protocol: str

    def with_eval_scores(self, max_scores: int, n_items: int, seed: int) -> "SplitData":
        """The same training data, each evaluation set sampled down to ``max_scores // n_items`` users
        (``EvalSet.sample``; 0: all).

        Ranking 400,000 users against 100,000 items is 4e10 scores per scorer, minutes on two
        cores; the default 2e9 keeps 20,000 of them (NDCG@10 to about +-0.002) and every user of
        Beauty (22,363 users x 12,101 items)."""
        max_users = max(1, max_scores // max(n_items, 1)) if max_scores else 0
        test = None if self.test is None else self.test.sample(max_users, seed)
        return SplitData(self.train, self.valid.sample(max_users, seed), test, self.protocol)


def _eval_set(users: list[str], seqs: list[np.ndarray], n_input: int) -> EvalSet:
    """Target = item at position ``n_input``, input = everything before it (never the target)."""
    keep = [(u, s) for u, s in zip(users, seqs) if len(s) > n_input >= 1] if n_input > 0 else []
    return EvalSet([s[:n_input] for _, s in keep], np.array([s[n_input] for _, s in keep], dtype=np.int64), [u for u, _ in keep])


def leave_one_out(sequences: pd.DataFrame, vocab: ItemVocab) -> SplitData:
    """The benchmark protocol: last item = test, second-to-last = validation, the rest trains.

    Users with fewer than 3 items only train (nothing left to validate and test on).
    """
    users = sequences["user_id"].astype(str).tolist()
    encoded = encode_sequences(sequences["item_ids"], vocab)
    train, valid_in, valid_t, valid_u, test_in, test_t, test_u = [], [], [], [], [], [], []
    for user, seq in zip(users, encoded):
        if len(seq) < 3:
            train.append(seq)
            continue
        train.append(seq[:-2])
        valid_in.append(seq[:-2]), valid_t.append(seq[-2]), valid_u.append(user)
        test_in.append(seq[:-1]), test_t.append(seq[-1]), test_u.append(user)
    return SplitData(
        train=[s for s in train if len(s) >= 2],
        valid=EvalSet(valid_in, np.array(valid_t, dtype=np.int64), valid_u),
        test=EvalSet(test_in, np.array(test_t, dtype=np.int64), test_u),
        protocol="loo",
    )


def full_split(sequences: pd.DataFrame, vocab: ItemVocab) -> SplitData:
    """The production protocol: train on everything but each user's last item, which picks the epoch."""
    users = sequences["user_id"].astype(str).tolist()
    encoded = encode_sequences(sequences["item_ids"], vocab)
    valid = EvalSet(
        [s[:-1] for s in encoded if len(s) >= 2],
        np.array([s[-1] for s in encoded if len(s) >= 2], dtype=np.int64),
        [u for u, s in zip(users, encoded) if len(s) >= 2],
    )
    return SplitData(train=[s[:-1] for s in encoded if len(s) >= 3], valid=valid, test=None, protocol="full")


def time_split(events: pd.DataFrame, vocab: ItemVocab, cutoff: pd.Timestamp) -> SplitData:
    """Shop data with real timestamps: train before ``cutoff``; each returning user's first
    later item is the target, predicted from their history before the cutoff."""
    history = user_sequences(events[events["timestamp"] < cutoff])
    later = recent_items(events[events["timestamp"] >= cutoff], None)
    first_after = dict(zip(later["user_id"].astype(str), (ids[0] for ids in later["item_ids"])))
    train = encode_sequences(history["item_ids"], vocab)
    inputs, targets, users = [], [], []
    for user, seq in zip(history["user_id"].astype(str), train):
        target = vocab.encode([first_after.get(user, "")])
        if len(seq) and len(target):
            inputs.append(seq), targets.append(target[0]), users.append(user)
    evalset = EvalSet(inputs, np.array(targets, dtype=np.int64), users)
    return SplitData(train=[s for s in train if len(s) >= 2], valid=evalset, test=evalset, protocol="time")


def item_counts(train: list[np.ndarray], n_vocab: int) -> np.ndarray:
    """Interactions per vocabulary index in the training sequences (index 0 stays 0)."""
    counts = np.bincount(np.concatenate(train) if train else np.zeros(0, np.int64), minlength=n_vocab)
    counts[PAD] = 0
    return counts
