"""The training DAG's run data, read in bounded memory, against the definitions it replaced.

``build_training_set`` reads the lake as Arrow (``LakeEvents``) and the training sequences by
a pyarrow point-in-time read of ``user_recent_items`` (``store.rows_as_of``), written a row
group at a time. Here a small shop (two batches that overlap, events at the same time,
sub-microsecond times, a user erased after the tables were built) is checked row for row
against the old definitions: ``lake.read_events`` less erased users, and Feast's point-in-time
join (``store.training_set``) exploded into events.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shoprec import lake, ledger
from shoprec.adapters.base import Batch
from shoprec.config import load_settings
from shoprec.features import store as feast_store
from shoprec.features import tables
from shoprec.ledger import drop_erased
from shoprec.schema import conform_events
from simulator.shop import generate
from training.champion import build_training_set
from shoprec.features.sequence import recent_items
from training.data import (EvalSet, ItemVocab, LakeEvents, SplitData, encode_sequences, encoded_histories,
                           feature_store_event_batches, feature_store_events, read_split_events, time_split,
                           user_sequences)
from training.vocab import PAD

ONE_US = pd.Timedelta(microseconds=1)
REFS = [f"user_recent_items:{c}" for c in ("item_ids", "event_types", "timestamps")]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """(settings, erased user) of a built and applied feature store over a lake of two overlapping batches."""
    settings = load_settings(home=tmp_path_factory.mktemp("training-set"), features={"sequence_length": 6})
    batch = generate(4000, seed=3)
    events = batch.events.reset_index(drop=True)
    events.loc[::7, "timestamp"] += pd.Timedelta(nanoseconds=999)  # below the offline store's microseconds
    ties = events.head(150).assign(item_id=events["item_id"].iloc[-1])  # same user and time, another item
    events = pd.concat([events, ties], ignore_index=True).sample(frac=1.0, random_state=1).reset_index(drop=True)
    lake.write_batch(settings.lake_dir, Batch.from_frames(events.iloc[:3000], batch.items))
    lake.write_batch(settings.lake_dir, Batch.from_frames(events.iloc[2500:], batch.items))  # 500 events twice
    tables.build_tables(settings, encode_texts=False)
    feast_store.apply(settings)
    erased = str(events["user_id"].value_counts().index[0])
    ledger.record(settings, erased)  # after the build: the tables still hold the user, the run data must not
    return settings, erased


def feast_training_events(settings, user_ids, as_of: pd.Timestamp) -> pd.DataFrame:
    """The old ``feature_store_events``: Feast's point-in-time join, exploded into events."""
    entity = pd.DataFrame({"user_id": pd.Series(user_ids, dtype="string"), "event_timestamp": pd.Timestamp(as_of)})
    rows = feast_store.training_set(entity, settings, REFS)
    rows = rows[rows["item_ids"].map(lambda xs: xs is not None and not isinstance(xs, float) and len(xs) > 0)]
    events = rows[["user_id", "item_ids", "event_types", "timestamps"]].explode(["item_ids", "event_types", "timestamps"])
    events = events.rename(columns={"item_ids": "item_id", "event_types": "event_type", "timestamps": "timestamp"})
    return conform_events(events.reset_index(drop=True))


def reference_run(settings) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """The old ``build_training_set``'s data: (events, training events, cutoff)."""
    events = drop_erased(lake.read_events(settings.lake_dir), settings)
    cutoff = pd.Timestamp(events["timestamp"].quantile(1.0 - settings.promotion.holdout_fraction))
    before = events[events["timestamp"] < cutoff]
    train = feast_training_events(settings, before["user_id"].unique(), cutoff - ONE_US)
    return events, drop_erased(train, settings), cutoff


def test_lake_events_are_read_events_less_erased_users(shop):
    settings, erased = shop
    events = LakeEvents.read(settings)
    got = pd.concat([b.to_pandas() for b in events.batches(rows_per_batch=777)], ignore_index=True)
    reference = drop_erased(lake.read_events(settings.lake_dir), settings)
    assert len(reference) < len(lake.read_events(settings.lake_dir)) and erased not in set(got["user_id"])
    pd.testing.assert_frame_equal(conform_events(got), reference)
    assert (events.times == pd.DatetimeIndex(reference["timestamp"]).asi8).all()


def test_training_set_files_equal_the_old_definition_row_for_row(shop):
    settings, _ = shop
    dataset = build_training_set(settings, "pyarrow-read")
    events, train, cutoff = reference_run(settings)
    assert pd.Timestamp(dataset.cutoff) == cutoff and (dataset.events, dataset.train_events) == (len(events), len(train))
    folder = Path(dataset.run_dir)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "events.parquet"), events)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "train_events.parquet"), train)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "items.parquet"), lake.read_items(settings.lake_dir))


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.9, 1.0])
def test_sequences_as_of_any_time_equal_feasts_point_in_time_join(shop, quantile):
    settings, _ = shop
    events = lake.read_events(settings.lake_dir)
    as_of = events["timestamp"].quantile(quantile) + pd.Timedelta(nanoseconds=500)  # floored to microseconds, as Feast
    users = list(dict.fromkeys(events["user_id"].sample(frac=0.7, random_state=2)))  # some never seen by then
    reference = feast_training_events(settings, users, as_of)
    pd.testing.assert_frame_equal(feature_store_events(settings, users, as_of), reference)
    batches = list(feature_store_event_batches(settings, pa.array(users), as_of, users_per_batch=7))
    assert len(batches) > 1
    pd.testing.assert_frame_equal(conform_events(pa.concat_tables(batches).to_pandas()), reference)


def test_no_sequence_before_the_time_is_refused(shop):
    settings, _ = shop
    with pytest.raises(ValueError, match="no user sequence"):
        feature_store_events(settings, ["anyone"], pd.Timestamp("2000-01-01", tz="UTC"))


def reference_time_split(events: pd.DataFrame, vocab: ItemVocab, cutoff: pd.Timestamp) -> SplitData:
    """``time_split`` by its definition: ``recent_items`` before the cutoff, the first item after it."""
    history = recent_items(events[events["timestamp"] < cutoff], None)
    later = recent_items(events[events["timestamp"] >= cutoff], None)
    first_after = dict(zip(later["user_id"].astype(str), (ids[0] for ids in later["item_ids"])))
    train = [vocab.encode(items) for items in history["item_ids"]]
    inputs, targets, users = [], [], []
    for user, seq in zip(history["user_id"].astype(str), train):
        target = vocab.encode([first_after.get(user, "")])
        if len(seq) and len(target):
            inputs.append(seq), targets.append(target[0]), users.append(user)
    evalset = EvalSet(inputs, np.array(targets, dtype=np.int64), users)
    return SplitData(train=[s for s in train if len(s) >= 2], valid=evalset, test=evalset, protocol="time")


def test_the_hold_out_read_as_categoricals_gives_the_defined_time_split(shop):
    settings, _ = shop
    dataset = build_training_set(settings, "pyarrow-read")
    path = Path(dataset.run_dir) / "events.parquet"
    full, lean = pd.read_parquet(path), read_split_events(path)
    vocab = ItemVocab.from_events(full.sample(frac=0.8, random_state=0))  # some items unknown to the model
    cutoff = pd.Timestamp(dataset.cutoff)
    reference = reference_time_split(full, vocab, cutoff)
    for ours in (time_split(lean, vocab, cutoff), time_split(full, vocab, cutoff)):
        assert ours.valid.user_ids == reference.valid.user_ids and len(ours.valid) > 0
        assert (ours.valid.targets == reference.valid.targets).all() and PAD not in ours.valid.targets
        assert [s.tolist() for s in ours.valid.inputs] == [s.tolist() for s in reference.valid.inputs]
        assert [s.tolist() for s in ours.train] == [s.tolist() for s in reference.train]


def test_encoded_histories_are_user_sequences_encoded_on_shuffled_events_with_ties():
    events = generate(3000, seed=5).events
    events = pd.concat([events, events.head(200).assign(item_id="tie-item")])  # same user and time: ties
    events = events.sample(frac=1.0, random_state=0).reset_index(drop=True)
    vocab = ItemVocab(sorted(set(events["item_id"]))[::2])  # half the items unknown: dropped
    reference = user_sequences(events)
    expected = [e.tolist() for e in encode_sequences(reference["item_ids"], vocab)]
    categorical = events.assign(user_id=pd.Categorical(events["user_id"], sorted(set(events["user_id"]))),
                                item_id=events["item_id"].astype("category"))
    for frame in (events, categorical):
        users, encoded = encoded_histories(frame, vocab)
        assert users.tolist() == reference["user_id"].astype(str).tolist()
        assert [e.tolist() for e in encoded] == expected and all(e.dtype == np.int64 for e in encoded)
