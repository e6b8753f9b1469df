"""The one registry: model versions on disk, the production pointer and its history.

``models_dir/PRODUCTION`` names the version the service serves; every promotion and
rollback appends a line to ``models_dir/HISTORY.jsonl`` (what became production and what
it replaced), so a rollback knows where to go back to. Both are written durably (temp
file with a unique name, fsync, rename, directory fsync) under a lock, so two promotions
never interleave and a reader never sees a half-written pointer. A variant's lineage
leads to the trained version it was made from (``trained_root``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from shoprec.config import Settings
from shoprec.durable import fsync_path, write_text_atomically
from shoprec.locks import exclusive_lock
from training.artifact import ArtifactError, check_version_name, verified_manifest
from training.artifact.manifest import METADATA, TRAINED, LegacyVariantError, read_manifest

POINTER = "PRODUCTION"
HISTORY = "HISTORY.jsonl"
LOCK = ".registry.lock"


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created_at: str | None
    protocol: str | None
    metrics: dict = field(default_factory=dict)
    kind: str = TRAINED  # trained | variant
    parent_version: str | None = None  # variant: compressed from; warm start: fine-tuned from
    production: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PromotionRecord:
    """One line of the promotion history."""

    at: str
    action: str  # promote | rollback
    version: str | None  # production after this step (None: the pointer was cleared)
    previous: str | None  # production before it

    def to_dict(self) -> dict:
        return asdict(self)


def list_versions(settings: Settings) -> list[VersionInfo]:
    """Every version with a readable manifest, oldest first (files are verified at load, not here)."""
    root = Path(settings.models_dir)
    if not root.is_dir():
        return []
    current = production_version(settings)
    infos = []
    for meta_path in root.glob(f"*/{METADATA}"):
        folder = meta_path.parent
        if folder.name.startswith("."):
            continue  # a staging folder
        try:
            manifest = read_manifest(folder)
        except ArtifactError:
            continue  # not listed; load_recommender says why
        infos.append(_info(folder.name, manifest, folder.name == current))
    return sorted(infos, key=lambda info: (info.created_at or "", info.version))


def _info(version: str, manifest: dict, production: bool) -> VersionInfo:
    lineage = manifest.get("lineage") or {}
    return VersionInfo(version, manifest.get("created_at"), manifest.get("protocol"), manifest.get("metrics", {}),
                       manifest["kind"], lineage.get("parent_version") or manifest.get("parent_version"), production)


def production_version(settings: Settings) -> str | None:
    pointer = Path(settings.models_dir) / POINTER
    if not pointer.is_file():
        return None
    return check_version_name(pointer.read_text().strip())


def promote(version: str, settings: Settings) -> str | None:
    """Make ``version`` production; returns the version it replaced. Refuses (ArtifactError) a
    version that does not exist or whose files do not verify against its manifest. Promoting
    the version already in production changes nothing (a retried release must not make the
    history point a rollback back at the same version)."""
    root = Path(settings.models_dir)
    _verified(version, settings)
    with exclusive_lock(root / LOCK):
        previous = production_version(settings)
        if previous == version:
            return previous
        _write_pointer(root, version)
        _append_history(root, PromotionRecord(_now(), "promote", version, previous))
    return previous


def rollback(settings: Settings) -> str | None:
    """Put back the version production had before the current one became production; returns
    the version now in production (None: there was none before, and the pointer is cleared).
    ValueError when nothing is in production or the history does not know the current version."""
    root = Path(settings.models_dir)
    with exclusive_lock(root / LOCK):
        current = production_version(settings)
        if current is None:
            raise ValueError(f"nothing to roll back: no production version in {root}")
        promotions = [r for r in promotion_history(settings)
                      if r.action == "promote" and r.version == current and r.previous != current]
        if not promotions:
            raise ValueError(f"the promotion history ({root / HISTORY}) does not say what was production before "
                             f"{current}; promote the version to go back to instead")
        previous = promotions[-1].previous
        if previous is None:
            _clear_pointer(root)
        else:
            _verified(previous, settings)
            _write_pointer(root, previous)
        _append_history(root, PromotionRecord(_now(), "rollback", previous, current))
    return previous


def promotion_history(settings: Settings) -> list[PromotionRecord]:
    """Every promotion and rollback, oldest first."""
    path = Path(settings.models_dir) / HISTORY
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [PromotionRecord(**json.loads(line)) for line in lines]


def lineage(version: str, settings: Settings) -> list[str]:
    """``version``, the version it was compressed from, ... up to the trained version at the root."""
    chain = [check_version_name(version)]
    while True:
        parent = _parent(chain[-1], settings)
        if parent is None:
            return chain
        if parent in chain:
            raise ArtifactError(f"the lineage of {version} loops: {' -> '.join([*chain, parent])}")
        chain.append(parent)


def trained_root(version: str, settings: Settings) -> str:
    """The trained (FP32) version that ``version`` is, or was compressed from."""
    return lineage(version, settings)[-1]


def _parent(version: str, settings: Settings) -> str | None:
    """The version ``version`` was compressed from (None: it is a trained version). A variant
    from before manifest format 2 does not load, but its old manifest still names its parent,
    so a warm start after an upgrade still finds the trained root."""
    folder = Path(settings.models_dir) / version
    if not (folder / METADATA).is_file():
        raise ArtifactError(f"no model version {version!r} in {settings.models_dir}")
    try:
        manifest = read_manifest(folder)
    except LegacyVariantError as error:
        if error.parent_version is None:
            raise
        return check_version_name(error.parent_version)
    return None if manifest["kind"] == TRAINED else check_version_name(manifest["lineage"]["parent_version"])


def _verified(version: str, settings: Settings) -> dict:
    folder = Path(settings.models_dir) / check_version_name(version)
    if not folder.is_dir():
        raise ArtifactError(f"cannot promote {version!r}: no such model version in {settings.models_dir}")
    try:
        return verified_manifest(folder)
    except ArtifactError as error:
        raise ArtifactError(f"cannot promote {version!r}: {error}") from None


def _write_pointer(root: Path, version: str) -> None:
    write_text_atomically(root / POINTER, version + "\n")


def _clear_pointer(root: Path) -> None:
    (root / POINTER).unlink(missing_ok=True)
    fsync_path(root)


def _append_history(root: Path, record: PromotionRecord) -> None:
    with open(root / HISTORY, "a") as handle:
        handle.write(json.dumps(record.to_dict()) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
