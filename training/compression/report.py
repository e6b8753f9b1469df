"""The compression report: one table of every variant against the folded FP32 model, as JSON,
Markdown and a PNG plot. The trained model's row is there for reference: it recomputes its
text tower on every call, so a speed-up against it would mostly be the folding's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from matplotlib.figure import Figure

from training.compression.benchmark import Measurement
from training.compression.gate import GateDecision

COLUMNS = [
    ("name", "variant", "{}"),
    ("method", "method", "{}"),
    ("size_bytes", "size (MB)", None),
    ("size_ratio", "smaller", "{:.2f}x"),
    ("latency_b1_p50_ms", "b1 p50 ms", "{:.2f}"),
    ("latency_b1_p99_ms", "b1 p99 ms", "{:.2f}"),
    ("speedup_b1", "b1 speedup", "{:.2f}x"),
    ("latency_b32_p50_ms", "b32 p50 ms", "{:.2f}"),
    ("latency_b32_p99_ms", "b32 p99 ms", "{:.2f}"),
    ("throughput_b32_per_s", "b32 users/s", "{:.0f}"),
    ("ndcg_at_10", "NDCG@10", "{:.4f}"),
    ("hr_at_10", "HR@10", "{:.4f}"),
    ("ndcg_change", "NDCG change", "{:+.1%}"),
]


@dataclass
class ReportContext:
    parent_version: str  # the trained model
    baseline_version: str  # its folded form: what every variant is measured against
    served_version: str
    data: str
    test_users: int
    cpu: str
    rounds_b1: int
    rounds_b32: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _cell(row: Measurement, key: str, fmt: str | None) -> str:
    value = getattr(row, key)
    return f"{value / 1e6:.2f}" if key == "size_bytes" else fmt.format(value)


def markdown(rows: list[Measurement], decision: GateDecision, context: ReportContext) -> str:
    t = decision.thresholds
    lines = [
        f"# Compression report: {context.parent_version}",
        "",
        f"Data: {context.data}. CPU: {context.cpu}. Latency: `score()` of one batch "
        f"(histories -> full-catalog scores), {context.rounds_b1} rounds at batch 1 and "
        f"{context.rounds_b32} at batch 32, all models round-robin on the same batches.",
        "",
        f"Baseline: `folded` (`{context.baseline_version}`), the trained model with its text tower folded into "
        "the item table (same scores); every ratio below is against it. The `fp32` row is the trained model as "
        "training saved it, which recomputes the text tower on every call.",
        "",
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(row, key, fmt) for key, _, fmt in COLUMNS) + " |" for row in rows]
    lines += ["", "## Gate", "", f"Thresholds (settings.compression): NDCG@10 within {t['max_ndcg_drop']:.0%} of "
              f"the folded model, >= {t['min_size_ratio']:g}x smaller on disk, >= {t['min_speedup']:g}x faster at "
              "batch 1 (p50).", "",
              f"**Served: {decision.served}** (`{context.served_version}`) - {decision.why}", ""]
    for verdict in decision.verdicts:
        lines.append(f"- {verdict.name}: {'PASS' if verdict.passed else 'reject'} - " + "; ".join(verdict.reasons))
    lines += ["", "## Models", ""]
    for row in rows:
        lines.append(f"- {row.name}: {row.method} {json.dumps(row.parameters)}, version `{row.version}`")
    return "\n".join(lines) + "\n"


def plot(rows: list[Measurement], decision: GateDecision, baseline: Measurement, path: Path) -> None:
    """Size and batch-1 latency against NDCG@10, with the gate's limits: the trade-off at a glance."""
    fig = Figure(figsize=(12, 5))
    axes = fig.subplots(1, 2)
    for row in rows:
        colour = "tab:green" if row.name == decision.served else ("black" if row is baseline else "tab:blue")
        for ax, x in ((axes[0], row.size_bytes * 1e-6), (axes[1], row.latency_b1_p50_ms)):
            ax.scatter(x, row.ndcg_at_10, color=colour, s=40)
            ax.annotate(row.name, (x, row.ndcg_at_10), fontsize=8, xytext=(4, 4), textcoords="offset points")
    t = decision.thresholds
    for ax in axes:
        ax.axhline(baseline.ndcg_at_10 * (1 - t["max_ndcg_drop"]), ls="--", color="grey", lw=0.8)
        ax.set_ylabel("NDCG@10 (test split)")
    axes[0].axvline(baseline.size_bytes * 1e-6 / t["min_size_ratio"], ls="--", color="grey", lw=0.8)
    axes[1].axvline(baseline.latency_b1_p50_ms / t["min_speedup"], ls="--", color="grey", lw=0.8)
    axes[0].set_xlabel("size on disk (MB)")
    axes[1].set_xlabel("batch-1 latency p50 (ms, CPU)")
    fig.suptitle(f"Compression trade-off vs the folded model (black; green: served, dashed: gate limits); "
                 f"served: {decision.served}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(rows: list[Measurement], decision: GateDecision, baseline: Measurement, context: ReportContext,
                 out_dir: Path) -> dict[str, str]:
    """Write compression.json / compression.md / compression.png under ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "compression.json", "markdown": out_dir / "compression.md", "plot": out_dir / "compression.png"}
    payload = {"context": context.to_dict(), "variants": [row.to_dict() for row in rows], "gate": decision.to_dict()}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    paths["markdown"].write_text(markdown(rows, decision, context))
    plot(rows, decision, baseline, paths["plot"])
    return {name: str(path) for name, path in paths.items()}
