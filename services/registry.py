"""Register a model version in the BentoML model store (``settings.bentoml_home``) and
promote it, only once it has proved it can be served.

The files are the artifact as saved by ``training.artifact`` or a compressed variant,
copied verbatim; ``bentoml.pytorch`` is not used (it pickles modules and cannot load them
on torch 2.13). Training stays free of BentoML: the Airflow DAG's register step calls
``release``: verify (load it exactly as the service does) -> register -> promote.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from shoprec.config import Settings

MODEL_NAME = "shoprec-recommender"


class NotServable(RuntimeError):
    """A model version the service could not load or answer with; it must not become production."""


def model_store(settings: Settings):
    from bentoml._internal.models import ModelStore

    path = Path(settings.bentoml_home) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return ModelStore(str(path))


def bentoml_tag(version: str) -> str:
    """A BentoML tag for a ShopRec version (tags allow lowercase letters, digits, '-', '_', '.')."""
    return f"{MODEL_NAME}:{re.sub(r'[^a-z0-9_.-]', '-', version.lower())}"


def register_in_bentoml(version_dir: Path, settings: Settings) -> str:
    """Copy a version's files into the model store (idempotent); returns the tag."""
    import bentoml
    from bentoml.exceptions import NotFound

    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise FileNotFoundError(f"no model version at {version_dir}")
    store = model_store(settings)
    tag = bentoml_tag(version_dir.name)
    try:
        return str(store.get(tag).tag)
    except NotFound:
        pass
    metadata = _metadata(version_dir)
    with bentoml.models.create(
        tag,
        labels={"shoprec_version": version_dir.name},
        metadata=metadata,
        _model_store=store,
    ) as model:
        shutil.copytree(version_dir, model.path, dirs_exist_ok=True)
    return str(model.tag)


def registered_path(version: str, settings: Settings) -> Path:
    """Where the store keeps a registered version's files."""
    return Path(model_store(settings).get(bentoml_tag(version)).path)


def _metadata(version_dir: Path) -> dict:
    """Scalars of the artifact's metadata.json (metrics flattened), as BentoML accepts."""
    path = version_dir / "metadata.json"
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    out = {k: v for k, v in raw.items() if isinstance(v, (str, int, float, bool))}
    out.update({f"metric_{k}": v for k, v in (raw.get("metrics") or {}).items() if isinstance(v, (int, float))})
    return out


def verify_servable(version: str, settings: Settings) -> dict:
    """Load ``version`` the way the service does (``services.engine.load_bundle``) and ask it
    for a recommendation and its similar-items table; raises NotServable with the reason."""
    from services.engine import load_bundle

    try:
        bundle = load_bundle(version, settings)
        model = bundle.recommender
        top = model.recommend([model.item_ids[0]], k=5)
    except Exception as exc:  # whatever breaks the load breaks the service the same way
        raise NotServable(f"model version {version} cannot be served: {type(exc).__name__}: {exc}") from exc
    if not top:
        raise NotServable(f"model version {version} recommends nothing")
    return {"version": version, "items": len(model.item_ids), "embedding_dim": int(bundle.unit_embeddings.shape[1])}


def release(version: str, settings: Settings) -> dict:
    """Verify, register in the model store, then promote ``version`` to production.

    Returns the version, its BentoML tag and the production version it replaced (for a rollback).
    """
    from training.registry import production_version, promote

    checked = verify_servable(version, settings)
    tag = register_in_bentoml(Path(settings.models_dir) / version, settings)
    previous = production_version(settings)
    promote(version, settings)
    return {"version": version, "bentoml_tag": tag, "previous": previous, "verified": checked}
