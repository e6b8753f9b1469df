"""Which files a path names, what kind each is, and their first bytes.

A file's kind comes from its suffixes (``events.csv.gz`` is gzip-compressed text), never from
its content, so that a folder can be listed without opening every file.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from shoprec.reading.errors import InputError

SNIFF_BYTES = 64 * 1024  # enough lines for csv.Sniffer and the timestamp-unit guess
COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".lz4": "lz4"}
TEXT_SUFFIXES = (".csv", ".tsv", ".dat", ".data", ".txt", ".inter", ".item", ".user")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
SUPPORTED = ", ".join(TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES)


@dataclass(frozen=True)
class FileKind:
    type: str  # text | json | parquet
    compression: str | None


def file_kind(path: Path) -> FileKind:
    """The kind a file's suffixes say; Parquet compresses inside, so a compressed Parquet file is refused."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = COMPRESSION.get(suffixes[-1]) if suffixes else None
    inner = inner_suffix(path)
    for kind, known in (("text", TEXT_SUFFIXES), ("json", JSON_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
        if inner in known:
            if kind == "parquet" and compression:
                break
            return FileKind(kind, compression)
    raise InputError(f"{Path(path).name}: unsupported file type {''.join(suffixes[-2:]) or 'without a suffix'!r}; "
                     f"use one of {SUPPORTED} (text and JSON optionally .gz, .zst or .bz2)")


def inner_suffix(path: Path) -> str:
    """The suffix under any compression one: '.csv' for 'events.csv.gz'."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def is_data_file(path: Path) -> bool:
    try:
        file_kind(path)
        return not path.name.startswith(".")
    except InputError:
        return False


def expand(path) -> tuple[Path, ...]:
    """The files a path names: one file, every data file of a folder, or a glob; sorted."""
    text = str(path)
    if any(c in text for c in "*?["):
        files = tuple(sorted(Path(p) for p in glob.glob(text) if Path(p).is_file()))
        if not files:
            raise InputError(f"no file matches {text}")
        return files
    path = Path(path)
    if path.is_file():
        return (path,)
    if path.is_dir():
        files = tuple(sorted(p for p in path.iterdir() if p.is_file() and is_data_file(p)))
        if not files:
            raise InputError(f"{path} holds no data file ({SUPPORTED})")
        return files
    raise InputError(f"no such file or folder: {path}")


def open_stream(path: Path, kind: FileKind) -> pa.NativeFile:
    """The file's bytes, decompressed on the fly (pyarrow's readers never see the compression)."""
    return pa.input_stream(str(path), compression=kind.compression)


def head_bytes(path: Path, kind: FileKind, size: int = SNIFF_BYTES) -> tuple[bytes, bool]:
    """The first ``size`` bytes (decompressed) cut at the last full line, and whether that is all."""
    try:
        with open_stream(path, kind) as stream:
            data = stream.read(size)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path.name} cannot be read ({kind.compression or 'uncompressed'}): {exc}") from exc
    complete = len(data) < size
    if not complete and b"\n" in data:
        data = data[: data.rindex(b"\n") + 1]
    return data, complete


def refuse_empty(path: Path, kind: FileKind) -> None:
    """InputError for a file without bytes, or without any once decompressed: pyarrow's own errors
    for these say nothing a user can act on."""
    if path.stat().st_size == 0:
        raise InputError(f"{path.name} is empty (0 bytes)")
    if kind.compression is not None and not head_bytes(path, kind, 1)[0]:
        raise InputError(f"{path.name} is empty (nothing once decompressed)")
