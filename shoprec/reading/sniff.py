"""Guessing a delimited file's delimiter, and why a header line looks wrong.

Users rarely know (or say) their delimiter; a wrong guess would silently make one wide column,
so the guess prefers the delimiter that splits every sampled line into the same number of fields.
"""

from __future__ import annotations

import csv
import re

DELIMITERS = ",\t;| "  # detection candidates, in order of preference when several fit
NUMBER_OR_DATE = re.compile(r"^[-+]?\d+([.,]\d+)?([eE][-+]?\d+)?$|^\d{4}-\d{2}-\d{2}")


def detect_delimiter(sample: str, preferred: str | None = None) -> str | None:
    """The delimiter of a text sample, among , TAB ; | and space: the one the file's suffix suggests
    when it splits every line into the same number (> 1) of fields, else the candidate that does so
    with the most fields (space last), else csv.Sniffer's pick; None for a one-column file."""
    lines = [line for line in sample.splitlines() if line.strip()][:100]
    if not lines:
        return None
    widths = {d: _fields_per_line(lines, d) for d in DELIMITERS}
    if preferred and widths.get(preferred, 0) > 1:
        return preferred
    fitting = [d for d in DELIMITERS if widths[d] > 1 and d != " "] or [d for d in " " if widths[d] > 1]
    if fitting:
        return max(fitting, key=lambda d: widths[d])  # max keeps the first of equals: the order above
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:
        return None


def _fields_per_line(lines: list[str], delimiter: str) -> int:
    """The number of fields every line has with this delimiter; 0 when lines disagree."""
    widths = {len(row) for row in csv.reader(lines, delimiter=delimiter)}
    return widths.pop() if len(widths) == 1 else 0


def header_hint(names: tuple[str, ...], sample: str) -> str:
    """Why a header may be wrong: it is data, or it was split with the wrong delimiter."""
    if len(names) == 1:
        other = detect_delimiter(sample)
        found = [d for d in DELIMITERS if d in names[0]]
        if other or found:
            d = other or found[0]
            return f"the line has one column {names[0][:80]!r}: wrong delimiter? it looks {d!r}-separated (--delimiter {d!r})"
    if any(NUMBER_OR_DATE.match(n.strip()) for n in names if n):
        return ("the first line looks like data, not a header: if the file has no header, name the columns "
                "with --no-header --columns a,b,c")
    return "check the header line or pass --no-header --columns a,b,c"
