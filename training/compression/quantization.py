"""Dynamic int8 quantization of the Transformer's linear layers (torch.ao quantize_dynamic).

GPT-2 blocks use ``transformers``' Conv1D (x @ W + b, W stored in x out), which
quantize_dynamic does not know; ``linearize`` swaps each for the equal nn.Linear first.
On disk the linear weights are int8 per output row; at load they are re-quantized
dynamically (int8 weights, activations quantized per batch at run time).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from training.compression.variant import TorchVariant


def linearize(model: nn.Module) -> nn.Module:
    """Replace every Conv1D by the nn.Linear computing the same function (in place)."""
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
    """The run-time form: Conv1D -> Linear, then dynamic int8 on every Linear."""
    return torch.ao.quantization.quantize_dynamic(linearize(model).eval(), {nn.Linear}, dtype=torch.qint8)


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
