"""What a reader raises on bad input, and where in a file a chunk came from.

Every way a file can be malformed ends in ``InputError``, whose message names the file, the
line and the column, so that whoever brought the data can fix it without reading our code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


class InputError(ValueError):
    """Raw input that cannot become a batch: unreadable, empty, wrong columns or types."""


@dataclass(frozen=True)
class Place:
    """Where a chunk came from, so errors can name the file and the line."""

    file: Path
    first_line: int  # line (text, JSON) or row (Parquet) number of the chunk's first row, 1-based
    unit: str = "line"

    def at(self, index: int) -> str:
        return f"{self.file.name} {self.unit} {self.first_line + int(index)}"


def type_error(place: Place, source: str, canonical: str, raw: pd.Series, bad: pd.Series, kind: str) -> InputError:
    """The first bad value's line, how many there are and a few examples: enough to find them all."""
    first = int(np.flatnonzero(bad.to_numpy())[0])
    examples = ", ".join(repr(v) for v in raw[bad].astype(str).unique()[:3])
    column = repr(source) if source == canonical else f"{source!r} ({canonical})"
    return InputError(f"wrong types: {place.at(first)}, column {column}: {int(bad.sum())} value(s) are not {kind}, "
                      f"e.g. {examples}")
