"""How every ``shoprec`` command prints its report."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from typing import Any

import click


def plain(report: Any) -> Any:
    """A report as JSON-able data: a typed result through its ``to_dict`` (or its fields)."""
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if is_dataclass(report) and not isinstance(report, type):
        return asdict(report)
    return report


def emit(report: Any, as_json: bool, human: str) -> None:
    """Print a report as JSON (``--json``) or as the human summary."""
    click.echo(json.dumps(plain(report), indent=2, default=str) if as_json else human)
