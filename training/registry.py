"""Model versions on disk and the production pointer (``models_dir/PRODUCTION``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from training.artifact import ArtifactError

POINTER = "PRODUCTION"


def list_versions(settings) -> list[dict]:
    """Every complete version (oldest first): version, created_at, protocol, metrics, production flag."""
    root = Path(settings.models_dir)
    if not root.is_dir():
        return []
    current = production_version(settings)
    out = []
    for meta_path in root.glob("*/metadata.json"):
        if meta_path.parent.name.startswith("."):
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # an unreadable version is not listed; load_recommender reports why
        out.append({
            "version": meta.get("version", meta_path.parent.name),
            "created_at": meta.get("created_at"),
            "protocol": meta.get("protocol"),
            "metrics": meta.get("metrics", {}),
            "production": meta_path.parent.name == current,
        })
    return sorted(out, key=lambda v: (v["created_at"] or "", v["version"]))


def production_version(settings) -> str | None:
    pointer = Path(settings.models_dir) / POINTER
    return pointer.read_text().strip() or None if pointer.is_file() else None


def promote(version: str, settings) -> None:
    """Point production at ``version`` (atomic rename, so readers never see a half-written pointer)."""
    root = Path(settings.models_dir)
    if not (root / version / "metadata.json").is_file():
        raise ArtifactError(f"cannot promote {version!r}: no such model version in {root}")
    tmp = root / f".{POINTER}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / POINTER)
