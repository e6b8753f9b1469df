"""Metrics and the evaluation protocol against hand-computed examples."""

import math

import numpy as np
import pandas as pd
import pytest

from training.data import EvalSet, ItemVocab, leave_one_out, pad_left, time_split, user_sequences
from training.evaluate import evaluate_scorer
from training.metrics import NDCG, Coverage, HitRate, PopularityBias, target_ranks
from training.trainer import training_examples


def test_hit_rate_and_ndcg_by_hand():
    ranks = np.array([0, 1, 4, 9, 10, 30])
    assert HitRate(5)(ranks) == pytest.approx(3 / 6)
    assert HitRate(10)(ranks) == pytest.approx(4 / 6)
    expected = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert NDCG(10)(ranks) == pytest.approx(expected)
    assert NDCG(5)(ranks) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6)


def test_ties_count_against_the_target():
    scores = np.array([[0.0, 1.0, 1.0, 0.5]])
    assert target_ranks(scores, np.array([2]))[0] == 0  # only strictly greater scores rank above
    assert target_ranks(scores, np.array([3]))[0] == 2


def test_coverage_and_popularity_bias_by_hand():
    top = np.array([[0, 1], [0, 2]])
    assert Coverage(2)(top_items=top, n_items=4) == pytest.approx(3 / 4)
    counts = np.array([10, 5, 1, 0])  # percentiles: item0 1.0, item1 2/3, item2 1/3, item3 0
    assert PopularityBias(2)(top_items=top, item_counts=counts) == pytest.approx((1 + 2 / 3 + 1 + 1 / 3) / 4)


def test_history_items_are_excluded_from_the_ranking():
    # item 1 scores highest but is in the history: the target (item 2) must rank first
    def scorer(histories):
        return np.tile(np.array([0.0, 9.0, 5.0, 1.0], dtype=np.float32), (len(histories), 1))

    evalset = EvalSet([np.array([1])], np.array([2]))
    report = evaluate_scorer(scorer, evalset, counts=np.array([0, 1, 1, 1]))
    assert report["HR@5"] == 1.0 and report["NDCG@5"] == pytest.approx(1.0)


def test_empty_evaluation_set_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        evaluate_scorer(lambda h: None, EvalSet([], np.zeros(0, np.int64)), counts=np.zeros(3))


def test_leave_one_out_never_puts_the_target_into_the_input():
    events = pd.DataFrame({
        "user_id": ["a"] * 5 + ["b"] * 3 + ["c"] * 2,
        "item_id": ["1", "2", "3", "4", "5", "3", "1", "2", "4", "5"],
        "event_type": "purchase",
        "timestamp": pd.to_datetime(list(range(10)), unit="D", utc=True),
    })
    vocab = ItemVocab.from_events(events)
    split = leave_one_out(user_sequences(events), vocab)
    a = [vocab.index[i] for i in "12345"]
    assert list(split.train[0]) == a[:3]  # user a trains on all but the last two
    assert list(split.valid.inputs[0]) == a[:3] and split.valid.targets[0] == a[3]
    assert list(split.test.inputs[0]) == a[:4] and split.test.targets[0] == a[4]
    assert split.valid.user_ids == ["a", "b"] and split.test.user_ids == ["a", "b"]  # c has too few items
    full = {u: vocab.encode(s) for u, s in zip(user_sequences(events)["user_id"], user_sequences(events)["item_ids"])}
    for evalset in (split.valid, split.test):
        for history, target, user in zip(evalset.inputs, evalset.targets, evalset.user_ids):
            cut = len(history)  # the input is exactly the prefix before the target's position
            assert list(full[user][:cut]) == list(history) and full[user][cut] == target
    _, train_targets, _ = training_examples(split.train, max_len=10)
    assert list(train_targets[0][train_targets[0] > 0]) == a[1:3]  # a's training never predicts its valid/test items
    assert all(s[0] != vocab.index["3"] for s in split.train)  # b keeps one item: no (input, next) pair to train on


def test_pad_left_keeps_the_most_recent_items_and_their_positions():
    items, positions = pad_left([np.array([1, 2, 3, 4, 5]), np.array([7])], max_len=3)
    assert items.tolist() == [[3, 4, 5], [0, 0, 7]]
    assert positions.tolist() == [[0, 1, 2], [0, 1, 2]]
    items, positions = pad_left([np.array([1, 2])], max_len=4)
    assert items.tolist() == [[1, 2]] and positions.tolist() == [[2, 3]]


def test_time_split_predicts_the_first_item_after_the_cutoff_from_history_before_it():
    t = lambda day: pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=day)  # noqa: E731
    events = pd.DataFrame({
        "user_id": ["a", "a", "a", "a", "b", "b", "c"],
        "item_id": ["1", "2", "3", "4", "1", "2", "5"],
        "event_type": "view",
        "timestamp": [t(0), t(1), t(5), t(6), t(0), t(1), t(7)],
    })
    vocab = ItemVocab.from_events(events)
    split = time_split(events, vocab, cutoff=t(3))
    assert split.valid.user_ids == ["a"]  # b never returns, c has no history before the cutoff
    assert list(split.valid.inputs[0]) == [vocab.index["1"], vocab.index["2"]]
    assert split.valid.targets[0] == vocab.index["3"]
    assert all(vocab.index["3"] not in s and vocab.index["4"] not in s for s in split.train)
