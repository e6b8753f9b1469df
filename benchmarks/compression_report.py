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

from shoprec.config import load_settings  # noqa: E402  (after the repo is on the path)
from training.compression.pipeline import compress  # noqa: E402
from training.pipeline import train_version  # noqa: E402

BENCHMARK_ROUNDS = {"rounds_b1": 200, "rounds_b32": 50}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="registered trained model version to compress")
    parser.add_argument("--epochs", type=int, default=20, help="most training epochs when no --version is given")
    parser.add_argument("--distill-epochs", type=int, default=5)
    parser.add_argument("--no-text", action="store_true", help="train an ID-only SASRec (skips MiniLM item embeddings)")
    args = parser.parse_args()

    settings = load_settings()
    overrides = {**settings.training.overrides, "max_epochs": args.epochs, "use_text": not args.no_text}
    settings = settings.with_overrides(training={"preset": "full", "overrides": overrides},
                                       compression={**BENCHMARK_ROUNDS, "distill_epochs": args.distill_epochs})
    # a fresh FP32 SASRec on Beauty (full preset), saved as a version with its training metadata
    version = args.version or train_version(settings, data="beauty", protocol="loo")[0]
    result = compress(version, settings)  # the leave-one-out split of the data the version was trained on
    print(Path(result.report["markdown"]).read_text())
    print(json.dumps(result.report, indent=2))


if __name__ == "__main__":
    main()
