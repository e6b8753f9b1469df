"""Dynamic int8 quantization of the Transformer's linear layers (torch.ao quantize_dynamic).

On disk the linear weights are int8 per output row; at load the ``dynamic_int8`` run-time
(``training.artifact.runtime.quantize_linears``) re-quantizes them dynamically (int8
weights, activations quantized per batch at run time).
"""

from __future__ import annotations

import torch
from torch import nn

from training.compression.variant import TorchVariant


def is_encoder_linear_weight(name: str, tensor: torch.Tensor) -> bool:
    return name.startswith("encoder.h.") and name.endswith(".weight") and tensor.dim() == 2


def dynamic_int8(folded: nn.Module) -> TorchVariant:
    """Variant: folded model, Transformer linear weights int8 on disk and in the run-time kernels."""
    return TorchVariant(
        method="dynamic_int8",
        model=folded,
        codecs=lambda name, t: "int8_row" if is_encoder_linear_weight(name, t) else "fp32",
        runtime="dynamic_int8",
        parameters={"layers": "encoder Conv1D -> Linear", "dtype": "qint8", "table": "fp32"},
    )
