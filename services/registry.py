"""Register a trained model version in the BentoML model store (``settings.bentoml_home``).

The files are the training artifact as saved by ``training.artifact`` (state dict,
vocabulary, config, metrics) copied verbatim; ``bentoml.pytorch`` is not used (it
pickles modules and cannot load them on torch 2.13). Training stays free of BentoML:
the Airflow DAG calls ``register_in_bentoml`` after promotion.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from shoprec.config import Settings

MODEL_NAME = "shoprec-recommender"


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
