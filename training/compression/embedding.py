"""Compressed item-embedding table: the (n_items x hidden) table is nearly all of the model.

int8 per row (each item its own scale) or fp16 on disk; dequantized to fp32 at load,
so the run-time kernels are unchanged and the saving is size.
"""

from __future__ import annotations

from torch import nn

from training.compression.variant import TorchVariant

TABLE = "items.ids.weight"


def compressed_table(folded: nn.Module, codec: str = "int8_row") -> TorchVariant:
    if codec not in ("int8_row", "fp16"):
        raise ValueError(f"table codec must be int8_row or fp16, not {codec!r}")
    return TorchVariant(
        method="embedding_" + ("int8" if codec == "int8_row" else "fp16"),
        model=folded,
        codecs=lambda name, t: codec if name == TABLE else "fp32",
        parameters={"table": TABLE, "codec": codec},
    )
