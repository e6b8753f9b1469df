"""``load_recommender``: the one loader of every model version, whatever its format."""

from __future__ import annotations

from pathlib import Path

from shoprec.config import Settings, load_settings
from training.artifact.codec import CodecError
from training.artifact.item_space import ITEM_SPACE_FILE, ItemSpace, read_item_space
from training.artifact.manifest import (CONFIG, ITEMS, ONNX, ONNX_GRAPH, WEIGHTS, ArtifactError, check_version_name,
                                        read_json, verified_manifest)
from training.artifact.recommender import Recommender
from training.artifact.runtime import onnx_net, torch_net


def resolve_version_dir(path_or_version: str | Path, settings: Settings | None = None) -> Path:
    """The folder of a version: a path (a Path, or a string with a "/") as given, else a version
    name under ``settings.models_dir`` (never a folder of the working directory that shares its name)."""
    if isinstance(path_or_version, Path) or "/" in path_or_version:
        path = Path(path_or_version)
        if not path.is_dir():
            raise ArtifactError(f"no model version at {path}")
        return path
    candidate = (settings or load_settings()).models_dir / check_version_name(path_or_version)
    if not candidate.is_dir():
        raise ArtifactError(f"no model version {path_or_version!r} (looked for {candidate})")
    return candidate


def load_recommender(path_or_version: str | Path, settings: Settings | None = None) -> Recommender:
    """Load a version (a folder, or a version name under ``settings.models_dir``) of any format,
    after verifying the checksum of every file. Raises ArtifactError when a file is missing,
    altered or the parts disagree."""
    root = resolve_version_dir(path_or_version, settings)
    manifest = verified_manifest(root)
    config, item_ids = read_json(root / CONFIG), read_json(root / ITEMS)
    if not isinstance(item_ids, list) or not isinstance(config, dict):
        raise ArtifactError(f"{root}: config.json must hold an object and items.json a list")
    if len(item_ids) + 1 != config.get("n_vocab"):
        raise ArtifactError(f"{root}: items.json has {len(item_ids)} ids but the model has "
                            f"{config.get('n_vocab', 1) - 1} items")
    space = _item_space(root, manifest, len(item_ids))
    if manifest["format"] == ONNX:
        net = onnx_net(root / ONNX_GRAPH)
    else:
        net = torch_net(root / WEIGHTS, config, manifest["runtime"])
    return Recommender(manifest["version"], item_ids, manifest, net, config["max_len"], space, root)


def _item_space(root: Path, manifest: dict, n_items: int) -> ItemSpace | None:
    """The version's item space file (None: the net's own table and text tower)."""
    if ITEM_SPACE_FILE not in manifest["sha256"]:
        if manifest["format"] == ONNX:
            raise ArtifactError(f"{root}: an ONNX version needs {ITEM_SPACE_FILE} (its item table)")
        return None
    try:
        space = read_item_space(root / ITEM_SPACE_FILE, manifest.get("text_norm_eps") or 1e-5)
    except CodecError as error:
        raise ArtifactError(f"{root}: {error}") from None
    if manifest["format"] == ONNX and (space.table is None or space.table.shape[0] != n_items + 1):
        raise ArtifactError(f"{root}: {ITEM_SPACE_FILE} holds no item table for the {n_items} items")
    return space
