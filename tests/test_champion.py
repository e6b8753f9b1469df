"""Champion vs challenger: the promotion gate, the champion's scorer across vocabularies, and
``mode=auto`` with a compressed variant in production (real tiny models, real files)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from shoprec.config import load_settings
from training.artifact import load_recommender, save_artifact
from training.champion import (Challenger, CompressedChallenger, Evaluation, PromotionDecision, TrainingSet,
                               UNKNOWN_TO_CHAMPION, _champion_scorer, challenger_vs_champion, passes_gate,
                               train_challenger)
from training.compression.embedding import compressed_table
from training.compression.folding import fold_text_tower
from training.compression.variant import save_variant
from training.data import PAD, ItemVocab
from training.models import new_model
from training.registry import promote

RING = 10
DAY0 = pd.Timestamp("2026-01-01", tz="UTC")
QUICK = {"preset": "quick", "overrides": {"use_text": False, "hidden": 16, "inner": 32, "max_len": 8, "max_epochs": 2,
                                          "warm_start_epochs": 1, "eval_batch_size": 64}}


@pytest.fixture
def settings(tmp_path):
    return load_settings(home=tmp_path / "home").with_overrides(training=QUICK)


# --- the promotion gate ------------------------------------------------------------------------

def evaluation(ours: float, theirs: float | None) -> Evaluation:
    return Evaluation(holdout_users=50, challenger_version="ch-v2-embedding_int8", challenger={"NDCG@10": ours},
                      champion_version=None if theirs is None else "champ-v1-onnx",
                      champion=None if theirs is None else {"NDCG@10": theirs})


def compressed(latency_ms: float = 2.0) -> CompressedChallenger:
    return CompressedChallenger("ch-v2", "ch-v2-embedding_int8", latency_ms, "embedding_int8 passed")


def gate_settings(max_drop: float = 0.0, budget_ms: float = 100.0):
    return load_settings().with_overrides(promotion={"max_ndcg_drop_vs_champion": max_drop, "latency_budget_ms": budget_ms})


def test_gate_without_a_champion_promotes_the_served_version():
    decision = passes_gate(gate_settings(), evaluation(0.01, None), compressed())
    assert decision == PromotionDecision(True, ["challenger NDCG@10 0.0100 (no champion)"], "ch-v2-embedding_int8")


def test_gate_promotes_a_challenger_that_wins():
    decision = passes_gate(gate_settings(), evaluation(0.30, 0.25), compressed())
    assert decision.promote and "vs champion 0.2500" in decision.reasons[0]


def test_gate_keeps_the_champion_when_the_challenger_loses_beyond_the_allowed_drop():
    decision = passes_gate(gate_settings(max_drop=0.1), evaluation(0.22, 0.25), compressed())
    assert not decision.promote
    assert decision.reasons == ["challenger NDCG@10 0.2200 < champion 0.2500 (floor 0.2250)"]


def test_gate_promotes_a_challenger_within_the_allowed_drop():
    assert passes_gate(gate_settings(max_drop=0.1), evaluation(0.23, 0.25), compressed()).promote
    assert not passes_gate(gate_settings(max_drop=0.0), evaluation(0.2499, 0.25), compressed()).promote


def test_gate_refuses_a_served_model_over_the_latency_budget():
    decision = passes_gate(gate_settings(budget_ms=5.0), evaluation(0.30, 0.25), compressed(latency_ms=7.5))
    assert not decision.promote and decision.reasons == ["served model p50 7.50 ms > budget 5.00 ms"]


def test_gate_reports_both_failures():
    decision = passes_gate(gate_settings(budget_ms=5.0), evaluation(0.10, 0.25), compressed(latency_ms=7.5))
    assert not decision.promote and len(decision.reasons) == 2


def test_step_results_round_trip_through_json():
    results = [TrainingSet("/tmp/run", "2026-01-02T00:00:00+00:00", 10, 8, "feature store"),
               Challenger("ch-v2", "warm", "quick", "champ-v1-onnx", "champ-v1"), compressed(),
               evaluation(0.3, 0.2), PromotionDecision(False, ["why"], "ch-v2-onnx")]
    for result in results:
        assert type(result).from_dict(json.loads(json.dumps(result.to_dict()))) == result


# --- the champion's scorer: its vocabulary mapped onto the challenger's ---------------------------

def tiny_model(n_items: int, hidden: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    settings = load_settings().with_overrides(training=QUICK)
    return new_model(settings.hyperparameters, n_items + 1).eval()


def save_trained(settings, version: str, item_ids: list[str], data_end: pd.Timestamp) -> str:
    metadata = {"protocol": "full", "data_source": "lake", "data_end": str(data_end), "metrics": {}}
    save_artifact(tiny_model(len(item_ids)), item_ids, settings.models_dir, metadata, version=version)
    return version


def test_champion_scorer_maps_vocabularies(settings):
    champion = load_recommender(save_trained(settings, "champ-v1", [f"i{i}" for i in range(6)], DAY0), settings)
    vocab = ItemVocab(["i3", "i1", "new-a", "i0", "new-b", "i5"])  # another order, and items the champion lacks
    ix = vocab.index
    score = _champion_scorer(champion, vocab)
    out = score([np.array([ix["i1"], ix["i3"]]), np.array([ix["new-a"], ix["i1"], ix["i3"]]), np.array([ix["new-b"]])])
    expected = champion.score([["i1", "i3"]])[0]
    for item in ("i3", "i1", "i0", "i5"):
        assert out[0, ix[item]] == pytest.approx(expected[champion.item_ids.index(item)], rel=1e-5)
    assert out[0, ix["new-a"]] == out[0, ix["new-b"]] == UNKNOWN_TO_CHAMPION  # unknown items rank last
    assert out[0, [ix[i] for i in ("i3", "i1", "i0", "i5")]].min() > UNKNOWN_TO_CHAMPION
    assert np.isneginf(out[:, PAD]).all()
    np.testing.assert_allclose(out[1], out[0], rtol=1e-5)  # unknown history items are ignored
    assert (out[2, 1:] == UNKNOWN_TO_CHAMPION).all()  # nothing known: no score, every item last
    assert score([]).shape == (0, len(vocab))


# --- mode=auto with a compressed variant in production ----------------------------------------------

def ring_events(users: range, days: range) -> pd.DataFrame:
    rows = [(f"u{u}", f"i{(u + d) % RING}", DAY0 + pd.Timedelta(days=d, seconds=u)) for u in users for d in days]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(event_type="purchase")


def training_set(tmp_path, events: pd.DataFrame, cutoff: pd.Timestamp) -> TrainingSet:
    """The run folder ``build_training_set`` would write (its feature-store read replaced by the events before the cutoff)."""
    before = events[events["timestamp"] < cutoff]
    events.to_parquet(tmp_path / "events.parquet")
    before.to_parquet(tmp_path / "train_events.parquet")
    pd.DataFrame({"item_id": [f"i{i}" for i in range(RING)]}).to_parquet(tmp_path / "items.parquet")
    return TrainingSet(str(tmp_path), cutoff.isoformat(), len(events), len(before), "test")


def variant_in_production(settings, data_end: pd.Timestamp) -> tuple[str, str]:
    root = save_trained(settings, "champ-v1", [f"i{i}" for i in range(RING)], data_end)
    parent = load_recommender(root, settings)
    variant = save_variant(compressed_table(fold_text_tower(parent.torch_model), "int8_row"), parent, settings.models_dir)
    promote(variant, settings)
    return root, variant


@pytest.fixture
def shop(tmp_path):
    """Ring events: days 0-7 (the champion's data), 20-23 (new), 30-31 (the hold-out)."""
    events = pd.concat([ring_events(range(30), range(0, 8)), ring_events(range(12), range(20, 24)),
                        ring_events(range(30), range(30, 32))], ignore_index=True)
    return training_set(tmp_path, events, DAY0 + pd.Timedelta(days=30))


def test_auto_warm_starts_from_the_trained_root_of_a_variant_in_production(settings, shop):
    root, variant = variant_in_production(settings, data_end=DAY0 + pd.Timedelta(days=8))
    challenger = train_challenger(settings, shop, mode="auto")
    assert (challenger.mode, challenger.champion, challenger.base_version) == ("warm", variant, root)
    trained = load_recommender(challenger.version, settings)
    assert trained.metadata["parent_version"] == root and trained.metadata["kind"] == "trained"
    assert train_challenger(settings, shop, mode="auto") == challenger  # re-running the task reuses its result

    # evaluate: the challenger's SERVED version against production's, on the same hold-out
    served = save_variant(compressed_table(fold_text_tower(trained.torch_model), "fp16"), trained, settings.models_dir)
    result = challenger_vs_champion(settings, CompressedChallenger(trained.version, served, 1.0, "test"), shop)
    assert (result.challenger_version, result.champion_version) == (served, variant)
    assert result.holdout_users == 30 and 0.0 <= result.champion["NDCG@10"] <= 1.0
    assert set(result.challenger) == set(result.champion) and "NDCG@10" in result.challenger


def test_auto_warm_starts_from_the_parent_of_a_production_variant_written_before_format_2(settings, shop):
    """After an upgrade, production is often a variant in the old layout (variant.json, a manifest
    without format_version): it no longer loads, but it still names the trained version to continue."""
    root, variant = variant_in_production(settings, data_end=DAY0 + pd.Timedelta(days=8))
    folder = settings.models_dir / variant
    manifest = json.loads((folder / "metadata.json").read_text())
    old = {key: value for key, value in manifest.items() if key not in ("format_version", "sha256", "manifest_sha256")}
    (folder / "metadata.json").write_text(json.dumps(old))
    (folder / "variant.json").write_text(json.dumps({"format": "shoprec-compressed/1", "lineage": old["lineage"]}))
    challenger = train_challenger(settings, shop, mode="auto")
    assert (challenger.mode, challenger.champion, challenger.base_version) == ("warm", variant, root)


def test_auto_trains_from_scratch_when_no_event_is_after_the_champions_data(settings, shop):
    root, variant = variant_in_production(settings, data_end=DAY0 + pd.Timedelta(days=25))
    challenger = train_challenger(settings, shop, mode="auto")
    assert (challenger.mode, challenger.champion, challenger.base_version) == ("full", variant, None)
    trained = load_recommender(challenger.version, settings)
    assert trained.metadata["protocol"] == "full" and "parent_version" not in trained.metadata


def test_warm_without_production_is_refused_and_unknown_modes_too(settings, shop):
    with pytest.raises(ValueError, match="needs a production model"):
        train_challenger(settings, shop, mode="warm")
    with pytest.raises(ValueError, match="unknown training mode"):
        train_challenger(settings, shop, mode="lukewarm")
