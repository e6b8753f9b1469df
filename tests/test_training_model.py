"""SASRec end to end on tiny data: learning, artifact round trip, warm start, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from training.artifact import ArtifactError, load_recommender, save_artifact
from training.data import ItemVocab, leave_one_out, user_sequences
from training.evaluate import evaluate_all, model_scorer
from training.models import build_model, load_hyperparameters
from training.pipeline import train_version, warm_start
from training.registry import list_versions, production_version, promote
from training.trainer import fit

N_RING = 12


def ring_events(n_users: int = 48, length: int = 8, start_day: int = 0, ring: int = N_RING) -> pd.DataFrame:
    """Every user walks a ring of items (next = previous + 1), starting at a user-specific item."""
    rows = []
    for u in range(n_users):
        for k in range(length):
            rows.append((f"u{u}", f"i{(u + k) % ring}", pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=start_day + k, seconds=u)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(event_type="purchase")


def quick_hp(**overrides):
    return {**load_hyperparameters("sasrec", "quick"), "use_text": False, **overrides}


def make_model(n_vocab, hp, text_dim=0, text=None):
    torch.manual_seed(hp["seed"])
    keys = ("model", "hidden", "layers", "heads", "inner", "dropout", "attn_dropout", "max_len")
    return build_model({**{k: hp[k] for k in keys}, "n_vocab": n_vocab, "text_dim": text_dim}, text)


def test_overfits_a_tiny_deterministic_sequence_set():
    events = ring_events()
    vocab = ItemVocab.from_events(events)
    split = leave_one_out(user_sequences(events), vocab)
    hp = quick_hp(dropout=0.0, attn_dropout=0.0, max_epochs=40, patience=40)
    model = make_model(len(vocab), hp)
    fit(model, split, hp, progress=False)
    report = evaluate_all({"m": model_scorer(model)}, split, len(vocab))["m"]
    assert report["HR@5"] >= 0.95
    ranks_at_1 = evaluate_all({"m": model_scorer(model)}, split, len(vocab), which="valid")["m"]
    assert ranks_at_1["NDCG@5"] > 0.9  # target almost always at rank 1


def test_beats_popularity_by_a_wide_margin_on_the_synthetic_shop(settings):
    from shoprec.generate import generate

    batch = generate(4000, seed=3)
    version, report = train_version(settings, events=batch.events, items=batch.items, protocol="loo", profile="quick",
                                    overrides={"use_text": False, "max_epochs": 15}, progress=False, checkpoint=False)
    ours, popular = report["metrics"]["NDCG@10"], report["baselines"]["popularity"]["NDCG@10"]
    assert ours > 2 * popular and ours - popular > 0.05, (ours, popular)
    meta = json.loads((settings.models_dir / version / "metadata.json").read_text())
    assert meta["protocol"] == "loo" and meta["data_fingerprint"] and meta["metrics"]["NDCG@10"] == ours


def test_sampled_softmax_learns_and_covers_the_catalog_when_negatives_exceed_it():
    events = ring_events(n_users=64, ring=40)
    vocab = ItemVocab.from_events(events)
    split = leave_one_out(user_sequences(events), vocab)
    hp = quick_hp(dropout=0.0, attn_dropout=0.0, max_epochs=40, patience=40, negatives=8)
    model = make_model(len(vocab), hp)
    items, positions = torch.tensor([[0, 1, 2, 3]]), torch.arange(hp["max_len"] - 4, hp["max_len"]).unsqueeze(0)
    targets = torch.tensor([[0, 2, 3, 4]])
    torch.manual_seed(0)
    full = model.loss(items, positions, targets)
    assert torch.allclose(model.loss(items, positions, targets, negatives=len(vocab)), full)  # no sampling then
    assert not torch.allclose(model.loss(items, positions, targets, negatives=8), full)
    fit(model, split, hp, progress=False)  # 8 sampled negatives of a 40-item catalog
    assert evaluate_all({"m": model_scorer(model)}, split, len(vocab))["m"]["HR@5"] >= 0.9


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory):
    from shoprec.config import load_settings

    return load_settings(home=tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def trained(module_settings):
    """A small trained version on the ring data, with item titles (so the text path is on); trained once per module."""
    settings = module_settings
    events = ring_events(start_day=0)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(N_RING)], "title": [f"product number {i}" for i in range(N_RING)]})
    version, _ = train_version(settings, events=events, items=items, protocol="full", profile="quick",
                               overrides={"max_epochs": 8}, progress=False, checkpoint=False)
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


def test_bad_inputs_give_clear_errors(module_settings, trained):
    settings = module_settings
    rec = load_recommender(trained[0], settings)
    with pytest.raises(ValueError, match="empty history"):
        rec.score([[]])
    with pytest.raises(ValueError, match="none of the"):
        rec.score([["nope", "also-nope"]])
    with pytest.raises(ValueError, match="k must be positive"):
        rec.recommend(["i1"], k=0)
    with pytest.raises(ValueError, match="dimension 384"):
        rec.embed_new_item_text(np.ones(10))
    assert np.array_equal(rec.score([["i1", "unknown", "i2"]]), rec.score([["i1", "i2"]]))  # unknown ids ignored
    long = [f"i{k % N_RING}" for k in range(100)]
    assert np.array_equal(rec.score([long]), rec.score([long[-rec.max_len:]]))  # only the most recent max_len count


def test_corrupt_or_mismatched_artifacts_are_rejected(module_settings, trained):
    settings = module_settings
    import shutil

    root = settings.models_dir / "scratch-copy"
    shutil.copytree(settings.models_dir / trained[0], root)
    version = str(root)
    with pytest.raises(ArtifactError, match="no model version"):
        load_recommender("does-not-exist", settings)
    weights = root / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match="checksum"):
        load_recommender(version, settings)
    weights.write_bytes(original)
    items = json.loads((root / "items.json").read_text())
    (root / "items.json").write_text(json.dumps(items[:-1]))
    meta = json.loads((root / "metadata.json").read_text())
    import hashlib

    meta["sha256"]["items.json"] = hashlib.sha256((root / "items.json").read_bytes()).hexdigest()
    (root / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="items.json has"):
        load_recommender(version, settings)
    (root / "metadata.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_recommender(version, settings)


def test_warm_start_adds_new_items_and_keeps_old_scores_close(module_settings, trained):
    settings = module_settings
    version, old_events, items = trained
    base = load_recommender(version, settings)
    # new events, a week later: a few users walk into two brand-new items
    new = pd.DataFrame({
        "user_id": [f"u{u}" for u in range(6) for _ in range(4)],
        "item_id": [f"i{i}" for _ in range(6) for i in (10, 11, N_RING, N_RING + 1)],
        "timestamp": [pd.Timestamp("2026-03-01", tz="UTC") + pd.Timedelta(hours=h, seconds=u) for u in range(6) for h in range(4)],
    }).assign(event_type="purchase")
    new_items = pd.DataFrame({"item_id": [f"i{i}" for i in range(N_RING + 2)],
                              "title": [f"product number {i}" for i in range(N_RING + 2)]})
    events = pd.concat([old_events, new], ignore_index=True)
    new_version, report = warm_start(settings, version, events=events, items=new_items, profile="quick", progress=False)
    grown = load_recommender(new_version, settings)
    assert grown.item_ids[:N_RING] == base.item_ids and set(grown.item_ids[N_RING:]) == {f"i{N_RING}", f"i{N_RING + 1}"}
    assert report["new_items"] == 2 and grown.metadata["parent_version"] == version
    histories = [["i1", "i2", "i3"], ["i5", "i6"], ["i9"]]
    before, after = base.score(histories), grown.score(histories)[:, :N_RING]
    for b, a in zip(before, after):
        assert np.corrcoef(b, a)[0, 1] > 0.8
    assert np.isfinite(grown.score([[f"i{N_RING}"]])).all()  # a new item is usable as history at once
    with pytest.raises(ValueError, match="no events after"):
        warm_start(settings, new_version, events=events, items=new_items, profile="quick", progress=False)


def test_registry_promotes_atomically_and_rejects_unknown_versions(module_settings, trained):
    settings = module_settings
    version = trained[0]
    assert production_version(settings) is None
    promote(version, settings)
    assert production_version(settings) == version
    assert [v["production"] for v in list_versions(settings) if v["version"] == version] == [True]
    with pytest.raises(ArtifactError, match="cannot promote"):
        promote("nope", settings)
    assert production_version(settings) == version


def test_checkpoints_resume_where_training_stopped(tmp_path):
    events = ring_events(n_users=16, length=6)
    vocab = ItemVocab.from_events(events)
    split = leave_one_out(user_sequences(events), vocab)
    hp = quick_hp(max_epochs=4, patience=10)
    interrupted = make_model(len(vocab), hp)
    first = fit(interrupted, split, hp, checkpoint_dir=tmp_path, epochs=2, progress=False)
    resumed = make_model(len(vocab), hp)
    result = fit(resumed, split, hp, checkpoint_dir=tmp_path, epochs=4, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.history[:2] == first.history
    straight = make_model(len(vocab), hp)
    reference = fit(straight, split, hp, epochs=4, progress=False)
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in reference.history], rel=1e-4)


def test_length_bucketed_batches_cover_every_row_once_with_narrow_batches():
    from training.trainer import length_bucketed_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 51, 1000)
    batches = length_bucketed_batches(lengths, 32, np.random.default_rng(1), bucket_batches=10)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1000)) and all(len(b) <= 32 for b in batches)
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    plain = length_bucketed_batches(lengths, 32, np.random.default_rng(1), bucket_batches=1)
    assert spread < 0.25 * np.mean([lengths[b].max() - lengths[b].min() for b in plain])
