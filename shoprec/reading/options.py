"""The options every format takes: how a user says what their files look like."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Mapping

DEFAULT_CHUNK_ROWS = 500_000

_MERGED = ("mapping", "constants", "event_values")  # a user's entries added to the preset's, not replacing them


@dataclass(frozen=True)
class ReadOptions:
    """How to read a source; every format takes these (its preset sits underneath, see ``over``)."""

    delimiter: str | None = None  # None: detected
    header: bool = True
    columns: tuple[str, ...] = ()  # the column names when header=False
    mapping: Mapping[str, str] = field(default_factory=dict)  # canonical -> source column
    constants: Mapping[str, str] = field(default_factory=dict)  # canonical -> value for rows without one
    timestamp_unit: str | None = None  # s|ms|us|ns; None: numbers by magnitude, strings parsed
    user_from_session: bool | None = None  # see plan._user_rule: None when the user column is missing or empty
    event_values: Mapping[str, str] = field(default_factory=dict)  # source event name -> canonical type
    ignore: tuple[str, ...] = ()  # source columns dropped on purpose
    encoding: str = "utf-8"
    typed_header: bool = False  # RecBole: 'user_id:token' is the column 'user_id'
    quoting: bool = True  # '"' quotes fields (off for formats whose titles hold bare quotes)

    def over(self, preset: "ReadOptions") -> "ReadOptions":
        """These (a user's) options on top of a format's preset: what the user set wins."""
        default = ReadOptions()
        merged: dict[str, object] = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(preset, f.name)
            if f.name in _MERGED:
                merged[f.name] = {**theirs, **mine}
            elif f.name == "ignore":
                merged[f.name] = tuple(dict.fromkeys((*theirs, *mine)))
            else:
                merged[f.name] = mine if mine != getattr(default, f.name) else theirs
        return ReadOptions(**merged)  # type: ignore[arg-type]
