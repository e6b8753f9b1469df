"""What was found in a source, typed: what ``--dry-run`` prints and the ingest report keeps.

Every guess a reader makes (delimiter, timestamp unit, users from sessions) is recorded with
where it came from (given, preset, detected), so a wrong guess is visible before anything lands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PartLayout:
    """What one part of a source (a set of files sharing one layout) looks like."""

    role: str  # events | catalog (or a named part: clicks, buys, ...)
    files: tuple[str, ...]
    file_type: str
    compression: str | None
    delimiter: str | None
    delimiter_source: str  # given | detected | preset | n/a
    header: bool
    columns: tuple[str, ...]  # source columns as read (types stripped)
    mapping: dict[str, str]  # canonical -> source, every canonical column that has a source
    constants: dict[str, str]
    timestamp_unit: str | None  # s|ms|us|ns|text|datetime
    timestamp_unit_source: str  # given | detected | n/a
    user_from_session: str  # every row [(why)] | rows without a user | off

    def describe(self) -> str:
        lines = [f"{self.role}: {self._files()} - {self._reading()}",
                 f"  columns: {', '.join(self.columns)}",
                 "  mapping: " + ", ".join(f"{c} <- {s}" for c, s in self.mapping.items())]
        if self.constants:
            lines.append("  constants: " + ", ".join(f"{c}={v}" for c, v in self.constants.items()))
        if self.timestamp_unit:
            lines.append(f"  timestamp: {self.timestamp_unit} ({self.timestamp_unit_source})")
        if self.role != "catalog":
            lines.append(f"  user from session: {self.user_from_session}")
        return "\n".join(lines)

    def _files(self) -> str:
        return self.files[0] if len(self.files) == 1 else f"{len(self.files)} files ({self.files[0]} ...)"

    def _reading(self) -> str:
        """'text+gzip, delimiter ',' (detected), header'."""
        delim = f"delimiter {self.delimiter!r} ({self.delimiter_source})" if self.delimiter else ""
        bits = [self.file_type + (f"+{self.compression}" if self.compression else ""), delim,
                "header" if self.header else "no header"]
        return ", ".join(b for b in bits if b)


@dataclass(frozen=True)
class SourceLayout:
    format: str
    parts: tuple[PartLayout, ...]
    catalog: PartLayout | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        parts = [p.describe() for p in self.parts] + ([self.catalog.describe()] if self.catalog else [])
        return "\n".join([f"format {self.format}" + (f" ({self.note})" if self.note else "")] + parts)
