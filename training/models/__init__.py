"""One module per model; ``build_model(name, ...)`` picks one by name."""

from __future__ import annotations

from pathlib import Path

import yaml

MODELS_DIR = Path(__file__).resolve().parent


def load_hyperparameters(model: str, profile: str = "full") -> dict:
    """The ``profile`` section of ``training/models/<model>.yaml``, merged over its ``defaults``."""
    path = MODELS_DIR / f"{model}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(known)}")
    spec = yaml.safe_load(path.read_text())
    if profile not in spec.get("profiles", {}):
        raise ValueError(f"model {model!r} has no profile {profile!r}; known: {', '.join(spec.get('profiles', {}))}")
    return {**spec.get("defaults", {}), **spec["profiles"][profile]}


def build_model(model_config: dict, text_embeddings=None):
    """Instantiate the model named in ``model_config['model']`` from its config dict."""
    name = model_config.get("model", "sasrec")
    if name == "sasrec":
        from training.models.sasrec import SASRec

        return SASRec(model_config, text_embeddings)
    raise ValueError(f"unknown model {name!r}")
