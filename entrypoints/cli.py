"""The ``shoprec`` command line: one sub-command per pipeline step.

Each command is a thin shell over a plain function (importable, testable without Airflow).
The sub-command modules (``entrypoints.commands``) import their stacks (torch, Feast, Great
Expectations) at the top, so this group names them by string and imports one only when it
runs, and lists them with the one-line help kept here: ``shoprec --help`` stays instant.
Commands that print a report take ``--json`` for a machine-readable one.
"""

from __future__ import annotations

import importlib
import sys

import click

# name -> (module:attribute, the one-line help `shoprec --help` shows without importing it)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("entrypoints.commands.data:generate", "Generate a synthetic shop: events.parquet and items.parquet in one folder."),
    "ingest": ("entrypoints.commands.data:ingest", "Ingest PATH: read, clean, validate; write it to the lake or quarantine it."),
    "validate": ("entrypoints.commands.data:validate", "Check PATH against the validation gate without writing anything."),
    "features": ("entrypoints.commands.features:features", "Feature tables and the Feast feature store (offline + online)."),
    "train": ("entrypoints.commands.training:train", "Train a sequential recommender and save it as a new model version."),
    "evaluate": ("entrypoints.commands.training:evaluate", "Evaluate a model version with its own protocol, baselines in the same run."),
    "compress": ("entrypoints.commands.compress:compress", "Quantize, prune, distil and export a model; measure every variant against the folded FP32 model; pick the served one."),
    "models": ("entrypoints.commands.models:models", "The model versions: list them (the default), promote one, roll production back."),
    "experiment": ("entrypoints.commands.experiments:experiment", "The live experiment: per-arm rates, and the online test that promotes or stops challengers."),
    "monitor": ("entrypoints.commands.monitor:monitor", "The daily drift and health report (HTML + JSON + plots under reports/monitoring/)."),
    "demo": ("entrypoints.commands.demo:demo", "Run ShopRec end to end on embedded defaults: data -> Airflow DAGs -> served model -> live answer."),
    "serve": ("entrypoints.commands.serving:serve", "Serve recommendations: N bentoml serve replicas behind haproxy on one address."),
    "balancer": ("entrypoints.commands.serving:balancer", "Run haproxy in front of serving replicas that run elsewhere (containers)."),
    "airflow": ("entrypoints.airflow_services:main", "Run Airflow as separate services: API server, scheduler, DAG processor, Celery workers."),
}


class LazyGroup(click.Group):
    """Sub-commands that live in their own modules and load only when called."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return super().get_command(ctx, name)
        module_name, attribute = self.lazy[name][0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shoprec")
def cli() -> None:
    """ShopRec: real-time, Transformer-based product recommendations.

    State lives under $SHOPREC_HOME (default .shoprec/); the deployment profile is
    $SHOPREC_PROFILE (local or production).
    """


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
