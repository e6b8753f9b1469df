"""The 100,000-item serving path's fast forms against their definitions: the ONNX scorer without
the exported padding mask (``training.artifact.runtime.OrtNet``) and the served top-k
(``services.ranking.best_first``) give the items the exported graph and a full sort give."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from services.ranking import best_first
from shoprec.config import load_hyperparameters
from training.artifact.runtime import OrtNet
from training.compression.onnx_export import export_onnx
from training.models import build_model
from training.vocab import PAD, pad_left

N_ITEMS, MAX_LEN, K = 100_000, 8, 20


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """A small SASRec over a 100,000-item catalog, exported the way the ONNX variant is."""
    torch.manual_seed(0)
    hp = load_hyperparameters("sasrec", "quick", {"hidden": 16, "inner": 32, "layers": 1, "heads": 1, "max_len": MAX_LEN})
    model = build_model({**hp.architecture(), "n_vocab": N_ITEMS + 1, "text_dim": 0})
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


def _histories(rng: np.random.Generator, batch: int) -> list[np.ndarray]:
    return [rng.integers(1, N_ITEMS + 1, int(rng.integers(1, 2 * MAX_LEN))) for _ in range(batch)]


def test_onnx_scores_without_the_exported_padding_mask_equal_the_graph_bit_for_bit(graph):
    net = OrtNet(graph, threads=1)
    assert net.masks_padding  # the export ends in the mask: the fast form is the one under test
    exported = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 3, 16):
        items, positions = pad_left(_histories(rng, batch), MAX_LEN)
        ours = net.score_last(torch.from_numpy(items), torch.from_numpy(positions))
        theirs = exported.run(None, {"items": items, "positions": positions})[0]
        assert ours.shape == (batch, N_ITEMS + 1) and np.array_equal(ours, theirs)
        assert np.all(ours[:, PAD] == -np.inf)


def test_served_picks_equal_a_full_sort_of_the_exported_scores_without_seen_items(graph):
    """For random histories: the served path (fast scorer, block top-k, seen items banned) and the
    definition (the exported graph's scores, seen items removed, every item sorted best first)."""
    net = OrtNet(graph, threads=1)
    exported = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    histories = _histories(rng, 32)
    items, positions = pad_left(histories, MAX_LEN)
    served = net.score_last(torch.from_numpy(items), torch.from_numpy(positions))[:, 1:]
    reference = exported.run(None, {"items": items, "positions": positions})[0][:, 1:]
    for history, ours, theirs in zip(histories, served, reference):
        banned = np.zeros(N_ITEMS, dtype=bool)
        banned[history - 1] = True
        allowed = np.flatnonzero(~banned)
        definition = allowed[np.lexsort((allowed, -theirs[allowed]))][:K]
        assert best_first(ours, banned, K).tolist() == definition.tolist()
