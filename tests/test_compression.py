"""Compression: a tiny SASRec trained in seconds on a synthetic catalog, compressed every way,
measured against its folded form, gated and reported."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from shoprec.config import load_hyperparameters, load_settings
from training.artifact import ArtifactError, load_recommender, save_artifact
from training.artifact.codec import CodecError, read_weights, write_weights
from training.compression.benchmark import Measurement
from training.compression.embedding import compressed_table
from training.compression.folding import fold_text_tower
from training.compression.gate import choose_served, judge
from training.compression.pipeline import (BASELINE, CompressionResult, build_variants, compress_recommender,
                                           default_parent, measure)
from training.compression.pruning import magnitude_pruning, sparsity
from training.compression.variant import save_variant
from training.data import ItemVocab, leave_one_out, pad_left
from training.models import new_model
from training.registry import promote
from training.trainer import Trainer

N_ITEMS, N_USERS, TEXT_DIM = 60, 300, 16
PARENT = "tiny-v1"
ALL_METHODS = ("folded", "dynamic_int8", "embedding_fp16", "embedding_int8", "pruned", "distilled", "onnx", "onnx_int8")


def synthetic_sequences(seed: int = 0) -> pd.DataFrame:
    """Users walk the catalog in steps of 1 (mostly) from a random start: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(N_USERS):
        item, seq = int(rng.integers(N_ITEMS)), []
        for _ in range(int(rng.integers(5, 12))):
            seq.append(f"i{item}")
            item = (item + (1 if rng.random() < 0.9 else int(rng.integers(N_ITEMS)))) % N_ITEMS
        rows.append({"user_id": f"u{user}", "item_ids": seq})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return load_settings(home=tmp_path_factory.mktemp("home")).with_overrides(
        compression={"prune_epochs": 1, "distill_epochs": 1, "rounds_b1": 5, "rounds_b32": 3})


@pytest.fixture(scope="module")
def trained(settings):
    """The trained parent, saved as a version and loaded back, and its split."""
    vocab = ItemVocab([f"i{i}" for i in range(N_ITEMS)])
    split = leave_one_out(synthetic_sequences(), vocab)
    hp = load_hyperparameters("sasrec", "quick", {"max_len": 12})
    torch.manual_seed(0)
    model = new_model(hp, len(vocab), torch.randn(len(vocab), TEXT_DIM))
    Trainer(model, split, hp, progress=False).fit(epochs=4)
    save_artifact(model.eval(), vocab.item_ids, settings.models_dir, {"data_source": "synthetic"}, version=PARENT)
    return load_recommender(PARENT, settings), split


def test_folding_keeps_scores(trained):
    parent, split = trained
    folded = fold_text_tower(parent.torch_model)
    assert "items.text" not in folded.state_dict()
    items, positions = (torch.from_numpy(a) for a in pad_left(split.test.inputs[:20], folded.max_len))
    with torch.inference_mode():
        ours = folded.score_last(items, positions)[:, 1:].numpy()
    np.testing.assert_allclose(ours, parent.score_indices(split.test.inputs[:20])[:, 1:], atol=1e-5)


def test_codec_round_trip_and_corrupt_file(tmp_path):
    state = {"table": torch.randn(50, 8) * torch.logspace(-3, 1, 50)[:, None], "bias": torch.randn(8), "n": torch.arange(3)}
    path = tmp_path / "w.safetensors"
    plan = write_weights(path, state, lambda name, t: "int8_row" if name == "table" else "fp16")
    back = read_weights(path)
    assert plan == {"table": "int8_row", "bias": "fp16", "n": "fp32"}
    # per-row scales: even the smallest rows keep ~1% relative error
    rel = (back["table"] - state["table"]).abs().amax(1) / state["table"].abs().amax(1)
    assert float(rel.max()) < 0.01
    assert torch.equal(back["n"], state["n"])
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CodecError, match="unreadable"):
        read_weights(path)


@pytest.fixture(scope="module")
def compressed(trained, settings) -> CompressionResult:
    """One full run (every variant saved, reloaded, measured, gated, reported), shared by the tests below."""
    parent, split = trained
    return compress_recommender(parent, split, settings, "synthetic")


def test_onnx_matches_pytorch(trained, compressed, settings):
    parent, split = trained
    onnx_model = load_recommender(f"{PARENT}-onnx", settings)
    histories = split.test.inputs[:64]  # mixed lengths: exercises the dynamic batch and sequence axes
    ours, reference = onnx_model.score_indices(histories), parent.score_indices(histories)
    np.testing.assert_allclose(ours[:, 1:], reference[:, 1:], rtol=1e-4, atol=1e-4)
    top_onnx = np.argsort(-ours[:, 1:], axis=1, kind="stable")[:, :10]
    top_torch = np.argsort(-reference[:, 1:], axis=1, kind="stable")[:, :10]
    assert (top_onnx == top_torch).mean() > 0.99
    sizes = {row.name: row.size_bytes for row in compressed.variants}
    assert sizes["onnx_int8"] < sizes["onnx"]


def test_every_variant_loads_from_its_folder_alone(compressed, settings, tmp_path):
    methods = set()
    for row in compressed.variants[1:]:
        alone = tmp_path / row.version
        shutil.copytree(settings.models_dir / row.version, alone)  # nothing else beside it
        served = load_recommender(alone)
        lineage = json.loads((alone / "metadata.json").read_text())["lineage"]
        methods.add(lineage["method"])
        assert lineage["parent_version"] == PARENT and served.version == row.version
        assert served.score([["i1", "i2", "unknown-item"]]).shape == (1, N_ITEMS)
    assert methods == set(ALL_METHODS)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_a_new_items_text_lands_in_each_variants_own_space(trained, compressed, settings, method):
    """What /similar_items does with an item that has text but no interactions."""
    parent, _ = trained
    served = load_recommender(f"{PARENT}-{method}", settings)
    table = np.asarray(served.item_embeddings())
    assert table.shape[0] == N_ITEMS and np.isfinite(table).all() and np.abs(table).sum() > 0
    texts = parent.torch_model.items.text[1:].numpy()  # the items' own MiniLM stand-ins
    # it explains the variant's table better than chance
    unit = lambda m: m / np.linalg.norm(m, axis=-1, keepdims=True)
    placed, rows = unit(served.embed_new_item_text(texts)), unit(table)
    own = (placed * rows).sum(1).mean()
    shuffled = (placed * rows[np.random.default_rng(0).permutation(N_ITEMS)]).sum(1).mean()
    assert own > shuffled + 0.05, (own, shuffled)


@pytest.mark.parametrize("method", ["folded", "onnx", "onnx_int8"])
def test_text_path_of_lossless_variants_equals_the_parents(trained, compressed, settings, method):
    parent, _ = trained
    served = load_recommender(f"{PARENT}-{method}", settings)
    texts = parent.torch_model.items.text[1:6].numpy()
    np.testing.assert_allclose(served.embed_new_item_text(texts), parent.embed_new_item_text(texts), atol=1e-3)


def test_a_variant_of_a_variant_keeps_the_text_path(trained, tmp_path):
    parent, _ = trained
    first = load_recommender(tmp_path / save_variant(compressed_table(fold_text_tower(parent.torch_model), "fp16"),
                                                     parent, tmp_path))
    second = load_recommender(tmp_path / save_variant(compressed_table(first.torch_model, "int8_row"), first, tmp_path))
    texts = parent.torch_model.items.text[1:6].numpy()
    np.testing.assert_allclose(second.embed_new_item_text(texts), parent.embed_new_item_text(texts), atol=5e-2)


def test_the_baseline_is_the_folded_model_and_it_serves_when_nothing_passes(trained, compressed, settings):
    rows = {row.name: row for row in compressed.variants}
    assert [row.name for row in compressed.variants][:2] == ["fp32", BASELINE]
    assert compressed.baseline_version == f"{PARENT}-folded" == rows[BASELINE].version
    assert rows[BASELINE].speedup_b1 == 1.0 and rows[BASELINE].size_ratio == 1.0
    assert rows["onnx"].speedup_b1 == pytest.approx(rows[BASELINE].latency_b1_p50_ms / rows["onnx"].latency_b1_p50_ms)
    assert abs(rows["fp32"].ndcg_at_10 - rows[BASELINE].ndcg_at_10) < 1e-3  # folding is exact
    assert compressed.served_version != PARENT
    assert {v.name for v in compressed.gate.verdicts} == set(ALL_METHODS) - {BASELINE}
    assert compressed.gate.served == (compressed.gate.picked or BASELINE)  # the baseline serves when none passed
    assert compressed.served_version == rows[compressed.gate.served].version
    strict = settings.with_overrides(compression={"min_speedup": 1e6}).compression
    decision = choose_served(rows[BASELINE], [rows[m] for m in ALL_METHODS[1:]], strict)
    assert decision.picked is None and decision.served == BASELINE
    assert decision.thresholds["min_speedup"] == 1e6


def test_gate_thresholds_come_from_settings(settings):
    base = Measurement("folded", "v-folded", "folded", size_bytes=1000, ndcg_at_10=0.05, latency_b1_p50_ms=10.0)
    variant = Measurement("v", "v-x", "x", size_bytes=500, ndcg_at_10=0.0495, latency_b1_p50_ms=5.0)
    assert judge(base, variant, settings.compression).passed  # 1% worse (2% allowed), 2x smaller, 2x faster
    for override in ({"max_ndcg_drop": 0.005}, {"min_size_ratio": 3.0}, {"min_speedup": 2.5}):
        verdict = judge(base, variant, settings.with_overrides(compression=override).compression)
        assert not verdict.passed and sum(r.startswith("FAIL") for r in verdict.reasons) == 1, override


def test_gate_rejects_an_over_pruned_model(trained, settings, tmp_path):
    parent, split = trained
    folded = fold_text_tower(parent.torch_model)
    ruined = magnitude_pruning(folded, None, amount=0.97, finetune_epochs=0, method="overpruned")
    assert sparsity(ruined.model) > 0.96
    served = {}
    for variant in (compressed_table(folded, "fp16"), ruined, compressed_table(folded, "int8_row")):
        served[variant.method] = load_recommender(tmp_path / save_variant(variant, parent, tmp_path))
    served[BASELINE] = served.pop("embedding_fp16")  # stands in for the folded model (same scores, near enough)
    rows = {row.name: row for row in measure(served, split, settings.compression)}
    # only accuracy should decide here: make every variant far smaller and faster than the baseline
    rows[BASELINE] = dataclasses.replace(rows[BASELINE], size_bytes=10**9, latency_b1_p50_ms=1e3)
    verdict = judge(rows[BASELINE], rows["overpruned"], settings.compression)
    assert rows["overpruned"].ndcg_at_10 < 0.9 * rows[BASELINE].ndcg_at_10
    assert not verdict.passed and any(r.startswith("FAIL: NDCG@10") for r in verdict.reasons)
    decision = choose_served(rows[BASELINE], [rows["overpruned"], rows["embedding_int8"]], settings.compression)
    assert decision.picked == decision.served == "embedding_int8"
    assert "overpruned" in [v.name for v in decision.verdicts if not v.passed]


def test_gate_serves_the_folded_model_when_nothing_passes(settings):
    base = Measurement("folded", "v-folded", "folded", size_bytes=1000, ndcg_at_10=0.05, latency_b1_p50_ms=10.0)
    slow = Measurement("slow", "v-slow", "slow", size_bytes=100, ndcg_at_10=0.05, latency_b1_p50_ms=9.0)
    big = Measurement("big", "v-big", "big", size_bytes=1100, ndcg_at_10=0.05, latency_b1_p50_ms=1.0)
    decision = choose_served(base, [slow, big], settings.compression)
    assert decision.picked is None and decision.served == "folded"
    assert any("FAIL" in r and "faster" in r for r in decision.verdicts[0].reasons)
    assert any("FAIL" in r and "smaller" in r for r in decision.verdicts[1].reasons)


def test_a_second_run_keeps_the_variants_made_with_the_same_options(trained, compressed, settings):
    parent, split = trained
    before = (settings.models_dir / f"{PARENT}-distilled" / "metadata.json").read_text()
    assert build_variants(parent, split, settings) == [f"{PARENT}-{m}" for m in ALL_METHODS]
    assert (settings.models_dir / f"{PARENT}-distilled" / "metadata.json").read_text() == before
    with pytest.raises(ArtifactError, match="made with other options"):
        build_variants(parent, split, settings.with_overrides(compression={"prune_amount": 0.3}))


def test_a_variant_is_not_compressed_again(trained, compressed, settings):
    _, split = trained
    with pytest.raises(ValueError, match="compress the trained version"):
        compress_recommender(load_recommender(f"{PARENT}-folded", settings), split, settings, "synthetic")


def test_the_default_parent_is_the_trained_version_behind_production(trained, compressed, settings, tmp_path):
    own = load_settings(home=tmp_path / "home")  # promoting here must not change the module's home
    for version in (PARENT, f"{PARENT}-onnx_int8"):
        shutil.copytree(settings.models_dir / version, own.models_dir / version)
    parent, _ = trained
    save_artifact(parent.torch_model, parent.item_ids, own.models_dir, {"data_source": "synthetic"}, version="tiny-v2")
    assert default_parent(own) == "tiny-v2"  # nothing in production: the newest trained version
    promote(f"{PARENT}-onnx_int8", own)
    assert default_parent(own) == PARENT


def test_full_run_writes_report(compressed):
    assert len(compressed.variants) == 2 + len(ALL_METHODS) - 1
    assert compressed.variants[0].name == "fp32" and compressed.variants[0].ndcg_at_10 > 0.15  # learned (random: ~0.08)
    markdown = open(compressed.report["markdown"]).read()
    assert "## Gate" in markdown and "Served:" in markdown and "Baseline: `folded`" in markdown
    assert open(compressed.report["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(open(compressed.report["json"]).read())
    assert saved["gate"]["picked"] == compressed.gate.picked
    assert saved["context"]["served_version"] == compressed.served_version


def test_a_sampled_softmax_catalog_gets_no_variant_that_trains_on_the_whole_catalog(tmp_path):
    from training.compression.pipeline import makers

    options = load_settings().compression
    every = [m.method for m in makers(None, None, options, tmp_path)]
    without = [m.method for m in makers(None, None, options, tmp_path, trains=False)]
    assert {"pruned", "distilled"} <= set(every) and not {"pruned", "distilled"} & set(without)
    assert set(without) == set(every) - {"pruned", "distilled"}


def test_fine_tuning_stops_at_its_positions_budget():
    from training.compression.finetune import train_steps

    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 30, size=12) for _ in range(200)]
    split = leave_one_out(pd.DataFrame({"user_id": [f"u{k}" for k in range(200)],
                                        "item_ids": [[f"i{i}" for i in s] for s in sequences]}),
                          ItemVocab([f"i{k}" for k in range(1, 30)]))
    model = new_model(load_hyperparameters("sasrec", "quick"), n_vocab=30)
    calls = []

    def loss(items, positions, targets):
        calls.append(int((targets != 0).sum()))
        return model.loss(items, positions, targets)

    train_steps(model, split, loss, epochs=3, lr=1e-3, max_positions=500)
    assert 500 <= sum(calls) < 500 + max(calls)  # stopped at the first batch past the budget
