"""ONNX export of the folded model and ONNX Runtime int8 quantization.

The exported graph is ``score_last(items, positions) -> scores``; inputs go by keyword
(the exporter's requirement) with dynamic batch and sequence length. Weights are
embedded in the one .onnx file so the artifact is a single self-contained file.
ONNX Runtime's dynamic quantization turns MatMul/Gather weights into int8.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from training.compression.variant import OnnxVariant
from training.vocab import pad_left

OPSET = 18


class ScoreLast(torch.nn.Module):
    """Keyword-input wrapper: what the exporter traces."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.score_last(items, positions)


def export_onnx(model: torch.nn.Module, path: Path) -> Path:
    """Write ``model``'s scorer as one self-contained ONNX file."""
    model.eval()
    example = [np.arange(1, 4 + row) for row in range(4)]
    items, positions = (torch.from_numpy(a) for a in pad_left(example, model.max_len))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=model.max_len)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ScoreLast(model), (), str(path), kwargs={"items": items, "positions": positions},
            input_names=["items", "positions"], output_names=["scores"],
            dynamic_shapes={"items": {0: batch, 1: seq}, "positions": {0: batch, 1: seq}},
            dynamo=True, external_data=False, opset_version=OPSET, verbose=False,
        )
    _strip_node_metadata(path)
    return path


def _strip_node_metadata(path: Path) -> None:
    """Drop what the exporter records per node (stack traces, module names): two thirds of a
    small model's file (a 32-wide demo model: 335 KB, of which 110 KB are weights)."""
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(proto, str(path))


def onnx_fp32(model: torch.nn.Module, work_dir: Path) -> OnnxVariant:
    path = export_onnx(model, Path(work_dir) / "model.onnx")
    return OnnxVariant("onnx", path, dict(model.config), {"opset": OPSET, "weights": "fp32"})


def onnx_int8(fp32: OnnxVariant, work_dir: Path) -> OnnxVariant:
    """ONNX Runtime dynamic int8 quantization of an exported model."""
    path = Path(work_dir) / "model-int8.onnx"
    quantize_dynamic(str(fp32.onnx_path), str(path), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm", "Gather"], per_channel=False)
    return OnnxVariant("onnx_int8", path, fp32.model_config,
                       {"opset": OPSET, "weights": "int8 (onnxruntime quantize_dynamic)", "ops": ["MatMul", "Gemm", "Gather"]},
                       table_codec="int8_row")
