"""Compressed variants as registered artifacts, and ``load_served_model`` for any version.

A variant lives beside its parent in ``settings.models_dir/<parent>-<method>/`` and
is complete on its own:

- ``variant.json``: format, kind (torch | onnx), run-time transform, model config,
  lineage (parent version, method, parameters);
- ``weights.safetensors`` (torch; per-tensor codec, see ``codec``) or ``model.onnx``;
- ``item_space.safetensors`` (see ``item_space``): the parent's text projection mapped
  into the variant's space (so new items with text can be placed), and for ONNX the
  item table the graph hides;
- ``items.json`` (item ids in vocabulary order) and ``metadata.json`` (the parent's
  metadata plus the lineage).

``load_served_model`` loads a variant, or a plain training artifact through
``training.artifact.load_recommender``, behind the same Recommender contract.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from training.compression.codec import CodecError, read_weights, write_weights
from training.compression.item_space import ITEM_SPACE_FILE, ItemSpace, TextProjection, read_item_space, write_item_space
from training.data import PAD, ItemVocab, pad_left

VARIANT_FILE = "variant.json"
FORMAT = "shoprec-compressed/1"


class VariantError(ValueError):
    """A variant artifact that cannot be loaded."""


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


class ServedModel:
    """The Recommender contract over any scoring net: ``net.score_last(items, positions)``
    returning (B, n_vocab) scores with column 0 = padding. ``space`` supplies the item
    table when the net hides it (ONNX) and the text projection when the net has none."""

    def __init__(self, version: str, item_ids: list[str], metadata: dict, net, max_len: int,
                 space: ItemSpace | None = None):
        self.version, self.metadata, self.max_len = version, metadata, max_len
        self.vocab = ItemVocab(item_ids)
        self.item_ids = self.vocab.item_ids
        self.net = net
        self.space = space or ItemSpace(None, None)

    @property
    def torch_model(self):
        return self.net if isinstance(self.net, torch.nn.Module) else None

    def score_indices(self, histories: list[np.ndarray]) -> np.ndarray:
        """(B, n_vocab) scores from index histories (the evaluation protocol's Scorer)."""
        items, positions = pad_left([h if len(h) else np.array([PAD]) for h in histories], self.max_len)
        with torch.inference_mode():
            out = self.net.score_last(torch.from_numpy(items), torch.from_numpy(positions))
        return np.asarray(out, dtype=np.float32)

    def score(self, histories: list[list[str]]) -> np.ndarray:
        """(batch, n_items) scores, columns in ``item_ids`` order; unknown history items are ignored."""
        return self.score_indices([self.vocab.encode(h) for h in histories])[:, 1:]

    def recommend(self, history: list[str], k: int = 10, exclude=None) -> list[tuple[str, float]]:
        scores = self.score([history])[0].copy()
        for index in self.vocab.encode(list(exclude or [])):
            scores[index - 1] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self.item_ids[i], float(scores[i])) for i in top if np.isfinite(scores[i])]

    def item_embeddings(self) -> np.ndarray:
        """(n_items, d) item representations in ``item_ids`` order (the space /similar_items searches)."""
        if self.space.table is not None:
            return self.space.table[1:]
        if self.torch_model is None:
            raise VariantError(f"model {self.version} has no item table")
        with torch.no_grad():
            return self.torch_model.items.table()[1:].float().numpy()

    def embed_new_item_text(self, text_embedding: np.ndarray) -> np.ndarray:
        """An item with text but no interactions, in ``item_embeddings``' space: (text_dim,) -> (d,), (n, text_dim) -> (n, d)."""
        projection = self.space.projection or TextProjection.of_module(self.torch_model)
        if projection is None:
            raise ValueError(f"model {self.version} was trained without item text")
        return projection(text_embedding)


class OrtNet:
    """An ONNX Runtime session with the ``score_last`` signature of the PyTorch model."""

    def __init__(self, onnx_path: Path, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def score_last(self, items: torch.Tensor, positions: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"items": items.numpy(), "positions": positions.numpy()})[0]


def variant_version(parent_version: str, method: str) -> str:
    return f"{parent_version}-{method}"


def save_variant(variant: TorchVariant | OnnxVariant, parent, models_dir: Path) -> str:
    """Write ``variant`` of the loaded ``parent`` Recommender as ``<parent>-<method>``; returns its version."""
    version = variant_version(parent.version, variant.method)
    final = Path(models_dir) / version
    staging = final.with_name(final.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    lineage = {"parent_version": parent.version, "method": variant.method, "parameters": variant.parameters}
    if isinstance(variant, TorchVariant):
        write_weights(staging / "weights.safetensors", variant.model.state_dict(), variant.codecs)
        spec = {"kind": "torch", "runtime": variant.runtime, "model_config": variant.model.config}
    else:
        shutil.copyfile(variant.onnx_path, staging / "model.onnx")
        spec = {"kind": "onnx", "runtime": "onnxruntime", "model_config": variant.model_config}
    space = item_space_of(variant, parent)
    write_item_space(staging / ITEM_SPACE_FILE, space, getattr(variant, "table_codec", "fp32"))
    spec["text_norm_eps"] = space.projection.eps if space.projection else None
    (staging / VARIANT_FILE).write_text(json.dumps({"format": FORMAT, **spec, "lineage": lineage}, indent=2))
    (staging / "items.json").write_text(json.dumps(list(parent.item_ids)))
    inherited = {k: v for k, v in dict(parent.metadata).items() if k not in ("sha256", "format_version")}
    metadata = {**inherited, "version": version, "lineage": lineage}
    (staging / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return version


def item_space_of(variant: TorchVariant | OnnxVariant, parent) -> ItemSpace:
    """What the variant's scorer does not give: the parent's text projection mapped into
    the variant's table, and (ONNX) the parent's folded table itself."""
    reference = torch.from_numpy(np.asarray(parent.item_embeddings(), dtype=np.float32))
    projection = TextProjection.of_module(parent.torch_model)
    if isinstance(variant, OnnxVariant):
        table = np.concatenate([np.zeros((1, reference.shape[1]), np.float32), reference.numpy()])
        return ItemSpace(table, projection)
    if projection is not None:
        with torch.no_grad():
            projection = projection.mapped_to(reference, variant.model.items.table()[1:].float())
    return ItemSpace(None, projection)


def resolve(path_or_version: str | Path, settings) -> Path:
    path = Path(path_or_version)
    if path.is_dir():
        return path
    if settings is None:
        from shoprec.config import load_settings

        settings = load_settings()
    return Path(settings.models_dir) / str(path_or_version)


def is_variant(path: Path) -> bool:
    return (path / VARIANT_FILE).is_file()


def load_variant(path: Path):
    """A ServedModel from a variant folder alone."""
    try:
        spec = json.loads((path / VARIANT_FILE).read_text())
        item_ids = json.loads((path / "items.json").read_text())
        metadata = json.loads((path / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise VariantError(f"variant {path} is incomplete or corrupt: {error}") from error
    if spec.get("format") != FORMAT:
        raise VariantError(f"{path / VARIANT_FILE}: unknown format {spec.get('format')!r}, expected {FORMAT}")
    config = spec["model_config"]
    if config.get("n_vocab") != len(item_ids) + 1:
        raise VariantError(f"{path}: {len(item_ids)} items do not match the model's n_vocab {config.get('n_vocab')}")
    space = ItemSpace(None, None)  # torch variants saved before item spaces existed: no text path
    if (path / ITEM_SPACE_FILE).exists() or spec["kind"] == "onnx":
        try:
            space = read_item_space(path / ITEM_SPACE_FILE, spec.get("text_norm_eps") or 1e-5)
        except CodecError as error:
            raise VariantError(f"{path}: {error}") from error
    if spec["kind"] == "onnx":
        if not (path / "model.onnx").is_file():
            raise VariantError(f"{path}: model.onnx is missing")
        if space.table is None or space.table.shape[0] != len(item_ids) + 1:
            raise VariantError(f"{path}: {ITEM_SPACE_FILE} holds no item table for the {len(item_ids)} items")
        net = OrtNet(path / "model.onnx")
    else:
        net = build_torch_net(path / "weights.safetensors", config, spec.get("runtime", "plain"))
    return ServedModel(path.name, item_ids, metadata, net, config["max_len"], space)


def build_torch_net(weights: Path, config: dict, runtime: str) -> torch.nn.Module:
    from training.compression.quantization import quantize_linears
    from training.models import build_model

    model = build_model(config)
    try:
        model.load_state_dict(read_weights(weights), strict=True)
    except (CodecError, RuntimeError) as error:
        raise VariantError(f"cannot load weights {weights}: {error}") from error
    model.eval()
    if runtime == "dynamic_int8":
        return quantize_linears(model)
    if runtime != "plain":
        raise VariantError(f"{weights.parent}: unknown run-time transform {runtime!r}")
    return model


def load_served_model(path_or_version: str | Path, settings=None) -> Any:
    """Any model version behind the Recommender contract: a compressed variant or a training artifact."""
    path = resolve(path_or_version, settings)
    if is_variant(path):
        return load_variant(path)
    from training.artifact import load_recommender

    return load_recommender(path_or_version, settings)
