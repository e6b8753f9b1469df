"""The run-time forms a version's scoring net can take: plain PyTorch, PyTorch with dynamic
int8 linears, or an ONNX Runtime session. Each has ``score_last(items, positions)`` ->
(B, n_vocab) scores with column 0 = padding. The compression makers import from here
(never the reverse), so a loader needs nothing from ``training.compression``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf
from torch import nn
from transformers.pytorch_utils import Conv1D

from training.artifact.codec import CodecError, read_weights
from training.artifact.manifest import ArtifactError
from training.models import build_model
from training.vocab import PAD


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
    """An ONNX Runtime session with the ``score_last`` signature of the PyTorch model.

    The export writes ``scores[..., PAD] = -inf`` as a ScatterElements that copies the whole
    (B, n_vocab) output: 0.6 of 4.6 ms of a 4-row call at 100,000 items (ORT profile). When the
    graph ends that way, the session stops at the scores before it and ``score_last`` sets the
    padding column itself, in place: the same array, bit for bit, without the copy."""

    def __init__(self, onnx_path: Path, threads: int = 0):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        graph = onnx.load(str(onnx_path))
        self.masks_padding = _drop_padding_mask(graph)
        self.session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def score_last(self, items: torch.Tensor, positions: torch.Tensor) -> np.ndarray:
        scores = self.session.run(None, {"items": items.numpy(), "positions": positions.numpy()})[0]
        if self.masks_padding:
            scores[:, PAD] = -np.inf
        return scores


def _drop_padding_mask(model: onnx.ModelProto) -> bool:
    """Whether the graph's one output was ``X`` with column PAD set to -inf by a ScatterElements on
    the last axis; if so, ``X`` becomes the output and the nodes only the mask needed are removed."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    scatter = producer.get(graph.output[0].name) if len(graph.output) == 1 else None
    if scatter is None or scatter.op_type != "ScatterElements" or _attribute(scatter, "reduction", b"none") != b"none":
        return False
    data, indices, updates = scatter.input
    if _attribute(scatter, "axis", 0) not in (1, -1) or _constant(indices, producer, graph) != PAD \
            or _constant(updates, producer, graph) != -np.inf:
        return False
    graph.output[0].name = data
    needed, todo = set(), [data]
    while todo:  # every node the new output depends on
        node = producer.get(todo.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            todo.extend(node.input)
    kept = [node for node in graph.node if id(node) in needed]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return True


def _constant(name: str, producer: dict, graph: onnx.GraphProto) -> float | None:
    """The one value a tensor is filled with when it is a scalar initializer broadcast by Expand or
    Unsqueeze (None otherwise)."""
    while name in producer and producer[name].op_type in ("Expand", "Unsqueeze"):
        name = producer[name].input[0]
    init = next((i for i in graph.initializer if i.name == name), None)
    if init is None:
        return None
    value = onnx.numpy_helper.to_array(init)
    return float(value) if value.size == 1 else None


def _attribute(node: onnx.NodeProto, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


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
    except (Fail, InvalidGraph, InvalidProtobuf, DecodeError) as error:
        raise ArtifactError(f"{graph}: not a loadable ONNX graph: {error}") from None
