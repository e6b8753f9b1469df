"""How every ``shoprec`` command prints its report."""

from __future__ import annotations

import json
from typing import Any, Protocol

import click


class Report(Protocol):
    """A typed result (a dataclass with ``to_dict()``, e.g. ``BuiltTables``, ``Release``)."""

    def to_dict(self) -> dict[str, Any]: ...


def emit(report: Report | dict[str, Any], as_json: bool, human: str) -> None:
    """Print a report, a typed result or plain data, as JSON (``--json``) or as the human summary."""
    if as_json:
        click.echo(json.dumps(report if isinstance(report, dict) else report.to_dict(), indent=2, default=str))
    else:
        click.echo(human)
