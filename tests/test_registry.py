"""The one registry: listing, the production pointer, promotion with its history, rollback, lineage."""

from __future__ import annotations

import json

import pytest
import torch

from shoprec.config import load_settings
from training.artifact import ArtifactError, load_recommender, save_artifact
from training.compression.embedding import compressed_table
from training.compression.folding import fold_text_tower
from training.compression.variant import save_variant
from training.models import build_model
from training.registry import (HISTORY, POINTER, VersionInfo, lineage, list_versions, production_version,
                               promote, promotion_history, rollback, trained_root)

N_ITEMS = 10


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = {"model": "sasrec", "hidden": 8, "layers": 1, "heads": 1, "inner": 16, "dropout": 0.0,
              "attn_dropout": 0.0, "max_len": 4, "n_vocab": N_ITEMS + 1, "text_dim": 4}
    return build_model(config, torch.randn(N_ITEMS + 1, 4)).eval()


@pytest.fixture
def settings(tmp_path):
    return load_settings(home=tmp_path / "home")


def save_trained(settings, version: str, **metadata) -> str:
    items = [f"i{i}" for i in range(N_ITEMS)]
    save_artifact(tiny_model(), items, settings.models_dir, {"protocol": "full", "metrics": {"NDCG@10": 0.1}, **metadata},
                  version=version)
    return version


def save_folded_and_int8(settings, parent_version: str) -> tuple[str, str]:
    """A variant of the trained version, and (for a deeper lineage) a variant of that variant."""
    parent = load_recommender(parent_version, settings)
    folded = save_variant(compressed_table(fold_text_tower(parent.torch_model), "fp16"), parent, settings.models_dir)
    child = load_recommender(folded, settings)
    return folded, save_variant(compressed_table(child.torch_model, "int8_row"), child, settings.models_dir)


def test_list_versions_is_typed_and_skips_what_is_not_a_version(settings):
    assert list_versions(settings) == []
    save_trained(settings, "a-v1")
    warm = save_trained(settings, "b-v2", parent_version="a-v1", protocol="warm_start")
    variant, _ = save_folded_and_int8(settings, "a-v1")
    (settings.models_dir / "runs" / "manual__1").mkdir(parents=True)  # the champion's run folders
    (settings.models_dir / ".staging-x-123").mkdir()
    (settings.models_dir / ".staging-x-123" / "metadata.json").write_text("{}")
    promote(variant, settings)
    infos = {info.version: info for info in list_versions(settings)}
    assert set(infos) == {"a-v1", warm, variant, "a-v1-embedding_fp16-embedding_int8"}
    assert all(isinstance(info, VersionInfo) for info in infos.values())
    assert infos["a-v1"].kind == "trained" and infos["a-v1"].parent_version is None
    assert infos[warm].parent_version == "a-v1" and infos[warm].protocol == "warm_start"
    assert infos[variant].kind == "variant" and infos[variant].parent_version == "a-v1"
    assert [v for v, info in infos.items() if info.production] == [variant]
    assert infos["a-v1"].metrics == {"NDCG@10": 0.1} and infos["a-v1"].to_dict()["version"] == "a-v1"
    assert [info.version for info in list_versions(settings)][0] == "a-v1"  # oldest first


def test_production_version_reads_the_pointer_and_refuses_a_path_in_it(settings):
    assert production_version(settings) is None
    save_trained(settings, "a-v1")
    promote("a-v1", settings)
    assert production_version(settings) == "a-v1"
    assert (settings.models_dir / POINTER).read_text() == "a-v1\n"
    (settings.models_dir / POINTER).write_text("../elsewhere\n")
    with pytest.raises(ArtifactError, match="not a model version name"):
        production_version(settings)


def test_promote_returns_the_replaced_version_and_records_it(settings):
    save_trained(settings, "a-v1")
    save_trained(settings, "b-v2")
    assert promote("a-v1", settings) is None
    assert promote("b-v2", settings) == "a-v1"
    assert production_version(settings) == "b-v2"
    history = promotion_history(settings)
    assert [(r.action, r.version, r.previous) for r in history] == [("promote", "a-v1", None), ("promote", "b-v2", "a-v1")]
    lines = (settings.models_dir / HISTORY).read_text().splitlines()
    assert json.loads(lines[-1])["version"] == "b-v2"
    assert not [p for p in settings.models_dir.iterdir() if p.name.endswith(".tmp")]


def test_promote_refuses_a_missing_a_corrupt_or_a_misnamed_version(settings):
    save_trained(settings, "a-v1")
    save_trained(settings, "b-v2")
    promote("a-v1", settings)
    with pytest.raises(ArtifactError, match="cannot promote 'nope'"):
        promote("nope", settings)
    weights = settings.models_dir / "b-v2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(ArtifactError, match="checksum"):
        promote("b-v2", settings)
    for name in ("a-v1\n", "../a-v1", "a v1", ""):
        with pytest.raises(ArtifactError, match="not a model version name"):
            promote(name, settings)
    assert production_version(settings) == "a-v1"
    assert len(promotion_history(settings)) == 1


def test_rollback_goes_back_through_the_history(settings):
    for version in ("a-v1", "b-v2", "c-v3"):
        save_trained(settings, version)
        promote(version, settings)
    assert rollback(settings) == "b-v2" and production_version(settings) == "b-v2"
    assert rollback(settings) == "a-v1" and production_version(settings) == "a-v1"
    assert rollback(settings) is None and production_version(settings) is None  # a-v1 was the first
    assert not (settings.models_dir / POINTER).exists()
    assert [r.action for r in promotion_history(settings)][-3:] == ["rollback"] * 3
    with pytest.raises(ValueError, match="nothing to roll back"):
        rollback(settings)


def test_rollback_after_a_rollback_and_a_new_promotion(settings):
    for version in ("a-v1", "b-v2"):
        save_trained(settings, version)
        promote(version, settings)
    rollback(settings)
    save_trained(settings, "c-v3")
    assert promote("c-v3", settings) == "a-v1"
    assert rollback(settings) == "a-v1"


def test_promoting_production_again_changes_nothing(settings):
    for version in ("a-v1", "b-v2"):
        save_trained(settings, version)
        promote(version, settings)
    history = promotion_history(settings)
    assert promote("b-v2", settings) == "b-v2"  # a retried release
    assert promotion_history(settings) == history
    assert rollback(settings) == "a-v1"


def test_rollback_without_history_refuses_to_guess(settings):
    save_trained(settings, "a-v1")
    settings.models_dir.joinpath(POINTER).write_text("a-v1\n")  # a pointer from before the history existed
    with pytest.raises(ValueError, match="does not say what was production before a-v1"):
        rollback(settings)
    assert production_version(settings) == "a-v1"


def test_rollback_refuses_a_previous_version_that_no_longer_verifies(settings):
    for version in ("a-v1", "b-v2"):
        save_trained(settings, version)
        promote(version, settings)
    (settings.models_dir / "a-v1" / "items.json").write_text("[]")
    with pytest.raises(ArtifactError, match="a-v1"):
        rollback(settings)
    assert production_version(settings) == "b-v2"


def test_lineage_and_trained_root(settings):
    save_trained(settings, "a-v1")
    folded, deeper = save_folded_and_int8(settings, "a-v1")
    assert lineage("a-v1", settings) == ["a-v1"] and trained_root("a-v1", settings) == "a-v1"
    assert lineage(folded, settings) == [folded, "a-v1"]
    assert lineage(deeper, settings) == [deeper, folded, "a-v1"] and trained_root(deeper, settings) == "a-v1"
    with pytest.raises(ArtifactError, match="no model version 'nope'"):
        lineage("nope", settings)


def test_lineage_with_a_missing_parent_is_an_error(settings, tmp_path):
    save_trained(settings, "a-v1")
    folded, _ = save_folded_and_int8(settings, "a-v1")
    (settings.models_dir / "a-v1").rename(tmp_path / "moved-away")
    with pytest.raises(ArtifactError, match="no model version 'a-v1'"):
        trained_root(folded, settings)


def save_pre_format_2_variant(settings, parent_version: str, version: str) -> str:
    """A variant as ShopRec wrote them before manifest format 2: its spec in variant.json and a
    metadata.json (the parent's, plus the lineage) without format_version or checksums."""
    folder = settings.models_dir / version
    folder.mkdir(parents=True)
    lineage = {"parent_version": parent_version, "method": "embedding_fp16", "parameters": {}}
    (folder / "variant.json").write_text(json.dumps({"format": "shoprec-compressed/1", "kind": "torch",
                                                     "runtime": "plain", "lineage": lineage}))
    (folder / "weights.safetensors").write_bytes(b"\0" * 16)
    (folder / "items.json").write_text(json.dumps([f"i{i}" for i in range(N_ITEMS)]))
    (folder / "metadata.json").write_text(json.dumps({"protocol": "full", "data_end": "2026-01-31 00:00:00+00:00",
                                                      "version": version, "lineage": lineage}))
    return version


def test_a_variant_from_before_format_2_is_refused_but_its_lineage_is_followed(settings):
    save_trained(settings, "a-v1")
    old = save_pre_format_2_variant(settings, "a-v1", "a-v1-embedding_fp16")
    with pytest.raises(ArtifactError, match="before manifest format 2; re-create it: "
                                            "shoprec compress --version a-v1 --promote"):
        load_recommender(old, settings)
    assert lineage(old, settings) == [old, "a-v1"] and trained_root(old, settings) == "a-v1"
    settings.models_dir.joinpath(POINTER).write_text(old + "\n")  # production from before the upgrade
    assert trained_root(production_version(settings), settings) == "a-v1"  # what mode=auto warm-starts from
    with pytest.raises(ArtifactError, match="re-create it"):
        promote(old, settings)
