"""``shoprec compress``: every variant of a trained model, measured against FP32 in one run, gated, reported.

Each variant is saved as an artifact, then loaded back from that artifact alone and
measured through the same ``ServedModel`` code path as the FP32 parent, on the same
test split and the same latency batches.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from training.compression.benchmark import measure_latency, size_on_disk
from training.compression.distillation import distill
from training.compression.embedding import compressed_table
from training.compression.folding import fold_text_tower
from training.compression.gate import GateThresholds, choose_served
from training.compression.onnx_export import onnx_fp32, onnx_int8
from training.compression.pruning import magnitude_pruning
from training.compression.quantization import dynamic_int8
from training.compression.report import add_relative_columns, write_report
from training.compression.variant import ServedModel, TorchVariant, is_variant, load_served_model, save_variant
from training.data import ItemVocab, SplitData, item_counts, leave_one_out, load_events, user_sequences
from training.evaluate import evaluate_scorer


@dataclass
class CompressionOptions:
    prune_amount: float = 0.5
    prune_epochs: int = 1
    distill_hidden: int = 32
    distill_layers: int = 1
    distill_epochs: int = 5
    rounds_b1: int = 200
    rounds_b32: int = 50
    eval_batch_size: int = 512
    thresholds: GateThresholds = GateThresholds()


def split_for(parent, events) -> SplitData:
    """The leave-one-out split of ``events`` in the parent's vocabulary (so indices match its table)."""
    return leave_one_out(user_sequences(events), ItemVocab(list(parent.item_ids)))


def build_variants(parent, split: SplitData, models_dir: Path, options: CompressionOptions) -> list[str]:
    """Make, save and return the versions of every variant of ``parent`` (a loaded Recommender)."""
    folded = fold_text_tower(parent.torch_model)
    makers = [
        ("folded", lambda: TorchVariant("folded", folded, lambda n, t: "fp32", {"text_tower": "folded into the item table"})),
        ("dynamic_int8", lambda: dynamic_int8(folded)),
        ("embedding_fp16", lambda: compressed_table(folded, "fp16")),
        ("embedding_int8", lambda: compressed_table(folded, "int8_row")),
        ("pruned", lambda: magnitude_pruning(folded, split, options.prune_amount, options.prune_epochs)),
        ("distilled", lambda: distill(folded, split, hidden=options.distill_hidden, layers=options.distill_layers,
                                      heads=1, epochs=options.distill_epochs)),
    ]
    versions = []
    for name, make in tqdm(makers, desc="variants"):
        versions.append(save_variant(make(), parent, models_dir))
    with tempfile.TemporaryDirectory() as work:
        exported = onnx_fp32(folded, Path(work))
        versions.append(save_variant(exported, parent, models_dir))
        versions.append(save_variant(onnx_int8(exported, Path(work)), parent, models_dir))
    return versions


def string_histories(split: SplitData, item_ids: list[str]) -> list[list[str]]:
    ids = np.array(["<pad>"] + list(item_ids), dtype=object)
    return [list(ids[h]) for h in split.test.inputs]


def measure(served: dict[str, ServedModel], sizes: dict[str, int], split: SplitData, options: CompressionOptions) -> list[dict]:
    """Accuracy on the test split, then latency round-robin, for every served model."""
    counts = item_counts(split.train, len(next(iter(served.values())).item_ids) + 1)
    rows = []
    for name, model in tqdm(served.items(), desc="evaluate"):
        metrics = evaluate_scorer(model.score_indices, split.test, counts, options.eval_batch_size)
        lineage = model.metadata.get("lineage", {})
        rows.append({"name": name, "version": model.version, "method": lineage.get("method", "fp32"),
                     "parameters": lineage.get("parameters", {}), "size_bytes": sizes[name],
                     "ndcg@10": metrics["NDCG@10"], "hr@10": metrics["HR@10"]})
    histories = string_histories(split, next(iter(served.values())).item_ids)
    for batch, rounds in ((1, options.rounds_b1), (32, options.rounds_b32)):
        latency = measure_latency(served, histories, batch, rounds)
        for row in rows:
            row[f"latency_b{batch}_p50_ms"] = latency[row["name"]]["p50_ms"]
            row[f"latency_b{batch}_p99_ms"] = latency[row["name"]]["p99_ms"]
            row[f"throughput_b{batch}_per_s"] = latency[row["name"]]["throughput_per_s"]
    return add_relative_columns(rows)


def compress_recommender(parent, parent_dir: Path, split: SplitData, settings, options: CompressionOptions,
                         data_label: str) -> dict:
    """The whole run for a loaded parent: variants, measurements, gate, report files."""
    started = time.perf_counter()
    versions = build_variants(parent, split, settings.models_dir, options)
    served = {"fp32": ServedModel(parent.version, list(parent.item_ids), dict(parent.metadata),
                                  parent.torch_model.eval(), parent.torch_model.max_len)}
    sizes = {"fp32": size_on_disk(parent_dir)}
    for version in versions:
        model = load_served_model(settings.models_dir / version, settings)
        name = model.metadata["lineage"]["method"]
        served[name], sizes[name] = model, size_on_disk(settings.models_dir / version)
    rows = measure(served, sizes, split, options)
    decision = choose_served(rows[0], rows[1:], options.thresholds)
    context = {
        "parent_version": parent.version, "data": data_label, "test_users": len(split.test),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "rounds_b1": options.rounds_b1, "rounds_b32": options.rounds_b32, "seconds": None,
    }
    context["seconds"] = round(time.perf_counter() - started, 1)
    served_version = next((r["version"] for r in rows if r["name"] == decision.picked), None)
    paths = write_report(rows, decision, {**context, "served_version": served_version},
                         Path(settings.reports_dir) / "compression" / parent.version)
    return {"parent_version": parent.version, "served_version": served_version, "gate": decision.to_dict(),
            "variants": rows, "report": {k: str(v) for k, v in paths.items()}, "context": context}


def compress(version: str | None = None, settings=None, options: CompressionOptions | None = None) -> dict:
    """Compress a registered model version (default: production, else the newest) and report."""
    from shoprec.config import load_settings
    from training.artifact import load_recommender
    from training.registry import list_versions, production_version
    from training.trainer import tune_cpu_runtime

    settings = settings or load_settings()
    tune_cpu_runtime(settings.training.num_threads)
    if version is None:
        trained = [v["version"] for v in list_versions(settings) if not is_variant(settings.models_dir / v["version"])]
        version = production_version(settings) or (trained or [None])[-1]
        if version is None:
            raise ValueError(f"no trained model in {settings.models_dir}; run `shoprec train` first")
    parent = load_recommender(version, settings)
    source = parent.metadata.get("data_source", "beauty")
    events, _ = load_events(source, settings)
    return compress_recommender(parent, settings.models_dir / parent.version, split_for(parent, events), settings,
                                options or CompressionOptions(), f"{source}, leave-one-out test split")
