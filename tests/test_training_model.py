"""SASRec end to end on tiny data: learning, the Trainer, the typed hyperparameters, a trained
artifact's round trip, warm start. (The loader's edge cases over every format: test_model_contract.py.)"""

import json

import click
import numpy as np
import pandas as pd
import pytest
import torch

from entrypoints.commands.training import training_settings
from shoprec.config import load_hyperparameters, load_settings
from shoprec.features.sequence import recent_items
from simulator.shop import generate
from training.artifact import load_recommender, save_artifact
from training.compression.folding import fold_text_tower
from training.compression.variant import TorchVariant, save_variant
from training.data import ItemVocab, encode_sequences, leave_one_out, user_sequences
from training.evaluate import evaluate_all, model_scorer
from training.models import new_model
from training.models.sasrec import SampledSoftmax
from training.pipeline import checkpoint_dir, evaluate_version, train_version, warm_start
from training.trainer import Trainer, choose_loss, length_bucketed_batches

N_RING = 12


def ring_events(n_users: int = 48, length: int = 8, start_day: int = 0, ring: int = N_RING) -> pd.DataFrame:
    """Every user walks a ring of items (next = previous + 1), starting at a user-specific item."""
    rows = []
    for u in range(n_users):
        for k in range(length):
            rows.append((f"u{u}", f"i{(u + k) % ring}", pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=start_day + k, seconds=u)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(event_type="purchase")


def quick_hp(**overrides):
    return load_hyperparameters("sasrec", "quick", {"use_text": False, **overrides})


def make_model(n_vocab, hp):
    torch.manual_seed(hp.seed)
    return new_model(hp, n_vocab)


def train(model, split, hp, **kwargs):
    return Trainer(model, split, hp, progress=False).fit(**kwargs)


def test_overfits_a_tiny_deterministic_sequence_set():
    events = ring_events()
    vocab = ItemVocab.from_events(events)
    split = leave_one_out(user_sequences(events), vocab)
    hp = quick_hp(dropout=0.0, attn_dropout=0.0, max_epochs=40, patience=40)
    model = make_model(len(vocab), hp)
    train(model, split, hp)
    report = evaluate_all({"m": model_scorer(model)}, split, len(vocab))["m"]
    assert report["HR@5"] >= 0.95
    ranks_at_1 = evaluate_all({"m": model_scorer(model)}, split, len(vocab), which="valid")["m"]
    assert ranks_at_1["NDCG@5"] > 0.9  # target almost always at rank 1


def test_beats_popularity_by_a_wide_margin_on_the_synthetic_shop(settings):
    batch = generate(4000, seed=3)
    settings = settings.with_overrides(training={"preset": "quick", "overrides": {"use_text": False, "max_epochs": 15}})
    version, report = train_version(settings, events=batch.events, items=batch.items, protocol="loo", progress=False,
                                    checkpoint=False)
    ours, popular = report["metrics"]["NDCG@10"], report["baselines"]["popularity"]["NDCG@10"]
    assert ours > 2 * popular and ours - popular > 0.05, (ours, popular)
    meta = json.loads((settings.models_dir / version / "metadata.json").read_text())
    assert meta["protocol"] == "loo" and meta["data_fingerprint"] and meta["metrics"]["NDCG@10"] == ours
    assert meta["hyperparameters"] == settings.hyperparameters.model_dump()  # a plain dict, as older readers expect
    assert meta["loss"]["loss"] == "full" and meta["loss"]["n_items"] == batch.items["item_id"].nunique()


def test_sampled_softmax_with_many_negatives_approximates_the_full_softmax():
    """With far more uniform negatives than items, the logQ-corrected sampled loss must come out
    at the full softmax's value (uncorrected, it would be log(negatives / items) = 6 nats off)."""
    events = ring_events(n_users=64, ring=40)
    vocab = ItemVocab.from_events(events)
    hp = quick_hp()
    model = make_model(len(vocab), hp).eval()
    items, positions = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]]), torch.arange(hp.max_len - 4, hp.max_len).expand(2, 4)
    targets = torch.tensor([[0, 2, 3, 4], [6, 7, 8, 9]])
    probability = torch.full((len(vocab),), 1.0 / (len(vocab) - 1))
    probability[0] = 0
    torch.manual_seed(0)
    full = model.loss(items, positions, targets)
    many = model.loss(items, positions, targets, sampled=SampledSoftmax.mixed(probability, 32_000))
    few = model.loss(items, positions, targets, sampled=SampledSoftmax.mixed(probability, 4))
    assert abs(many.item() - full.item()) < 0.02 * full.item(), (many, full)
    assert not torch.allclose(few, full)


def test_the_loss_follows_the_catalog_size_and_can_be_forced(settings):
    hp = quick_hp(full_softmax_max_items=1000)
    assert choose_loss(hp, 1000).loss == "full" and choose_loss(hp, 1001).loss == "sampled"
    assert choose_loss(hp, 1001).num_negatives == hp.num_negatives and choose_loss(hp, 10).num_negatives == 0
    assert choose_loss(quick_hp(loss="sampled"), 10).loss == "sampled"
    assert choose_loss(quick_hp(loss="full", full_softmax_max_items=5), 100_000).loss == "full"
    with pytest.raises(ValueError, match="loss"):
        quick_hp(loss="softmax")
    forced = training_settings(settings, None, None, ("loss=sampled", "num_negatives=512")).hyperparameters  # shoprec train --set
    assert (forced.loss, forced.num_negatives) == ("sampled", 512)
    with pytest.raises(click.BadParameter, match="loss"):
        training_settings(settings, None, None, ("loss=softmax",))


def test_a_catalog_above_the_threshold_trains_with_sampled_softmax_and_learns(settings):
    """The shop's catalog (1,500 items) is above the threshold set here (500): the run uses the
    sampled softmax, records it in the version, and the model still beats popularity clearly."""
    batch = generate(6000, seed=3, n_items=1500)
    overrides = {"use_text": False, "max_epochs": 12, "full_softmax_max_items": 500, "num_negatives": 128}
    settings = settings.with_overrides(training={"preset": "quick", "overrides": overrides})
    version, report = train_version(settings, events=batch.events, items=batch.items, protocol="loo", progress=False,
                                    checkpoint=False)
    rec = load_recommender(version, settings)
    assert rec.metadata["loss"]["loss"] == "sampled" and rec.metadata["loss"]["n_items"] == 1500
    assert rec.metadata["loss"]["threshold"] == 500 and rec.metadata["hyperparameters"]["loss"] == "auto"
    losses = [h["loss"] for h in report["training"]["history"]]
    assert losses[-1] < 0.8 * losses[0], losses
    ours, popular = report["metrics"]["NDCG@10"], report["baselines"]["popularity"]["NDCG@10"]
    assert ours > 2 * popular and ours - popular > 0.03, (ours, popular)
    assert rec.score([list(batch.events["item_id"].astype(str)[:3])]).shape == (1, 1500)


def test_the_positions_budget_ends_the_run_mid_epoch_and_validates_it():
    events = ring_events(n_users=64, length=8)  # loo: 64 sequences of 6 items, 5 target positions each
    vocab = ItemVocab.from_events(events)
    split = leave_one_out(user_sequences(events), vocab)
    hp = quick_hp(max_epochs=10, patience=10, batch_size=8, max_train_positions=400)  # 320 positions per epoch
    result = train(make_model(len(vocab), hp), split, hp)
    assert result.epochs == 2 and 400 <= result.positions < 440 and result.steps == 8 + 2
    assert "valid_NDCG@10" in result.history[-1]


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory):
    return load_settings(home=tmp_path_factory.mktemp("home"), training={"preset": "quick", "overrides": {"max_epochs": 8}})


@pytest.fixture(scope="module")
def trained(module_settings):
    """A small trained version on the ring data, with item titles (so the text path is on); trained once per module."""
    settings = module_settings
    events = ring_events(start_day=0)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(N_RING)], "title": [f"product number {i}" for i in range(N_RING)]})
    version, _ = train_version(settings, events=events, items=items, protocol="full", progress=False, checkpoint=False)
    return version, events, items


def test_save_load_round_trip_gives_identical_scores(module_settings, trained):
    settings = module_settings
    version, _, _ = trained
    rec = load_recommender(version, settings)
    histories = [["i1", "i2", "i3"], ["i7"]]
    copy_dir = save_artifact(rec.torch_model, rec.item_ids, settings.models_dir / "copies", rec.metadata, version="copy")
    again = load_recommender(copy_dir)
    assert np.array_equal(rec.score(histories), again.score(histories))
    assert rec.score(histories).dtype == np.float32 and rec.score(histories).shape == (2, N_RING)
    assert rec.metadata["text_embedding_version"] and rec.item_embeddings().shape == (N_RING, rec.torch_model.config["hidden"])
    top = rec.recommend(["i1", "i2"], k=3, exclude={"i3"})
    assert len(top) == 3 and "i3" not in [i for i, _ in top] and top[0][1] >= top[1][1] >= top[2][1]
    new_item = rec.embed_new_item_text(np.ones(384, dtype=np.float32) / np.sqrt(384))
    assert new_item.shape == (rec.torch_model.config["hidden"],)


def test_warm_start_adds_new_items_and_keeps_old_scores_close(module_settings, trained):
    version, old_events, items = trained
    base = load_recommender(version, module_settings)
    # new events, a week later: a few users walk into two brand-new items
    new = pd.DataFrame({
        "user_id": [f"u{u}" for u in range(6) for _ in range(4)],
        "item_id": [f"i{i}" for _ in range(6) for i in (10, 11, N_RING, N_RING + 1)],
        "timestamp": [pd.Timestamp("2026-03-01", tz="UTC") + pd.Timedelta(hours=h, seconds=u) for u in range(6) for h in range(4)],
    }).assign(event_type="purchase")
    new_items = pd.DataFrame({"item_id": [f"i{i}" for i in range(N_RING + 2)],
                              "title": [f"product number {i}" for i in range(N_RING + 2)]})
    events = pd.concat([old_events, new], ignore_index=True)
    # the settings now name the full preset (hidden 64): the base's quick architecture (hidden 32) still rules
    settings = module_settings.with_overrides(training={"preset": "full", "overrides": {"warm_start_epochs": 2}})
    new_version, report = warm_start(settings, version, events=events, items=new_items, progress=False)
    grown = load_recommender(new_version, settings)
    assert grown.item_ids[:N_RING] == base.item_ids and set(grown.item_ids[N_RING:]) == {f"i{N_RING}", f"i{N_RING + 1}"}
    assert report["new_items"] == 2 and grown.metadata["parent_version"] == version
    assert report["training"]["epochs"] == 2
    used = grown.metadata["hyperparameters"]
    assert {k: used[k] for k in ("hidden", "max_len", "use_text")} == {"hidden": 32, "max_len": 20, "use_text": True}
    assert used["warm_start_lr"] == settings.hyperparameters.warm_start_lr
    histories = [["i1", "i2", "i3"], ["i5", "i6"], ["i9"]]
    before, after = base.score(histories), grown.score(histories)[:, :N_RING]
    for b, a in zip(before, after):
        assert np.corrcoef(b, a)[0, 1] > 0.8
    assert np.isfinite(grown.score([[f"i{N_RING}"]])).all()  # a new item is usable as history at once
    with pytest.raises(ValueError, match="no events after"):
        warm_start(settings, new_version, events=events, items=new_items, progress=False)


def test_warm_start_refuses_a_compressed_variant_and_names_its_trained_root(module_settings, trained):
    version, events, items = trained
    base = load_recommender(version, module_settings)
    folded = TorchVariant("folded", fold_text_tower(base.torch_model), codecs=lambda name, tensor: "fp32")
    variant = save_variant(folded, base, module_settings.models_dir)
    with pytest.raises(ValueError, match=f"compressed variant.*{version}"):
        warm_start(module_settings, variant, events=events, items=items, progress=False)


def test_evaluating_a_version_without_its_training_metadata_says_what_is_missing(module_settings, trained, tmp_path):
    """A version saved by hand (not by train_version) cannot have its protocol re-run."""
    version, _, _ = trained
    rec = load_recommender(version, module_settings)
    metadata = {key: value for key, value in rec.metadata.items() if key != "data_fingerprint"}
    path = save_artifact(rec.torch_model, rec.item_ids, tmp_path, metadata, version="hand-made")
    with pytest.raises(ValueError, match="hand-made lacks data_fingerprint"):
        evaluate_version(module_settings, str(path))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    events = ring_events(n_users=16, length=6)
    vocab = ItemVocab.from_events(events)
    split = leave_one_out(user_sequences(events), vocab)
    hp = quick_hp(max_epochs=4, patience=10)
    interrupted = make_model(len(vocab), hp)
    first = Trainer(interrupted, split, hp, checkpoint_dir=tmp_path, progress=False).fit(epochs=2)
    assert (tmp_path / "checkpoint.pt").exists()
    resumed = make_model(len(vocab), hp)
    result = Trainer(resumed, split, hp, checkpoint_dir=tmp_path, progress=False).fit()
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.history[:2] == first.history  # epochs 1-2 come from the checkpoint, not trained again
    straight = make_model(len(vocab), hp)
    reference = train(straight, split, hp)
    for key in ("loss", "valid_NDCG@10", "valid_HR@10"):
        assert [h[key] for h in result.history] == pytest.approx([h[key] for h in reference.history], rel=1e-5)
    assert result.best_epoch == reference.best_epoch
    for name, weight in straight.state_dict().items():  # both end with the best epoch's weights
        torch.testing.assert_close(resumed.state_dict()[name], weight, rtol=1e-5, atol=1e-6)


def test_early_stopping_restores_the_best_weights():
    events = ring_events(n_users=16, length=6)
    vocab = ItemVocab.from_events(events)
    split = leave_one_out(user_sequences(events), vocab)
    hp = quick_hp(max_epochs=30, patience=1, lr=0.05, warmup_steps=0)  # a large step: validation soon stops improving
    model = make_model(len(vocab), hp)
    result = train(model, split, hp)
    assert result.epochs < 30 and result.epochs == result.best_epoch + hp.patience
    valid = evaluate_all({"m": model_scorer(model)}, split, len(vocab), which="valid")["m"]
    assert valid["NDCG@10"] == pytest.approx(result.best_valid["NDCG@10"])


def test_checkpoints_are_keyed_by_the_hyperparameters(settings):
    events = ring_events(n_users=4, length=3)
    quick = settings.with_overrides(training={"preset": "quick"}).hyperparameters
    again = settings.with_overrides(training={"preset": "quick"}).hyperparameters
    longer = settings.with_overrides(training={"preset": "quick", "overrides": {"max_epochs": 31}}).hyperparameters
    assert checkpoint_dir(settings, quick, "full", events) == checkpoint_dir(settings, again, "full", events)
    assert checkpoint_dir(settings, quick, "full", events) != checkpoint_dir(settings, longer, "full", events)
    assert checkpoint_dir(settings, quick, "full", events) != checkpoint_dir(settings, quick, "loo", events)


def test_hyperparameters_come_from_the_preset_and_overrides_and_reject_unknown_keys(settings):
    quick = settings.with_overrides(training={"preset": "quick", "overrides": {"max_epochs": 3}}).hyperparameters
    assert (quick.hidden, quick.max_epochs, quick.lr) == (32, 3, 0.005)  # preset, override, preset
    assert quick.architecture() == {"model": "sasrec", "hidden": 32, "layers": 2, "heads": 1, "inner": 64,
                                    "dropout": 0.1, "attn_dropout": 0.1, "max_len": 20}
    with pytest.raises(ValueError, match="unknown hyperparameter.*hiden"):
        settings.with_overrides(training={"overrides": {"hiden": 64}})
    with pytest.raises(ValueError, match="unknown hyperparameter.*hiden"):
        load_hyperparameters("sasrec", "quick", {"hiden": 64})
    with pytest.raises(ValueError, match="no preset 'tiny'"):
        load_hyperparameters("sasrec", "tiny")
    with pytest.raises(ValueError, match="hidden"):
        load_hyperparameters("sasrec", "quick", {"hidden": 0})
    with pytest.raises(ValueError, match="frozen"):
        quick.lr = 1.0


def test_user_sequences_follow_recent_items_on_shuffled_events_with_ties():
    events = generate(3000, seed=5).events
    events = pd.concat([events, events.head(200).assign(item_id="tie-item")])  # same user and time: ties
    events = events.sample(frac=1.0, random_state=0).reset_index(drop=True)
    ours = user_sequences(events)
    reference = recent_items(events, None)
    assert ours["user_id"].tolist() == reference["user_id"].astype(str).tolist()
    assert [list(s) for s in ours["item_ids"]] == [list(map(str, s)) for s in reference["item_ids"]]
    as_of = events["timestamp"].median()
    cut = user_sequences(events, as_of)
    assert [list(s) for s in cut["item_ids"]] == [list(map(str, s)) for s in recent_items(events, None, as_of)["item_ids"]]


def test_length_bucketed_batches_cover_every_row_once_with_narrow_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 51, 1000)
    batches = length_bucketed_batches(lengths, 32, np.random.default_rng(1), bucket_batches=10)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1000)) and all(len(b) <= 32 for b in batches)
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    plain = length_bucketed_batches(lengths, 32, np.random.default_rng(1), bucket_batches=1)
    assert spread < 0.25 * np.mean([lengths[b].max() - lengths[b].min() for b in plain])


def test_sequences_are_encoded_as_the_vocabulary_encodes_each_one():
    vocab = ItemVocab([f"i{n}" for n in range(10)])
    lists = [["i1", "i2", "nope"], [], ["nope"], ["i9", "i0", "i9"], np.array(["i3"], dtype=object)]
    encoded = encode_sequences(lists, vocab)
    assert [e.tolist() for e in encoded] == [vocab.encode(items).tolist() for items in lists]
    assert all(e.dtype == np.int64 for e in encoded)
