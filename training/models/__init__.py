"""One module per model (``<model>.py`` beside its hyperparameters ``<model>.yaml``, which
``shoprec.config`` loads into ``settings.hyperparameters``); ``build_model`` picks one by name."""

from __future__ import annotations

import torch

from shoprec.config import Hyperparameters
from training.models.sasrec import SASRec

MODELS = {"sasrec": SASRec}


def build_model(model_config: dict, text_embeddings: torch.Tensor | None = None) -> torch.nn.Module:
    """Instantiate the model named in ``model_config['model']`` from its config dict (the artifact's config.json)."""
    name = model_config.get("model", "sasrec")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name](model_config, text_embeddings)


def new_model(hyperparameters: Hyperparameters, n_vocab: int, text_embeddings: torch.Tensor | None = None) -> torch.nn.Module:
    """A freshly initialised model shaped by ``hyperparameters`` for ``n_vocab`` items (with padding);
    ``text_embeddings`` (n_vocab, d) turns the text tower on."""
    text_dim = 0 if text_embeddings is None else int(text_embeddings.shape[1])
    return build_model({**hyperparameters.architecture(), "n_vocab": n_vocab, "text_dim": text_dim}, text_embeddings)
