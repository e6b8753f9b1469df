"""Compressed weight storage: a state dict written as fp32, fp16 or int8-per-row tensors.

One safetensors file holds every tensor in its stored form; its header metadata
records each tensor's codec, so ``read_weights`` needs nothing but the file.
int8-per-row is symmetric: ``row = int8 * scale`` with ``scale = max|row| / 127``,
which keeps each item's embedding on its own scale (rows differ by orders of
magnitude between popular and rare items).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

Codec = Literal["fp32", "fp16", "int8_row"]
CODECS: tuple[str, ...] = ("fp32", "fp16", "int8_row")
SCALE_SUFFIX = ".__scale__"


class CodecError(ValueError):
    """A weights file that is not a readable compressed state dict."""


def quantize_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row (dim 0): returns (int8 values, fp32 scales of shape [rows, 1])."""
    flat = tensor.detach().float().reshape(tensor.shape[0], -1)
    scale = flat.abs().amax(dim=1, keepdim=True) / 127.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    values = torch.clamp(torch.round(flat / scale), -127, 127).to(torch.int8)
    return values.reshape(tensor.shape), scale


def dequantize_rows(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (values.float().reshape(values.shape[0], -1) * scale).reshape(values.shape)


def write_weights(path: Path, state: dict[str, torch.Tensor], choose: Callable[[str, torch.Tensor], Codec]) -> dict[str, str]:
    """Write ``state`` with the codec ``choose(name, tensor)`` picks per tensor; returns that plan."""
    stored: dict[str, torch.Tensor] = {}
    plan: dict[str, str] = {}
    for name, tensor in state.items():
        codec = choose(name, tensor) if tensor.is_floating_point() and tensor.dim() >= 1 else "fp32"
        if codec not in CODECS:
            raise CodecError(f"unknown codec {codec!r} for {name}; known: {', '.join(CODECS)}")
        plan[name] = codec
        if not tensor.is_floating_point():
            stored[name] = tensor.detach().contiguous()
        elif codec == "fp16":
            stored[name] = tensor.detach().half().contiguous()
        elif codec == "int8_row":
            values, scale = quantize_rows(tensor)
            stored[name] = values.contiguous()
            stored[name + SCALE_SUFFIX] = scale.contiguous()
        else:
            stored[name] = tensor.detach().float().contiguous()
    save_file(stored, str(path), metadata={"codec": json.dumps(plan)})
    return plan


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a file written by ``write_weights`` (or a plain safetensors file) back to fp32."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            plan = json.loads((handle.metadata() or {}).get("codec", "{}"))
            raw = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise CodecError(f"unreadable weights file {path}: {error}") from error
    state: dict[str, torch.Tensor] = {}
    for name, tensor in raw.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        codec = plan.get(name, "fp32")
        if codec == "int8_row":
            scale_name = name + SCALE_SUFFIX
            if scale_name not in raw:
                raise CodecError(f"{path}: int8 tensor {name} has no scale")
            state[name] = dequantize_rows(tensor, raw[scale_name])
        elif tensor.is_floating_point():
            state[name] = tensor.float()
        else:
            state[name] = tensor
    return state
