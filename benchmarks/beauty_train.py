"""Reproduce the Beauty benchmark: train SASRec (ID + MiniLM text) under the leave-one-out
full-ranking protocol, evaluate it with our baselines, and write the results table
(ours, baselines, published rows) as Markdown + JSON and two PNG plots.

    python benchmarks/beauty_train.py [--out DIR] [--preset full] [--no-text] [--set key=value ...]

The hyperparameters are the settings' (``training/models/sasrec.yaml``, the chosen preset,
then ``--set`` overrides, parsed as ``shoprec train`` parses them); an unknown key fails before
anything is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from entrypoints.commands.training import training_settings  # noqa: E402  (after the repo is on the path)
from shoprec.config import load_settings  # noqa: E402
from training.pipeline import train_version  # noqa: E402

PUBLISHED = [  # HR@10, NDCG@10 on this exact file, full ranking (amazon-beauty/README.md)
    ("popularity (S3-Rec paper)", 0.0152, 0.0068),
    ("BERT4Rec (S3-Rec paper)", 0.0347, 0.0170),
    ("SASRec (S3-Rec paper)", 0.0605, 0.0318),
    ("S3-Rec", 0.0647, 0.0327),
    ("ICLRec", 0.0744, 0.0403),
    ("DuoRec", 0.0845, 0.0443),
    ("SASRec + sampled softmax (eSASRec README)", 0.0921, 0.0531),
]
COLUMNS = ["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "coverage@10", "popularity_bias@10"]


def results_table(report: dict, name: str) -> list[dict]:
    rows = [{"model": f"ours: {name}", **{c: report["metrics"][c] for c in COLUMNS}}]
    rows += [{"model": f"ours: {b}", **{c: m[c] for c in COLUMNS}} for b, m in report["baselines"].items()]
    rows += [{"model": f"published: {n}", "HR@10": hr, "NDCG@10": ndcg} for n, hr, ndcg in PUBLISHED]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"{row[c]:.4f}" if c in row else "" for c in COLUMNS]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(report: dict, rows: list[dict], out: Path) -> None:
    # here, not at the top: the backend must be chosen before pyplot is imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = report["training"]["history"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch"), ax.set_ylabel("cross-entropy", color="tab:blue")
    ax2 = ax.twinx()
    evals = [h for h in history if "valid_NDCG@10" in h]
    ax2.plot([h["epoch"] for h in evals], [h["valid_NDCG@10"] for h in evals], color="tab:red", label="valid NDCG@10")
    ax2.axvline(report["training"]["best_epoch"], color="grey", linestyle=":")
    ax2.set_ylabel("validation NDCG@10", color="tab:red")
    ax.set_title("SASRec on Beauty: training curve")
    fig.tight_layout(), fig.savefig(out / "beauty_training_curve.png", dpi=120), plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = [r["model"] for r in rows]
    values = [r["NDCG@10"] for r in rows]
    colors = ["tab:red" if n.startswith("ours: sasrec") else "tab:orange" if n.startswith("ours") else "tab:grey" for n in names]
    ax.barh(names, values, color=colors)
    ax.invert_yaxis(), ax.set_xlabel("test NDCG@10 (full ranking)")
    ax.set_title("Amazon Beauty, leave-one-out")
    fig.tight_layout(), fig.savefig(out / "beauty_comparison.png", dpi=120), plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: settings.reports_dir)")
    parser.add_argument("--preset", "--profile", dest="preset", default="full", choices=["full", "quick"],
                        help="hyperparameter preset of training/models/sasrec.yaml (--profile: the old name)")
    parser.add_argument("--no-text", action="store_true", help="ID-only model (no MiniLM text)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hyperparameter")
    args = parser.parse_args()

    try:  # the same --set parsing and checks as `shoprec train`
        settings = training_settings(load_settings(), args.preset, None, tuple(args.set), no_text=args.no_text)
    except click.BadParameter as error:
        parser.error(error.format_message())
    overrides = settings.training.overrides
    version, report = train_version(settings, data="beauty", protocol="loo", checkpoint=True)  # an interrupted run resumes
    name = "sasrec" + (" + MiniLM text" if settings.hyperparameters.use_text else "")
    rows = results_table(report, name)
    out = args.out or settings.reports_dir
    out.mkdir(parents=True, exist_ok=True)
    training = {k: v for k, v in report["training"].items() if k != "history"}
    table = markdown(rows)
    summary = (f"model version {version}; epochs {training['epochs']} (best {training['best_epoch']}), "
               f"training {training['train_seconds']:.0f} s ({training['seconds_per_epoch']:.1f} s/epoch), "
               f"whole run {training['wall_seconds']:.0f} s on {training['device']}; preset {args.preset}, overrides {overrides}")
    (out / "beauty_results.md").write_text(f"# Amazon Beauty, leave-one-out, full ranking\n\n{table}\n\n{summary}\n")
    (out / "beauty_results.json").write_text(json.dumps({"version": version, "preset": args.preset, "overrides": overrides,
                                                         "hyperparameters": settings.hyperparameters.model_dump(),
                                                         "rows": rows, "report": report}, indent=2, default=str))
    plots(report, rows, out)
    print(table)
    print(summary)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
