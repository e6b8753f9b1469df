"""Which source column feeds which canonical column, resolved once per part.

A source column that is neither mapped, named like a canonical column nor ignored on purpose is
refused: silently dropping it could lose the user column a shop meant to send.
"""

from __future__ import annotations

from typing import Mapping

from shoprec.reading.errors import InputError
from shoprec.reading.part import Part
from shoprec.schema import EVENT_COLUMNS


def resolve_mapping(part: Part, canonical: Mapping[str, str], flag: str) -> dict[str, str]:
    """canonical -> source for every canonical column with a source: the options' mapping, then
    source columns named like a canonical one; anything else must be ignored on purpose."""
    opts, columns = part.options, part.columns + part.derived
    _check_mapped(part, canonical, flag)
    mapped = set(opts.mapping.values())
    identity = {c: c for c in columns if c in canonical and c not in opts.mapping and c not in mapped
                and c not in opts.ignore}
    superseded = {c for c in columns if c in opts.mapping and opts.mapping[c] != c}  # e.g. user_id when --map user_id=visit
    ignored = set(columns) if "*" in opts.ignore else set(opts.ignore) | set(part.derived) | superseded
    extra = [c for c in part.columns if c not in mapped and c not in identity and c not in ignored]
    if extra and part.kind.type != "json":  # JSON records carry many fields; only the wanted ones are read
        what = "events" if canonical is EVENT_COLUMNS else "items"
        raise InputError(f"wrong columns: {part.files[0].name}: {part.header_note()}{what} have unexpected "
                         f"column(s): {', '.join(extra)} (name them with {flag} CANONICAL=SOURCE or drop them with --ignore)")
    return {**identity, **dict(opts.mapping)}


def _check_mapped(part: Part, canonical: Mapping[str, str], flag: str) -> None:
    """Every mapped source column exists and every mapped canonical name is one."""
    opts = part.options
    absent = [src for src in opts.mapping.values() if src not in part.columns + part.derived]
    if absent:
        raise InputError(f"mapped source column(s) not in the file: {', '.join(absent)} "
                         f"({part.files[0].name} has columns: {', '.join(part.columns)})")
    unknown = [c for c in opts.mapping if c not in canonical]
    if unknown:
        raise InputError(f"{flag} names unknown column(s): {', '.join(unknown)}; the canonical ones are "
                         f"{', '.join(canonical)}")
