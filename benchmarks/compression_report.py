"""The compression report on Amazon Beauty: every variant vs FP32 in one run.

    python benchmarks/compression_report.py --version V     # a registered model version
    python benchmarks/compression_report.py                 # trains an FP32 SASRec first

Prints the report's table and the gate's decision; the files (JSON, Markdown, PNG)
land under $SHOPREC_HOME/reports/compression/<version>/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train_parent(epochs: int, settings, use_text: bool = True):
    """A fresh FP32 SASRec on Beauty (full profile) held in memory, plus a folder with its weights and items."""
    import torch

    from shoprec.text_embedding import embed_items
    from training.data import ItemVocab, load_events
    from training.models import build_model, load_hyperparameters

    events, items = load_events("beauty", settings)
    vocab = ItemVocab.from_events(events, items)
    hp = load_hyperparameters("sasrec", "full")
    if not use_text:
        model = build_model({**hp, "n_vocab": len(vocab), "text_dim": 0})
        return _fit_and_save(model, vocab, events, hp, epochs)
    matrix, _ = embed_items(items, settings.cache_dir / "text_embeddings.parquet", progress=True)
    table = torch.zeros(len(vocab), matrix.shape[1])
    for item_id, vector in zip(items["item_id"].astype(str), matrix):
        table[vocab.index[item_id]] = torch.from_numpy(vector)
    model = build_model({**hp, "n_vocab": len(vocab), "text_dim": table.shape[1]}, table)
    return _fit_and_save(model, vocab, events, hp, epochs)


def _fit_and_save(model, vocab, events, hp: dict, epochs: int):
    from safetensors.torch import save_file

    from training.compression.pipeline import split_for
    from training.compression.variant import ServedModel
    from training.trainer import fit

    parent = ServedModel(f"beauty-bench-e{epochs}", vocab.item_ids, {"data_source": "beauty"}, model, model.max_len)
    split = split_for(parent, events)
    fit(model, split, hp, epochs=epochs)
    model.eval()
    folder = Path(tempfile.mkdtemp(prefix="fp32-"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "items.json").write_text(json.dumps(vocab.item_ids))
    return parent, folder, split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="registered model version to compress")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs when no --version is given")
    parser.add_argument("--distill-epochs", type=int, default=5)
    parser.add_argument("--no-text", action="store_true", help="train an ID-only SASRec (skips MiniLM item embeddings)")
    args = parser.parse_args()

    from shoprec.config import load_settings
    from training.compression.pipeline import CompressionOptions, compress, compress_recommender
    from training.trainer import tune_cpu_runtime

    settings = load_settings()
    tune_cpu_runtime(settings.training.num_threads)
    options = CompressionOptions(distill_epochs=args.distill_epochs)
    if args.version:
        result = compress(args.version, settings, options)
    else:
        parent, folder, split = train_parent(args.epochs, settings, use_text=not args.no_text)
        result = compress_recommender(parent, folder, split, settings, options, "beauty, leave-one-out test split")
    print(Path(result["report"]["markdown"]).read_text())
    print(json.dumps(result["report"], indent=2))


if __name__ == "__main__":
    main()
