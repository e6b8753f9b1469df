"""The compression report: one table of every variant against FP32, as JSON, Markdown and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

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
    ("ndcg@10", "NDCG@10", "{:.4f}"),
    ("hr@10", "HR@10", "{:.4f}"),
    ("ndcg_change", "NDCG change", "{:+.1%}"),
]


def add_relative_columns(rows: list[dict]) -> list[dict]:
    """size_ratio, speedup_b1 and ndcg_change of every row against the first (FP32) row."""
    base = rows[0]
    for row in rows:
        row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
        row["speedup_b1"] = base["latency_b1_p50_ms"] / row["latency_b1_p50_ms"]
        row["ndcg_change"] = row["ndcg@10"] / base["ndcg@10"] - 1.0 if base["ndcg@10"] else 0.0
    return rows


def markdown(rows: list[dict], decision: GateDecision, context: dict) -> str:
    def cell(row, key, fmt):
        if key == "size_bytes":
            return f"{row[key] / 1e6:.2f}"
        return fmt.format(row[key])

    lines = [
        f"# Compression report: {context['parent_version']}",
        "",
        f"Data: {context['data']}. CPU: {context['cpu']}. Latency: `score()` of one batch "
        f"(histories -> full-catalog scores), {context['rounds_b1']} rounds at batch 1 and "
        f"{context['rounds_b32']} at batch 32, all variants round-robin on the same batches.",
        "",
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cell(row, key, fmt) for key, _, fmt in COLUMNS) + " |" for row in rows]
    lines += ["", "## Gate", "", f"Thresholds: NDCG@10 within {decision.thresholds.max_ndcg_drop:.0%} of FP32, "
              f">= {decision.thresholds.min_size_ratio:g}x smaller on disk, >= {decision.thresholds.min_speedup:g}x "
              "faster at batch 1 (p50).", "", f"**Picked: {decision.picked or 'none (FP32 stays)'}** - {decision.why}", ""]
    for verdict in decision.verdicts:
        lines.append(f"- {verdict.name}: {'PASS' if verdict.passed else 'reject'} - " + "; ".join(verdict.reasons))
    lines += ["", "## Variants", ""]
    for row in rows[1:]:
        lines.append(f"- {row['name']}: {row['method']} {json.dumps(row['parameters'])}, version `{row['version']}`")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], decision: GateDecision, path: Path) -> None:
    """Size vs NDCG@10, with batch-1 latency as the marker size: the trade-off at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for row in rows:
        colour = "tab:green" if row["name"] == decision.picked else ("black" if row is rows[0] else "tab:blue")
        for ax, x_key, x_scale in ((axes[0], "size_bytes", 1e-6), (axes[1], "latency_b1_p50_ms", 1.0)):
            ax.scatter(row[x_key] * x_scale, row["ndcg@10"], color=colour, s=40)
            ax.annotate(row["name"], (row[x_key] * x_scale, row["ndcg@10"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    base = rows[0]
    for ax in axes:
        ax.axhline(base["ndcg@10"] * (1 - decision.thresholds.max_ndcg_drop), ls="--", color="grey", lw=0.8)
        ax.set_ylabel("NDCG@10 (Beauty test)")
    axes[0].axvline(base["size_bytes"] * 1e-6 / decision.thresholds.min_size_ratio, ls="--", color="grey", lw=0.8)
    axes[1].axvline(base["latency_b1_p50_ms"] / decision.thresholds.min_speedup, ls="--", color="grey", lw=0.8)
    axes[0].set_xlabel("size on disk (MB)")
    axes[1].set_xlabel("batch-1 latency p50 (ms, CPU)")
    fig.suptitle(f"Compression trade-off (green: served, dashed: gate limits); picked: {decision.picked}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], decision: GateDecision, context: dict, out_dir: Path) -> dict[str, Path]:
    """Write compression.json / compression.md / compression.png under ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "compression.json", "markdown": out_dir / "compression.md", "plot": out_dir / "compression.png"}
    payload = {"context": context, "variants": rows, "gate": decision.to_dict()}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    paths["markdown"].write_text(markdown(rows, decision, context))
    plot(rows, decision, paths["plot"])
    return paths
