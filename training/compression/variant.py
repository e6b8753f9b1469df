"""Compressed variants as model versions: what the makers return, and ``save_variant``.

A variant lives beside its parent as ``settings.models_dir/<parent>-<method>/``, complete on
its own and in the one version layout (``training.artifact``): ``model.safetensors``
(per-tensor codec) or ``model.onnx``, ``item_space.safetensors``, ``config.json``,
``items.json`` and the manifest, which inherits the parent's metadata and adds the
lineage (parent version, method, parameters). ``training.artifact.load_recommender``
loads it like any version.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.artifact import Recommender, write_version
from training.artifact.codec import write_weights
from training.artifact.item_space import ITEM_SPACE_FILE, ItemSpace, write_item_space
from training.artifact.manifest import CONFIG, ITEMS, ONNX, ONNX_GRAPH, TORCH, VARIANT, WEIGHTS
from training.artifact.writer import metadata_without_reserved, write_json

# the parent's training lineage stays with the parent: a variant's parent is in its lineage
NOT_INHERITED = ("parent_version", "text_norm_eps")


@dataclass
class TorchVariant:
    """A compressed PyTorch model ready to save: fp32 module + per-tensor codecs + run-time transform."""

    method: str
    model: torch.nn.Module
    codecs: Callable[[str, torch.Tensor], str]
    parameters: dict = field(default_factory=dict)
    runtime: str = "plain"  # or "dynamic_int8"


@dataclass
class OnnxVariant:
    method: str
    onnx_path: Path  # a self-contained .onnx file (no external data)
    model_config: dict
    parameters: dict = field(default_factory=dict)
    table_codec: str = "fp32"  # how the item table kept beside the graph is stored


def variant_version(parent_version: str, method: str) -> str:
    return f"{parent_version}-{method}"


def save_variant(variant: TorchVariant | OnnxVariant, parent: Recommender, models_dir: Path) -> str:
    """Write ``variant`` of the loaded ``parent`` as the version ``<parent>-<method>``; returns it.
    Raises ArtifactError when that version exists (versions never change once written)."""
    version = variant_version(parent.version, variant.method)
    space = item_space_of(variant, parent)
    lineage = {"parent_version": parent.version, "method": variant.method, "parameters": variant.parameters}

    def write_files(folder: Path) -> None:
        if isinstance(variant, TorchVariant):
            write_weights(folder / WEIGHTS, variant.model.state_dict(), variant.codecs)
        else:
            shutil.copyfile(variant.onnx_path, folder / ONNX_GRAPH)
        write_item_space(folder / ITEM_SPACE_FILE, space, getattr(variant, "table_codec", "fp32"))
        write_json(folder / CONFIG, _model_config(variant))
        write_json(folder / ITEMS, list(parent.item_ids))

    inherited = {k: v for k, v in metadata_without_reserved(parent.metadata).items() if k not in NOT_INHERITED}
    manifest = {**inherited, "kind": VARIANT, **_format_of(variant), "lineage": lineage,
                "n_items": len(parent.item_ids), "text_norm_eps": space.projection.eps if space.projection else None}
    write_version(models_dir, version, write_files, manifest)
    return version


def _model_config(variant: TorchVariant | OnnxVariant) -> dict:
    return dict(variant.model.config if isinstance(variant, TorchVariant) else variant.model_config)


def _format_of(variant: TorchVariant | OnnxVariant) -> dict:
    if isinstance(variant, TorchVariant):
        return {"format": TORCH, "runtime": variant.runtime}
    return {"format": ONNX, "runtime": "onnxruntime"}


def item_space_of(variant: TorchVariant | OnnxVariant, parent: Recommender) -> ItemSpace:
    """What the variant's scorer does not give: the parent's text projection mapped into
    the variant's table, and (ONNX) the parent's folded table itself."""
    reference = torch.from_numpy(np.asarray(parent.item_embeddings(), dtype=np.float32))
    projection = parent.space.projection
    if isinstance(variant, OnnxVariant):
        table = np.concatenate([np.zeros((1, reference.shape[1]), np.float32), reference.numpy()])
        return ItemSpace(table, projection)
    if projection is not None:
        with torch.no_grad():
            projection = projection.mapped_to(reference, variant.model.items.table()[1:].float())
    return ItemSpace(None, projection)

