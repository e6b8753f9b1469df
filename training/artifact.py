"""The model artifact: one version directory binds everything serving needs.

``<models_dir>/<version>/`` holds
  model.safetensors  weights, including the item text-embedding matrix the model was trained with
  config.json        the model config (architecture, vocabulary size, text dimension)
  items.json         item ids in index order (index i+1 in the model = items[i]; 0 is padding)
  metadata.json      version, created_at, protocol, metrics, training-data fingerprint,
                     text-embedding version, training history, sha256 of every file
Serving code calls ``load_recommender`` and nothing else from training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training.data import pad_left
from training.models import build_model

FORMAT_VERSION = 1
FILES = ("model.safetensors", "config.json", "items.json")


class ArtifactError(Exception):
    """A model version is missing, corrupt or inconsistent."""


def new_version(model_name: str) -> str:
    return f"{model_name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_artifact(model, item_ids: list[str], models_dir: Path, metadata: dict, version: str | None = None) -> Path:
    """Write a new version directory atomically (temp dir + rename); returns its path."""
    version = version or new_version(model.config.get("model", "model"))
    final = Path(models_dir) / version
    if final.exists():
        raise ArtifactError(f"model version {version} already exists at {final}")
    if len(item_ids) + 1 != model.config["n_vocab"]:
        raise ArtifactError(f"{len(item_ids)} item ids for a model with {model.config['n_vocab'] - 1} items")
    tmp = final.with_name(f".{version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(model.config, indent=2))
    (tmp / "items.json").write_text(json.dumps(list(item_ids)))
    meta = {
        **metadata,
        "version": version,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "n_items": len(item_ids),
        "sha256": {name: _sha256(tmp / name) for name in FILES},
    }
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, final)
    return final


def resolve_version_dir(path_or_version: str | Path, settings=None) -> Path:
    path = Path(path_or_version)
    if path.is_dir():
        return path
    if settings is None:
        from shoprec.config import load_settings

        settings = load_settings()
    candidate = settings.models_dir / str(path_or_version)
    if not candidate.is_dir():
        raise ArtifactError(f"no model version {path_or_version!r} (looked for {candidate})")
    return candidate


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"artifact file missing: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"artifact file is not valid JSON: {path} ({exc})") from None


def load_recommender(path_or_version: str | Path, settings=None) -> "Recommender":
    """Load a version (directory path or version name under settings.models_dir), verifying it.

    Raises ArtifactError when a file is missing, its checksum differs, or the parts disagree.
    """
    root = resolve_version_dir(path_or_version, settings)
    metadata = _read_json(root / "metadata.json")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{root}: artifact format {metadata.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    for name in FILES:
        if not (root / name).is_file():
            raise ArtifactError(f"artifact file missing: {root / name}")
        if _sha256(root / name) != metadata.get("sha256", {}).get(name):
            raise ArtifactError(f"{root / name} does not match its checksum in metadata.json (corrupt or altered)")
    config = _read_json(root / "config.json")
    item_ids = _read_json(root / "items.json")
    if not isinstance(item_ids, list) or len(item_ids) + 1 != config.get("n_vocab"):
        raise ArtifactError(f"{root}: items.json has {len(item_ids)} ids but the model has {config.get('n_vocab', 1) - 1} items")
    try:
        state = load_file(root / "model.safetensors")
        model = build_model(config)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise ArtifactError(f"{root}: weights do not fit the config: {exc}") from None
    model.eval()
    return Recommender(metadata["version"], item_ids, metadata, model)


class Recommender:
    """Inference over one model version; scores are float32 over ``item_ids`` (index order)."""

    def __init__(self, version: str, item_ids: list[str], metadata: dict, model):
        self.version = version
        self.item_ids = list(item_ids)
        self.metadata = metadata
        self.torch_model = model
        self._index = {item: i + 1 for i, item in enumerate(self.item_ids)}

    @property
    def max_len(self) -> int:
        return self.torch_model.max_len

    def _encode(self, history: list[str]) -> np.ndarray:
        if len(history) == 0:
            raise ValueError("empty history: a recommendation needs at least one item")
        known = np.array([self._index[i] for i in map(str, history) if i in self._index], dtype=np.int64)
        if len(known) == 0:
            raise ValueError(f"none of the {len(history)} history items is known to model {self.version}")
        return known[-self.max_len:]

    def score(self, histories: list[list[str]]) -> np.ndarray:
        """(batch, n_items) float32 scores; unknown ids are ignored, the most recent max_len items are used."""
        if len(histories) == 0:
            return np.zeros((0, len(self.item_ids)), dtype=np.float32)
        items, positions = pad_left([self._encode(h) for h in histories], self.max_len)
        with torch.inference_mode():
            scores = self.torch_model.score_last(torch.from_numpy(items), torch.from_numpy(positions))
        return scores[:, 1:].float().numpy()

    def recommend(self, history: list[str], k: int, exclude: set[str] = ()) -> list[tuple[str, float]]:
        """Top-k (item_id, score), best first, leaving out ``exclude``."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        scores = self.score([history])[0]
        for item in exclude:
            if item in self._index:
                scores[self._index[item] - 1] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.item_ids[i], float(scores[i])) for i in top]

    def item_embeddings(self) -> np.ndarray:
        """(n_items, d) final item representations (the tied input/output table)."""
        with torch.inference_mode():
            return self.torch_model.items.table()[1:].float().numpy()

    def embed_new_item_text(self, text_embedding: np.ndarray) -> np.ndarray:
        """Representation of an item with text but no interactions: the text projection path.
        Accepts (text_dim,) or (n, text_dim); returns (d,) or (n, d)."""
        items = self.torch_model.items
        if not items.text_dim:
            raise ValueError(f"model {self.version} was trained without item text")
        vector = np.asarray(text_embedding, dtype=np.float32)
        if vector.shape[-1] != items.text_dim or vector.ndim not in (1, 2):
            raise ValueError(f"expected text embeddings of dimension {items.text_dim}, got shape {vector.shape}")
        with torch.inference_mode():
            return items.project_text(torch.from_numpy(vector)).numpy()
