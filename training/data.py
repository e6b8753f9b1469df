"""Training data: canonical events -> per-user item sequences -> index tensors.

Sequences follow ``shoprec.features.sequence.recent_items`` (the one definition of a
user's sequence; ``user_sequences`` is its vectorised form, tested against it), so
training sees exactly what serving will see. Item index
0 is padding; the vocabulary (``training.vocab``) maps item_id strings to 1..n.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shoprec import lake
from shoprec.adapters import read_batch
from shoprec.config import SHARED_DATA_DIR
from shoprec.durable import replacing
from shoprec.ledger import erased_keys, erased_mask
from shoprec.schema import EVENT_ARROW_SCHEMA, conform_events, empty_events
from training.vocab import PAD, ItemVocab, pad_left  # noqa: F401  (pad_left: callers import it from here)

# A run's event files (``training.champion``): the dtypes ``DataFrame.to_parquet`` of canonical
# events wrote, so ``pd.read_parquet`` reads them back as ever; written a row group at a time.
RUN_EVENTS_SCHEMA = pa.Schema.from_pandas(empty_events(), preserve_index=False)
RUN_ROW_GROUP_ROWS = 262_144
SEQUENCE_USERS_PER_BATCH = 50_000  # users' sequences exploded into events at a time (about 1.2 M events)
SPLIT_COLUMNS = ("user_id", "item_id", "timestamp")  # what ``time_split`` reads


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

    The point-in-time read of ``user_recent_items`` (``store.rows_as_of``: each user's
    newest row at or before ``as_of``, the rule of Feast's point-in-time join), exploded
    back into events: the last ``features.sequence_length`` events of each user that the
    online store would have served at that moment, and nothing later. Users in the given
    order, each one's events oldest first; users without a sequence are absent.
    """
    batches = feature_store_event_batches(settings, pa.array(pd.Series(user_ids, dtype="string"), pa.string()), as_of)
    return conform_events(pa.concat_tables(batches).to_pandas())


def feature_store_event_batches(settings, user_ids: pa.Array, as_of: pd.Timestamp,
                                users_per_batch: int = SEQUENCE_USERS_PER_BATCH) -> Iterator[pa.Table]:
    """``feature_store_events`` as Arrow tables of ``RUN_EVENTS_SCHEMA``, ``users_per_batch``
    users' sequences at a time: what ``build_training_set`` writes, never exploded all at once."""
    from shoprec.features.store import rows_as_of  # Feast: seconds to import, which a training process never needs

    rows = rows_as_of(settings, "user_recent_items", "user_id", user_ids, as_of)
    rows = rows.filter(pc.fill_null(pc.greater(pc.list_value_length(rows.column("item_ids")), 0), False))
    if not rows.num_rows:
        raise ValueError(f"the feature store holds no user sequence as of {as_of}; run the features DAG first")
    for start in range(0, rows.num_rows, users_per_batch):
        yield _exploded(rows.slice(start, users_per_batch).combine_chunks())


def _exploded(rows: pa.Table) -> pa.Table:
    """Sequence rows (user_id, item_ids, event_types, timestamps) as one event row per list element."""
    items = rows.column("item_ids").combine_chunks()
    columns = {
        "user_id": rows.column("user_id").take(pc.list_parent_indices(items)),
        "item_id": pc.list_flatten(items),
        "event_type": pc.list_flatten(rows.column("event_types")),
        "timestamp": pc.list_flatten(rows.column("timestamps")).cast(RUN_EVENTS_SCHEMA.field("timestamp").type),
    }
    n = len(columns["item_id"])
    return pa.table([columns.get(f.name, pa.nulls(n, f.type)) for f in RUN_EVENTS_SCHEMA], schema=RUN_EVENTS_SCHEMA)


@dataclass(frozen=True)
class LakeEvents:
    """The lake's events as ``lake.read_events`` gives them, less erased users (``shoprec.ledger``),
    kept as the Arrow table of its files and the order of the rows to take.

    ``read_events`` holds the events as pandas strings (1 M events: 628 MB peak, against 382 MB
    here, process included); here they stay Arrow, and its rule (each event once across
    batches, the first read kept; ordered by time, then user, stably) runs on integer codes.
    The lake holds canonical events (``conform_events`` ran at ingest), so they are taken as
    they are. A test checks the rows are ``read_events``'."""

    table: pa.Table  # every row of the lake's files, in file order
    rows: np.ndarray  # the rows ``read_events`` returns (duplicates and erased users left out), in its order
    times: np.ndarray  # their event times (ns)
    users: np.ndarray  # their users, as codes into ``user_ids``
    user_ids: pa.Array

    @classmethod
    def read(cls, settings) -> "LakeEvents":
        files = lake.event_files(settings.lake_dir)
        if not files:
            raise ValueError(f"the lake at {settings.lake_dir} holds no events; run `shoprec ingest` first")
        table = pa.concat_tables(pq.read_table(f, schema=EVENT_ARROW_SCHEMA) for f in files)
        if not table.num_rows:  # files an erasure left empty
            raise ValueError(f"the lake at {settings.lake_dir} holds no events; run `shoprec ingest` first")
        users, user_ids = _codes(table.column("user_id"))
        times = table.column("timestamp").cast(pa.int64()).to_numpy()
        by_user = _sorted_ranks(user_ids)[users]
        keys = (_codes(table.column("event_type"))[0], _codes(table.column("item_id"))[0], by_user, times)
        order = np.lexsort(keys)  # stable: equal events lie together, the first read first (the one kept)
        first = np.r_[True, np.any([np.diff(key[order]) != 0 for key in keys], axis=0)]
        rows = np.sort(order[first])
        rows = rows[~_erased(user_ids, settings)[users[rows]]]
        rows = rows[np.lexsort((by_user[rows], times[rows]))]
        return cls(table, rows, times[rows], users[rows], user_ids)

    def batches(self, rows_per_batch: int = RUN_ROW_GROUP_ROWS) -> Iterator[pa.Table]:
        for start in range(0, len(self.rows), rows_per_batch):
            yield self.table.take(pa.array(self.rows[start:start + rows_per_batch]))

    def users_before(self, cutoff: pd.Timestamp) -> pa.Array:
        """The users with an event before ``cutoff``, in the order of their first one."""
        return self.user_ids.take(pa.array(pd.unique(self.users[self.times < cutoff.value])))


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(each row's value as an index into the distinct values (-1: null), the distinct values)."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    return pc.fill_null(encoded.indices, -1).to_numpy(), encoded.dictionary


def _sorted_ranks(values: pa.Array) -> np.ndarray:
    """Each value's position in sorted order (what ``sort_values`` orders strings by: code points)."""
    ranks = np.empty(len(values), np.int64)
    ranks[pc.array_sort_indices(values).to_numpy()] = np.arange(len(values))
    return ranks


def _erased(user_ids: pa.Array, settings) -> np.ndarray:
    """Per user id, whether the user was erased (``ledger.drop_erased``'s rule)."""
    return erased_mask(pd.Series(user_ids.to_pandas()), erased_keys(settings)).to_numpy(dtype=bool)


def without_erased(table: pa.Table, settings) -> pa.Table:
    """``ledger.drop_erased`` of an Arrow table of events."""
    users, user_ids = _codes(table.column("user_id"))
    erased = _erased(user_ids, settings)
    return table.filter(pa.array(~erased[users])) if erased.any() else table


def write_run_events(batches: Iterable[pa.Table], path: Path) -> int:
    """Event tables into one Parquet file that ``pd.read_parquet`` reads with the canonical
    dtypes (``RUN_EVENTS_SCHEMA``), a row group at a time; returns the rows written."""
    rows = 0
    with replacing(path) as tmp, pq.ParquetWriter(tmp, RUN_EVENTS_SCHEMA) as writer:  # a crash leaves no footerless file
        for batch in batches:
            writer.write_table(batch, row_group_size=RUN_ROW_GROUP_ROWS)
            rows += batch.num_rows
    return rows


def read_split_events(path: Path) -> pd.DataFrame:
    """The columns ``time_split`` reads of a run's events file, ids as categoricals in sorted
    order (so sorting by them is sorting by the ids): reading a 10 M-event run and its
    ``time_split`` peaked at 5.4 GB with every column as pandas strings, 1.5 GB so."""
    frame = pq.read_table(path, columns=list(SPLIT_COLUMNS), read_dictionary=["user_id", "item_id"]).to_pandas()
    for column in ("user_id", "item_id"):
        frame[column] = frame[column].cat.reorder_categories(sorted(frame[column].cat.categories))
    return frame


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


def encoded_histories(events: pd.DataFrame, vocab: ItemVocab) -> tuple[pd.Series, list[np.ndarray]]:
    """``user_sequences(events)``'s users (as strings) and their item sequences encoded
    (``encode_sequences``), on integer codes: for ``time_split`` in compress and evaluate, the
    string arrays per user took 240 MB at 1 M events, the codes 68 MB. A test checks both
    give the same."""
    if events.empty:
        raise ValueError("no events to build sequences from")
    users, user_ids = pd.factorize(events["user_id"], sort=True)
    items, item_ids = pd.factorize(events["item_id"])
    index = pd.Series(np.asarray(item_ids, dtype=object)).astype(str).map(vocab.index).fillna(PAD).to_numpy(np.int64)
    codes = np.r_[index, PAD][items]  # a missing id (-1) takes the PAD appended last: dropped, as unknown
    order = np.lexsort((pd.DatetimeIndex(events["timestamp"]).asi8, users))  # stable, as user_sequences' sort
    owner, codes = users[order], codes[order]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    known = codes != PAD
    counts = np.add.reduceat(known.astype(np.int64), starts)
    return (pd.Series(np.asarray(user_ids, dtype=object)[owner[starts]]).astype(str),
            np.split(codes[known], np.cumsum(counts)[:-1]))


def time_split(events: pd.DataFrame, vocab: ItemVocab, cutoff: pd.Timestamp) -> SplitData:
    """Shop data with real timestamps: train before ``cutoff``; each returning user's first
    later item is the target, predicted from their history before the cutoff.

    Vectorised (``recent_items``' order: stable by user and time): a per-user Python loop and
    list aggregation over the hold-out took tens of seconds for a 400,000-user shop."""
    users, train = encoded_histories(events[events["timestamp"] < cutoff], vocab)
    later = events.loc[events["timestamp"] >= cutoff, ["user_id", "item_id", "timestamp"]]
    first = later.sort_values(["user_id", "timestamp"], kind="stable").drop_duplicates("user_id")
    target_of = pd.Series(first["item_id"].astype(str).map(vocab.index).to_numpy(),
                          index=first["user_id"].astype(str).to_numpy())
    targets = users.map(target_of).to_numpy(dtype=np.float64)  # NaN: no later event, or its item is unknown
    lengths = np.fromiter((len(s) for s in train), dtype=np.int64, count=len(train))
    keep = np.flatnonzero(~np.isnan(targets) & (lengths > 0))
    evalset = EvalSet([train[i] for i in keep], targets[keep].astype(np.int64), users.to_numpy()[keep].tolist())
    return SplitData(train=[s for s in train if len(s) >= 2], valid=evalset, test=evalset, protocol="time")


def item_counts(train: list[np.ndarray], n_vocab: int) -> np.ndarray:
    """Interactions per vocabulary index in the training sequences (index 0 stays 0)."""
    counts = np.bincount(np.concatenate(train) if train else np.zeros(0, np.int64), minlength=n_vocab)
    counts[PAD] = 0
    return counts
