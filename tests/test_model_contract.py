"""The one model contract: every format (the trained FP32 model, each compressed PyTorch
variant, ONNX) is saved by the one writer, verified and loaded by the one loader, and gives
the same answer on every edge case."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from shoprec.config import load_hyperparameters, load_settings
from training.artifact import FORMAT_VERSION, ArtifactError, load_recommender, save_artifact, write_version
from training.artifact.writer import STAGING_PREFIX
from training.compression.pipeline import build_variants
from training.data import ItemVocab, leave_one_out
from training.models import build_model

N_ITEMS, TEXT_DIM, MAX_LEN = 16, 8, 6
VARIANTS = ("folded", "dynamic_int8", "embedding_fp16", "embedding_int8", "pruned", "distilled", "onnx", "onnx_int8")
FORMATS = ("trained", *VARIANTS)
TRAINED_VERSION = "tiny-v1"


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    hp = load_hyperparameters("sasrec", "quick", {"hidden": 16, "inner": 32, "layers": 1, "heads": 1, "max_len": MAX_LEN})
    return build_model({**hp.architecture(), "n_vocab": N_ITEMS + 1, "text_dim": TEXT_DIM},
                       torch.randn(N_ITEMS + 1, TEXT_DIM))


def tiny_split(vocab: ItemVocab):
    rng = np.random.default_rng(0)
    rows = [{"user_id": f"u{u}", "item_ids": [f"i{(start + k) % N_ITEMS}" for k in range(int(rng.integers(3, 9)))]}
            for u, start in enumerate(rng.integers(0, N_ITEMS, 40))]
    return leave_one_out(pd.DataFrame(rows), vocab)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    base = load_settings(home=tmp_path_factory.mktemp("home"))
    return base.with_overrides(compression={"prune_epochs": 1, "distill_epochs": 1, "distill_hidden": 8})


@pytest.fixture(scope="module")
def versions(settings) -> dict[str, str]:
    """format -> version: the trained model and every variant the compression makers build of it."""
    vocab = ItemVocab([f"i{i}" for i in range(N_ITEMS)])
    metadata = {"protocol": "full", "data_end": "2026-01-31 00:00:00+00:00", "metrics": {"NDCG@10": 0.5}}
    save_artifact(tiny_model().eval(), vocab.item_ids, settings.models_dir, metadata, version=TRAINED_VERSION)
    parent = load_recommender(TRAINED_VERSION, settings)
    made = build_variants(parent, tiny_split(vocab), settings)
    return {"trained": TRAINED_VERSION, **{version.removeprefix(f"{TRAINED_VERSION}-"): version for version in made}}


@pytest.fixture(scope="module", params=FORMATS)
def model(request, settings, versions):
    return load_recommender(versions[request.param], settings)


def test_every_format_is_built(versions):
    assert set(versions) == set(FORMATS)


def test_one_manifest_for_every_format(model, settings):
    meta = json.loads((settings.models_dir / model.version / "metadata.json").read_text())
    files = sorted(p.name for p in (settings.models_dir / model.version).iterdir() if p.name != "metadata.json")
    assert meta["format_version"] == FORMAT_VERSION and meta["version"] == model.version
    assert sorted(meta["sha256"]) == files and meta["manifest_sha256"]
    assert meta["n_items"] == N_ITEMS and meta["data_end"] == "2026-01-31 00:00:00+00:00"
    assert meta["format"] == ("onnx" if model.version.endswith(("-onnx", "-onnx_int8")) else "torch")
    if model.version == TRAINED_VERSION:
        assert meta["kind"] == "trained" and "lineage" not in meta
    else:
        assert meta["kind"] == "variant"
        assert meta["lineage"]["parent_version"] == TRAINED_VERSION
        assert model.version == f"{TRAINED_VERSION}-{meta['lineage']['method']}"
    assert model.metadata == meta


def test_empty_history_is_refused(model):
    with pytest.raises(ValueError, match="empty history"):
        model.score([[]])
    with pytest.raises(ValueError, match="empty history"):
        model.recommend([], k=3)
    with pytest.raises(ValueError, match="empty history"):
        model.score_indices([np.zeros(0, dtype=np.int64)])


def test_a_history_of_only_unknown_items_is_refused(model):
    message = f"none of the 2 history items is known to model {model.version}"
    with pytest.raises(ValueError, match=message):
        model.score([["i1"], ["nope", "also-nope"]])
    with pytest.raises(ValueError, match=message):
        model.recommend(["nope", "also-nope"], k=3)


def test_unknown_items_inside_a_history_are_ignored(model):
    assert np.array_equal(model.score([["i1", "unknown", "i2"]]), model.score([["i1", "i2"]]))


def test_only_the_most_recent_max_len_items_count(model):
    long = [f"i{k % N_ITEMS}" for k in range(3 * MAX_LEN)]
    assert model.max_len == MAX_LEN
    assert np.array_equal(model.score([long]), model.score([long[-MAX_LEN:]]))


def test_k_must_be_positive(model):
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be positive"):
            model.recommend(["i1"], k=k)


def test_k_beyond_the_catalog_gives_every_item_best_first(model):
    top = model.recommend(["i1", "i2"], k=10 * N_ITEMS)
    scores = [score for _, score in top]
    assert sorted(item for item, _ in top) == sorted(model.item_ids) and scores == sorted(scores, reverse=True)
    assert top[0][0] == model.item_ids[int(np.argmax(model.score([["i1", "i2"]])[0]))]


def test_exclude_is_honoured(model):
    top = model.recommend(["i1", "i2"], k=N_ITEMS, exclude={"i3", "i1", "not-an-item"})
    assert len(top) == N_ITEMS - 2 and not {"i1", "i3"} & {item for item, _ in top}
    assert model.recommend(["i1"], k=5, exclude=model.item_ids) == []


def test_scores_have_one_shape_and_dtype(model):
    assert model.score([]).shape == (0, N_ITEMS)
    scores = model.score([["i1", "i2"], ["i5"]])
    assert scores.shape == (2, N_ITEMS) and scores.dtype == np.float32 and np.isfinite(scores).all()
    by_index = model.score_indices([np.array([2, 3]), np.array([6])])
    assert by_index.shape == (2, N_ITEMS + 1) and np.isneginf(by_index[:, 0]).all()
    assert np.array_equal(by_index[:, 1:], scores)
    with pytest.raises(ValueError, match="indices must be in"):
        model.score_indices([np.array([N_ITEMS + 1])])


def test_item_space_for_similar_items_and_new_items(model):
    table = model.item_embeddings()
    assert table.shape[0] == N_ITEMS and np.isfinite(table).all()
    texts = np.random.default_rng(0).normal(size=(3, TEXT_DIM)).astype(np.float32)
    assert model.embed_new_item_text(texts[0]).shape == (table.shape[1],)
    assert model.embed_new_item_text(texts).shape == (3, table.shape[1])
    with pytest.raises(ValueError, match=f"dimension {TEXT_DIM}"):
        model.embed_new_item_text(np.ones(TEXT_DIM + 1, dtype=np.float32))
    assert (model.torch_model is None) == model.version.endswith(("-onnx", "-onnx_int8"))


@pytest.mark.parametrize("lossless", ["folded", "onnx"])
def test_lossless_formats_score_like_the_trained_model(settings, versions, lossless):
    trained, other = (load_recommender(versions[f], settings) for f in ("trained", lossless))
    histories = [["i1", "i2", "i3"], ["i7"], [f"i{k}" for k in range(N_ITEMS)]]
    np.testing.assert_allclose(other.score(histories), trained.score(histories), rtol=1e-4, atol=1e-4)


def _copy(settings, version: str, tmp_path):
    copy = tmp_path / version
    shutil.copytree(settings.models_dir / version, copy)
    return copy


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_flipped_byte_in_any_file_is_refused(settings, versions, tmp_path, fmt):
    copy = _copy(settings, versions[fmt], tmp_path)
    assert load_recommender(copy).version == versions[fmt]
    for path in sorted(copy.iterdir()):
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(ArtifactError):
            load_recommender(copy)
        path.write_bytes(original)
    assert load_recommender(copy).version == versions[fmt]


@pytest.mark.parametrize("fmt", ["trained", "dynamic_int8", "onnx"])
def test_a_missing_or_unlisted_file_is_refused(settings, versions, tmp_path, fmt):
    copy = _copy(settings, versions[fmt], tmp_path)
    (copy / "notes.txt").write_text("not part of the version")
    with pytest.raises(ArtifactError, match="not in its manifest"):
        load_recommender(copy)
    (copy / "notes.txt").unlink()
    (copy / "items.json").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_recommender(copy)


def test_an_edited_manifest_value_is_refused(settings, versions, tmp_path):
    copy = _copy(settings, versions["embedding_int8"], tmp_path)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["metrics"]["NDCG@10"] = 0.99  # valid JSON, every file checksum still right
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="its own checksum"):
        load_recommender(copy)


def test_version_names_are_names_not_paths(settings, versions, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-there").mkdir()  # a folder of the working directory is no version
    for name in ("../" + TRAINED_VERSION, TRAINED_VERSION + "\n", "", ".hidden"):
        with pytest.raises(ArtifactError):
            load_recommender(name, settings)
    with pytest.raises(ArtifactError, match="no model version"):
        load_recommender("not-there", settings)


def test_a_version_is_never_replaced(settings, versions):
    folder = settings.models_dir / TRAINED_VERSION
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ArtifactError, match="already exists"):
        save_artifact(tiny_model(), [f"i{i}" for i in range(N_ITEMS)], settings.models_dir, {}, version=TRAINED_VERSION)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in settings.models_dir.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def write_files(folder):
        (folder / "items.json").write_text("[]")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_version(tmp_path, "half-v1", write_files, {"kind": "trained", "format": "torch", "runtime": "plain"})
    assert list(tmp_path.iterdir()) == []


def test_a_format_1_trained_version_still_loads(settings, versions, tmp_path):
    """Versions written before the one manifest (trained PyTorch only, three checksummed files)."""
    copy = _copy(settings, TRAINED_VERSION, tmp_path)
    meta = json.loads((copy / "metadata.json").read_text())
    for key in ("kind", "format", "runtime", "manifest_sha256"):
        del meta[key]
    meta["format_version"] = 1
    meta["sha256"] = {name: hashlib.sha256((copy / name).read_bytes()).hexdigest()
                      for name in ("model.safetensors", "config.json", "items.json")}
    (copy / "metadata.json").write_text(json.dumps(meta))
    old = load_recommender(copy)
    assert old.metadata["kind"] == "trained"
    assert np.array_equal(old.score([["i1", "i2"]]), load_recommender(TRAINED_VERSION, settings).score([["i1", "i2"]]))
