"""``shoprec compress``: every variant of a trained model, measured against the folded FP32
model in one run, gated, reported.

Each variant is saved as a model version, then loaded back from that version alone by
``training.artifact.load_recommender`` (the loader serving uses) and measured through
the same ``Recommender`` code path as the trained model and its folded form, on the same
test split and the same latency batches. The options are ``settings.compression``.
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from shoprec.config import CompressionSettings, Settings
from training.artifact import ArtifactError, Recommender, load_recommender, verified_manifest
from training.artifact.manifest import TRAINED
from training.compression.benchmark import Measurement, measure_latency, size_on_disk
from training.compression.distillation import distill
from training.compression.embedding import compressed_table
from training.compression.folding import fold_text_tower
from training.compression.gate import GateDecision, choose_served
from training.compression.onnx_export import onnx_fp32, onnx_int8
from training.compression.pruning import magnitude_pruning
from training.compression.quantization import dynamic_int8
from training.compression.report import ReportContext, write_report
from training.compression.variant import OnnxVariant, TorchVariant, save_variant, variant_version
from training.data import ItemVocab, SplitData, item_counts, leave_one_out, load_events, user_sequences
from training.evaluate import evaluate_scorer
from training.registry import list_versions, production_version, trained_root
from training.trainer import tune_cpu_runtime

TRAINED_ROW = "fp32"  # the trained model as training saved it (for reference)
BASELINE = "folded"  # what every variant is measured against, and what serves when none passes


@dataclass
class CompressionResult:
    parent_version: str  # the trained model
    baseline_version: str  # its folded form
    served_version: str  # the gate's pick, else the folded model: never the trained model itself
    gate: GateDecision
    variants: list[Measurement]  # the trained model, the folded model, then every variant
    report: dict[str, str] = field(default_factory=dict)  # json / markdown / plot: their paths
    context: ReportContext | None = None

    def measurement(self, version: str) -> Measurement:
        return next(row for row in self.variants if row.version == version)

    def to_dict(self) -> dict:
        return {"parent_version": self.parent_version, "baseline_version": self.baseline_version,
                "served_version": self.served_version, "gate": self.gate.to_dict(),
                "variants": [row.to_dict() for row in self.variants], "report": dict(self.report),
                "context": self.context.to_dict() if self.context else None}


@dataclass(frozen=True)
class Maker:
    method: str
    requested: dict  # the options that shape this variant (checked against an existing version of it)
    make: Callable[[], TorchVariant | OnnxVariant]


def split_for(parent: Recommender, events) -> SplitData:
    """The leave-one-out split of ``events`` in the parent's vocabulary (so indices match its table)."""
    return leave_one_out(user_sequences(events), ItemVocab(list(parent.item_ids)))


def makers(folded: torch.nn.Module, split: SplitData, options: CompressionSettings, work_dir: Path,
           trains: bool = True) -> list[Maker]:
    """Every variant of ``folded``, in report order; the folded model itself first. ``trains``
    False leaves out the two that train (pruning's fine-tune, distillation): both score the whole
    catalog at every position, a (positions x catalog) matrix the sampled-softmax training of a
    large catalog exists to avoid (6,400 x 100,000 floats per step, 2.6 GB)."""
    exported = functools.cache(lambda: onnx_fp32(folded, work_dir))  # onnx_int8 quantizes the same export
    prune = {"amount": options.prune_amount, "finetune_epochs": options.prune_epochs,
             "max_positions": options.finetune_max_positions}
    student = {"hidden": options.distill_hidden, "layers": options.distill_layers, "epochs": options.distill_epochs,
               "max_positions": options.finetune_max_positions}
    return [
        Maker(BASELINE, {}, lambda: TorchVariant(BASELINE, folded, lambda n, t: "fp32",
                                                 {"text_tower": "folded into the item table"})),
        Maker("dynamic_int8", {}, lambda: dynamic_int8(folded)),
        Maker("embedding_fp16", {}, lambda: compressed_table(folded, "fp16")),
        Maker("embedding_int8", {}, lambda: compressed_table(folded, "int8_row")),
        *([Maker("pruned", prune, lambda: magnitude_pruning(folded, split, options.prune_amount, options.prune_epochs,
                                                            max_positions=options.finetune_max_positions)),
           Maker("distilled", student, lambda: distill(folded, split, hidden=options.distill_hidden,
                                                       layers=options.distill_layers, heads=1,
                                                       epochs=options.distill_epochs,
                                                       max_positions=options.finetune_max_positions))] if trains else []),
        Maker("onnx", {}, exported),
        Maker("onnx_int8", {}, lambda: onnx_int8(exported(), work_dir)),
    ]


def build_variants(parent: Recommender, split: SplitData, settings: Settings) -> list[str]:
    """Make and save every variant of ``parent`` (a loaded trained version); returns their versions.
    A variant saved before with the same options is kept (versions never change once written)."""
    folded = fold_text_tower(parent.torch_model)
    trains = parent.metadata.get("loss", {}).get("loss", "full") == "full"  # see makers
    versions = []
    with tempfile.TemporaryDirectory() as work:
        for maker in tqdm(makers(folded, split, settings.compression, Path(work), trains), desc="variants"):
            version = variant_version(parent.version, maker.method)
            if (settings.models_dir / version).exists():
                _check_existing(settings.models_dir / version, maker)
            else:
                save_variant(maker.make(), parent, settings.models_dir)
            versions.append(version)
    return versions


def _check_existing(root: Path, maker: Maker) -> None:
    parameters = verified_manifest(root)["lineage"]["parameters"]
    differing = {key: (parameters.get(key), value) for key, value in maker.requested.items() if parameters.get(key) != value}
    if differing:
        raise ArtifactError(f"{root.name} exists, made with other options (saved, requested): {differing}; "
                            "versions never change: remove it or compress with the options it was made with")


def string_histories(split: SplitData, item_ids: list[str]) -> list[list[str]]:
    ids = np.array(["<pad>"] + list(item_ids), dtype=object)
    return [list(ids[h]) for h in split.test.inputs]


def measure(served: dict[str, Recommender], split: SplitData, options: CompressionSettings) -> list[Measurement]:
    """Accuracy on the test split, size on disk, then latency round-robin, for every model;
    each compared with the ``folded`` one."""
    first = next(iter(served.values()))
    counts = item_counts(split.train, len(first.item_ids) + 1)
    rows = []
    for name, model in tqdm(served.items(), desc="evaluate"):
        metrics = evaluate_scorer(model.score_indices, split.test, counts, options.eval_batch_size)
        lineage = model.metadata.get("lineage", {})
        rows.append(Measurement(name, model.version, lineage.get("method", TRAINED_ROW), lineage.get("parameters", {}),
                                size_on_disk(model.path), metrics["NDCG@10"], metrics["HR@10"]))
    histories = string_histories(split, first.item_ids)
    for batch, rounds in ((1, options.rounds_b1), (32, options.rounds_b32)):
        latency = measure_latency(served, histories, batch, rounds)
        for row in rows:
            row.record_latency(batch, latency[row.name])
    baseline = next(row for row in rows if row.name == BASELINE)
    return [row.compared_with(baseline) for row in rows]


def compress_recommender(parent: Recommender, split: SplitData, settings: Settings, data_label: str) -> CompressionResult:
    """The whole run for a loaded trained version: variants, measurements, gate, report files."""
    if parent.metadata.get("kind") != TRAINED:
        raise ValueError(f"{parent.version} is a compressed variant; compress the trained version it came from")
    started = time.perf_counter()
    hp = settings.hyperparameters
    split = split.with_eval_scores(hp.eval_max_scores, len(parent.item_ids), hp.seed)  # as training evaluates
    versions = build_variants(parent, split, settings)
    served = {TRAINED_ROW: parent}
    for version in versions:
        model = load_recommender(settings.models_dir / version, settings)
        served[model.metadata["lineage"]["method"]] = model
    rows = measure(served, split, settings.compression)
    baseline = next(row for row in rows if row.name == BASELINE)
    decision = choose_served(baseline, [row for row in rows if row.name not in (TRAINED_ROW, BASELINE)],
                             settings.compression)
    served_version = next(row.version for row in rows if row.name == decision.served)
    context = ReportContext(
        parent_version=parent.version, baseline_version=baseline.version, served_version=served_version,
        data=data_label, test_users=len(split.test), cpu=_cpu(), rounds_b1=settings.compression.rounds_b1,
        rounds_b32=settings.compression.rounds_b32, seconds=round(time.perf_counter() - started, 1))
    paths = write_report(rows, decision, baseline, context, Path(settings.reports_dir) / "compression" / parent.version)
    return CompressionResult(parent.version, baseline.version, served_version, decision, rows, paths, context)


def _cpu() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def default_parent(settings: Settings) -> str:
    """The trained version behind production, else the newest trained version."""
    production = production_version(settings)
    if production:
        return trained_root(production, settings)
    trained = [v.version for v in list_versions(settings) if v.kind == TRAINED]
    if not trained:
        raise ValueError(f"no trained model in {settings.models_dir}; run `shoprec train` first")
    return trained[-1]


def compress(version: str | None, settings: Settings) -> CompressionResult:
    """Compress a trained version (default: the one behind production, else the newest) and report,
    on the leave-one-out split of the data it was trained on."""
    tune_cpu_runtime(settings.training.num_threads)  # latencies are measured with the threads serving would use
    parent = load_recommender(version or default_parent(settings), settings)
    source = parent.metadata.get("data_source", "beauty")
    events, _ = load_events(source, settings)
    return compress_recommender(parent, split_for(parent, events), settings, f"{source}, leave-one-out test split")
