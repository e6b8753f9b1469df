"""The run-time forms a version's scoring net can take: plain PyTorch, PyTorch with dynamic
int8 linears, or an ONNX Runtime session. Each has ``score_last(items, positions)`` ->
(B, n_vocab) scores with column 0 = padding. The compression makers import from here
(never the reverse), so a loader needs nothing from ``training.compression``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf
from torch import nn
from transformers.pytorch_utils import Conv1D

from training.artifact.codec import CodecError, read_weights
from training.artifact.manifest import ArtifactError
from training.models import build_model


def linearize(model: nn.Module) -> nn.Module:
    """Replace every Conv1D (GPT-2's x @ W + b, W stored in x out) by the equal nn.Linear (in place):
    quantize_dynamic does not know Conv1D."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    linear.bias.copy_(child.bias)
                setattr(module, name, linear)
    return model


def quantize_linears(model: nn.Module) -> nn.Module:
    """The dynamic_int8 run-time: Conv1D -> Linear, then dynamic int8 on every Linear
    (int8 weights, activations quantized per batch)."""
    return torch.ao.quantization.quantize_dynamic(linearize(model).eval(), {nn.Linear}, dtype=torch.qint8)


class OrtNet:
    """An ONNX Runtime session with the ``score_last`` signature of the PyTorch model."""

    def __init__(self, onnx_path: Path, threads: int = 0):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def score_last(self, items: torch.Tensor, positions: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"items": items.numpy(), "positions": positions.numpy()})[0]


def torch_net(weights: Path, config: dict, runtime: str) -> nn.Module:
    """The PyTorch scorer of a version: ``config``'s model with ``weights`` (any codec), in eval mode."""
    model = build_model(config)
    try:
        model.load_state_dict(read_weights(weights), strict=True)
    except (CodecError, RuntimeError, ValueError, KeyError) as error:
        raise ArtifactError(f"{weights.parent}: weights do not fit the config: {error}") from None
    model.eval()
    if runtime == "dynamic_int8":
        return quantize_linears(model)
    return model


def onnx_net(graph: Path) -> OrtNet:
    try:
        return OrtNet(graph)
    except (Fail, InvalidGraph, InvalidProtobuf) as error:
        raise ArtifactError(f"{graph}: not a loadable ONNX graph: {error}") from None
