"""Knowledge distillation into a smaller student (fewer layers, smaller hidden size).

The student is an ID-only SASRec trained on the teacher's full-catalog scores at every
position: KL(teacher || student) at temperature T (times T^2), mixed with the usual
next-item cross-entropy. Its item table starts from the teacher's (folded) table
projected onto its top principal directions, so it does not learn the catalog from zero.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from training.compression.finetune import train_steps
from training.compression.variant import TorchVariant
from training.data import PAD, SplitData
from training.models import build_model


def student_config(teacher_config: dict, hidden: int, layers: int, heads: int) -> dict:
    if hidden % heads:
        raise ValueError(f"student hidden {hidden} is not divisible by heads {heads}")
    return {**teacher_config, "text_dim": 0, "hidden": hidden, "layers": layers, "heads": heads, "inner": hidden * 4}


def projected_table(teacher_table: torch.Tensor, hidden: int) -> torch.Tensor:
    """Teacher table (n, H) -> (n, hidden) on its top ``hidden`` principal directions."""
    centred = teacher_table - teacher_table[1:].mean(dim=0)
    _, _, basis = torch.linalg.svd(centred[1:], full_matrices=False)
    table = centred @ basis[:hidden].T
    table[PAD] = 0
    return table


def distill(teacher: torch.nn.Module, split: SplitData, *, hidden: int = 32, layers: int = 1, heads: int = 1,
            epochs: int = 5, lr: float = 1e-3, temperature: float = 2.0, alpha: float = 0.7,
            max_positions: int = 0) -> TorchVariant:
    """Variant: a student trained on ``teacher``'s scores (``alpha`` weight on the soft loss)."""
    teacher.eval()
    torch.manual_seed(0)
    student = build_model(student_config(teacher.config, hidden, layers, heads))
    with torch.no_grad():
        student.items.ids.weight.copy_(projected_table(teacher.items.table(), hidden))

    def loss(items: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        keep = targets != PAD
        with torch.no_grad():
            soft = teacher.logits(teacher.encode(items, positions)[keep], teacher.items.table())
            soft = F.log_softmax(soft[:, 1:] / temperature, dim=-1)
        table = student.items.table()
        logits = student.logits(student.encode(items, positions, table)[keep], table)
        kd = F.kl_div(F.log_softmax(logits[:, 1:] / temperature, dim=-1), soft, log_target=True, reduction="batchmean")
        return alpha * kd * temperature**2 + (1 - alpha) * F.cross_entropy(logits, targets[keep])

    losses = train_steps(student, split, loss, epochs=epochs, lr=lr, desc="distill", max_positions=max_positions)
    return TorchVariant(
        method="distilled",
        model=student.eval(),
        codecs=lambda name, t: "fp32",
        parameters={"hidden": hidden, "layers": layers, "heads": heads, "epochs": epochs,
                    "max_positions": max_positions, "lr": lr,
                    "temperature": temperature, "alpha": alpha, "loss": [round(x, 4) for x in losses],
                    "parameters": sum(p.numel() for p in student.parameters())},
    )
