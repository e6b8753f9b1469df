"""The one writer of model versions: a version appears whole or not at all, and never changes.

Files go to a staging folder with a unique name beside the final one, are fsynced, the
manifest (with the checksum of every file) is written last, then one rename publishes
the folder and the parent directory is fsynced. A version that exists is never
replaced or deleted: the service may be serving it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from shoprec.durable import fsync_path
from training.artifact.codec import write_weights
from training.artifact.manifest import (CONFIG, FORMAT_VERSION, ITEMS, METADATA, RESERVED, TORCH, TRAINED, WEIGHTS,
                                        ArtifactError, check_version_name, payload_files, sealed)

STAGING_PREFIX = ".staging-"


def new_version(model_name: str) -> str:
    return f"{model_name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def write_version(models_dir: Path, version: str, write_files: Callable[[Path], None], manifest: dict) -> Path:
    """Publish ``models_dir/version``: ``write_files(folder)`` writes the payload, ``manifest``
    the metadata (the reserved fields it sets: kind, format, runtime, lineage, n_items).
    Raises ArtifactError when the version exists."""
    check_version_name(version)
    models_dir = Path(models_dir)
    final = models_dir / version
    if final.exists():
        raise ArtifactError(f"model version {version} already exists at {final}")
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write_files(staging)
        stamp = {"version": version, "format_version": FORMAT_VERSION, "created_at": datetime.now(timezone.utc).isoformat()}
        (staging / METADATA).write_text(sealed({**manifest, **stamp}, staging))
        for name in [*payload_files(staging), METADATA]:
            fsync_path(staging / name)
        fsync_path(staging)
        _publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # our own uniquely named folder, never a published one
        raise
    fsync_path(models_dir)
    return final


def _publish(staging: Path, final: Path) -> None:
    try:
        os.rename(staging, final)  # refuses a non-empty folder that appeared meanwhile: no overwrite
    except OSError as error:
        raise ArtifactError(f"cannot publish model version {final.name}: {error}") from None


def metadata_without_reserved(metadata: dict) -> dict:
    return {key: value for key, value in metadata.items() if key not in RESERVED}


def save_artifact(model: torch.nn.Module, item_ids: list[str], models_dir: Path, metadata: dict,
                  version: str | None = None) -> Path:
    """Write a trained PyTorch model as a new version (``config.json``, ``items.json``,
    ``model.safetensors``, the manifest with ``metadata``); returns its folder."""
    version = version or new_version(model.config.get("model", "model"))
    if len(item_ids) + 1 != model.config["n_vocab"]:
        raise ArtifactError(f"{len(item_ids)} item ids for a model with {model.config['n_vocab'] - 1} items")
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}

    def write_files(folder: Path) -> None:
        write_weights(folder / WEIGHTS, state, lambda name, tensor: "fp32")
        write_json(folder / CONFIG, model.config)
        write_json(folder / ITEMS, [str(item) for item in item_ids])

    manifest = {**metadata_without_reserved(metadata), "kind": TRAINED, "format": TORCH, "runtime": "plain",
                "n_items": len(item_ids)}
    return write_version(models_dir, version, write_files, manifest)


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, default=str))
