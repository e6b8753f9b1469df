"""The compression report on Amazon Beauty: every variant vs the folded FP32 model in one run.

    python benchmarks/compression_report.py --version V     # a registered trained model version
    python benchmarks/compression_report.py                 # trains an FP32 SASRec first (saved as a version)

Prints the report's table and the gate's decision; the files (JSON, Markdown, PNG)
land under $SHOPREC_HOME/reports/compression/<version>/. The options and the gate's
thresholds are ``settings.compression``; this benchmark asks for more latency rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from shoprec.config import Settings, load_settings  # noqa: E402
from shoprec.text_embedding import embed_items  # noqa: E402
from training.artifact import Recommender, load_recommender, save_artifact  # noqa: E402
from training.compression.pipeline import compress, compress_recommender  # noqa: E402
from training.data import ItemVocab, SplitData, leave_one_out, load_events, user_sequences  # noqa: E402
from training.models import new_model  # noqa: E402
from training.trainer import Trainer, tune_cpu_runtime  # noqa: E402

BENCHMARK_ROUNDS = {"rounds_b1": 200, "rounds_b32": 50}


def train_parent(epochs: int, settings: Settings, use_text: bool = True) -> tuple[Recommender, SplitData]:
    """A fresh FP32 SASRec on Beauty (full preset), saved as a version and loaded back, and its split."""
    events, items = load_events("beauty", settings)
    vocab = ItemVocab.from_events(events, items)
    hp = settings.with_overrides(training={"preset": "full", "overrides": {"use_text": use_text}}).hyperparameters
    text = None
    if use_text:
        matrix, _ = embed_items(items, settings.cache_dir / "text_embeddings.parquet", progress=True)
        text = torch.zeros(len(vocab), matrix.shape[1])
        for item_id, vector in zip(items["item_id"].astype(str), matrix):
            text[vocab.index[item_id]] = torch.from_numpy(vector)
    model = new_model(hp, len(vocab), text)
    split = leave_one_out(user_sequences(events), vocab)
    Trainer(model, split, hp).fit(epochs)
    metadata = {"protocol": "loo", "data_source": "beauty", "data_end": str(events["timestamp"].max()),
                "hyperparameters": hp.model_dump()}
    path = save_artifact(model.eval(), vocab.item_ids, settings.models_dir, metadata)
    return load_recommender(path, settings), split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="registered trained model version to compress")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs when no --version is given")
    parser.add_argument("--distill-epochs", type=int, default=5)
    parser.add_argument("--no-text", action="store_true", help="train an ID-only SASRec (skips MiniLM item embeddings)")
    args = parser.parse_args()

    settings = load_settings()
    settings = settings.with_overrides(compression={**BENCHMARK_ROUNDS, "distill_epochs": args.distill_epochs})
    tune_cpu_runtime(settings.training.num_threads)
    if args.version:
        result = compress(args.version, settings)
    else:
        parent, split = train_parent(args.epochs, settings, use_text=not args.no_text)
        result = compress_recommender(parent, split, settings, "beauty, leave-one-out test split")
    print(Path(result.report["markdown"]).read_text())
    print(json.dumps(result.report, indent=2))


if __name__ == "__main__":
    main()
