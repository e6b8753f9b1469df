"""The vectorised ``time_split`` (training.data): its edge cases. ``tests/test_training_set.py``
compares it with its ``recent_items`` definition on a whole shop."""

import pandas as pd

from training.data import ItemVocab, time_split


def test_time_split_leaves_out_users_whose_first_later_item_is_unknown_and_keeps_input_order_on_ties():
    t = lambda day: pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=day)  # noqa: E731
    events = pd.DataFrame({
        "user_id": ["a", "a", "a", "b", "b", "b", "c", "c"],
        "item_id": ["1", "2", "x", "1", "3", "2", "2", "1"],
        "timestamp": [t(0), t(5), t(6), t(0), t(5), t(5), t(1), t(2)],
    })
    vocab = ItemVocab(["1", "2", "3"])  # "x" unknown
    split = time_split(events, vocab, cutoff=t(3))
    assert split.valid.user_ids == ["a", "b"]  # c never returns
    assert split.valid.targets.tolist() == [vocab.index["2"], vocab.index["3"]]  # b: tie at t(5), input order
    unknown_first = time_split(events.replace({"item_id": {"2": "y"}}), vocab, cutoff=t(3))
    assert unknown_first.valid.user_ids == ["b"]  # a's first later item is unknown: a is left out
