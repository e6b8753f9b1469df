"""``auto`` dropout and learning rate (training.trainer.choose_regime): chosen from the passes over
the data that the positions budget allows, recorded in the artifact; an explicit value wins.
And the vectorised ``time_split``'s edge cases."""

import numpy as np
import pandas as pd
import pytest

from shoprec.config import load_hyperparameters, load_settings
from training.artifact import load_recommender
from training.data import ItemVocab, time_split
from training.pipeline import train_version
from training.trainer import MANY_PASSES, REGIMES, choose_regime, epoch_positions, training_examples

AUTO = {"dropout": "auto", "attn_dropout": "auto", "lr": "auto"}


def test_the_full_preset_leaves_dropout_and_lr_to_the_rule():
    hp = load_hyperparameters("sasrec", "full")
    assert (hp.dropout, hp.attn_dropout, hp.lr) == ("auto", "auto", "auto")


@pytest.mark.parametrize("positions_per_epoch, regime, passes", [
    (128_031, "many passes", 62.48),  # Beauty, leave-one-out (its positions per epoch): the Beauty values
    (1_000_000, "many passes", 8.0),  # exactly MANY_PASSES
    (2_000_000, "few passes", 4.0),  # the 3 M-event shop
    (7_000_000, "few passes", 1.14),  # the 10 M-event shop
])
def test_auto_follows_the_passes_the_budget_allows(positions_per_epoch, regime, passes):
    hp = load_hyperparameters("sasrec", "full", {"max_train_positions": 8_000_000})
    resolved, choice = choose_regime(hp, positions_per_epoch)
    assert (choice.regime, choice.passes, choice.threshold) == (regime, passes, MANY_PASSES)
    assert {k: getattr(resolved, k) for k in AUTO} == REGIMES[regime]
    assert choice.requested == AUTO and choice.positions_per_epoch == positions_per_epoch


def test_without_a_budget_the_passes_are_max_epochs():
    hp = load_hyperparameters("sasrec", "full", {"max_train_positions": 0, "max_epochs": 3})
    assert choose_regime(hp, 100)[1].passes == 3.0 and choose_regime(hp, 100)[1].regime == "few passes"
    many = load_hyperparameters("sasrec", "full", {"max_train_positions": 0, "max_epochs": 200})
    assert choose_regime(many, 10**9)[1].regime == "many passes"


def test_an_explicit_value_wins_over_the_rule():
    hp = load_hyperparameters("sasrec", "full", {"max_train_positions": 8_000_000, "dropout": 0.3, "lr": 0.01})
    resolved, choice = choose_regime(hp, 7_000_000)  # few passes
    assert (resolved.dropout, resolved.lr) == (0.3, 0.01)
    assert resolved.attn_dropout == REGIMES["few passes"]["attn_dropout"]  # still auto: the rule's
    assert choice.requested == {"dropout": 0.3, "attn_dropout": "auto", "lr": 0.01}
    quick = load_hyperparameters("sasrec", "quick")  # a preset's own numbers are explicit too
    assert choose_regime(quick, 10**9)[0] == quick


def test_epoch_positions_counts_what_training_examples_trains_on():
    train = [np.arange(1, n + 1) for n in (1, 2, 5, 80)]
    _, _, lengths = training_examples(train, max_len=50)
    assert epoch_positions(train, max_len=50) == int(lengths.sum()) == 0 + 1 + 4 + 50


def test_train_version_builds_the_model_with_the_chosen_values_and_records_them(tmp_path):
    settings = load_settings(home=tmp_path, training={"preset": "quick", "overrides": {
        **AUTO, "use_text": False, "max_epochs": 1, "max_train_positions": 10**6}})
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    events = pd.DataFrame([(f"u{u}", f"i{(u + k) % 7}", t0 + pd.Timedelta(hours=k, seconds=u))
                           for u in range(20) for k in range(5)], columns=["user_id", "item_id", "timestamp"])
    version, report = train_version(settings, events=events.assign(event_type="view"), protocol="full",
                                    progress=False, checkpoint=False)
    rec = load_recommender(version, settings)
    # 1 epoch at most: few passes, whatever the budget
    expected = REGIMES["few passes"]
    assert rec.metadata["regime"] == report["training"]["regime"]
    assert rec.metadata["regime"]["regime"] == "few passes" and rec.metadata["regime"]["requested"] == AUTO
    assert rec.metadata["regime"]["positions_per_epoch"] == 20 * 3  # full protocol: the last item validates
    assert {k: rec.metadata["hyperparameters"][k] for k in AUTO} == expected
    assert (rec.torch_model.config["dropout"], rec.torch_model.config["attn_dropout"]) == (0.1, 0.1)


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
