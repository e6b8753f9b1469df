"""The ``shoprec`` command line: one sub-command per pipeline step.

Each command is a thin shell over a plain function (importable, testable without
Airflow); heavy imports happen inside the command so ``shoprec --help`` is instant.
Commands that print a report take ``--json`` for a machine-readable one.
"""

from __future__ import annotations

import json
import sys

import click


def emit(report: dict, as_json: bool, human: str) -> None:
    """Print a report as JSON (``--json``) or as the human summary."""
    click.echo(json.dumps(report, indent=2, default=str) if as_json else human)


class LazyGroup(click.Group):
    """Sub-commands live in their own modules and load only when called."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            module_name, attr = self.lazy[name].split(":")
            module = __import__(module_name, fromlist=[attr])
            return getattr(module, attr)
        return super().get_command(ctx, name)


@click.group(
    cls=LazyGroup,
    lazy={
        "generate": "shoprec.commands.data:generate",
        "ingest": "shoprec.commands.data:ingest",
        "validate": "shoprec.commands.data:validate",
        "features": "shoprec.commands.features:features",
        "train": "shoprec.commands.training:train",
        "evaluate": "shoprec.commands.training:evaluate",
        "compress": "shoprec.commands.compress:compress",
        "models": "shoprec.commands.training:models",
        "demo": "shoprec.commands.demo:demo",
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="shoprec")
def cli() -> None:
    """ShopRec: real-time, Transformer-based product recommendations.

    State lives under $SHOPREC_HOME (default .shoprec/); the profile is
    $SHOPREC_PROFILE (local or production).
    """


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
