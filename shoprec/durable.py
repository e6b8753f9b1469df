"""Durable file writes: a reader sees the old file or the new one, never a torn or mixed one.

Every write goes to a temp file with a name of its own in the target's folder
(``.{name}.{uuid}.tmp``: two writers of one path never share a temp file), is fsynced,
renamed over the target (``os.replace``, atomic on POSIX) and the folder is fsynced, so
the rename itself survives a power loss. A crash leaves at most a temp file behind:
readers never look at one (their names start with "." and end in ".tmp", which no
reader's pattern matches), and the next write to that folder sweeps those older than an
hour (a live writer's temp file is seconds old), at most once a minute per folder and
process, so a busy folder (the real-time event log) is not listed on every write.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TEMP_SUFFIX = ".tmp"
STALE_TEMP_AFTER_S = 3600.0
SWEEP_EVERY_S = 60.0

_last_sweep: dict[str, float] = {}  # folder -> when this process last swept it (time.monotonic)

log = logging.getLogger(__name__)


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's content to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_dirs(folder: Path) -> None:
    """``mkdir -p`` whose new folders survive a crash (each created folder's parent is fsynced)."""
    folder = Path(folder)
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        fsync_path(created.parent)


def temp_path(path: Path) -> Path:
    """A temp name beside ``path`` that no other writer uses."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")


def is_temp_file(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def sweep_stale_temp_files(folder: Path, older_than_s: float = STALE_TEMP_AFTER_S) -> list[Path]:
    """Delete the temp files (``.*.tmp``) in ``folder`` last changed more than ``older_than_s``
    ago: what writers that crashed left behind. Returns what went."""
    cutoff = time.time() - older_than_s
    swept = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return swept
    for entry in entries:
        try:
            stale = is_temp_file(entry.name) and entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff
        except FileNotFoundError:  # another writer renamed or swept it meanwhile
            continue
        if stale:
            Path(entry.path).unlink(missing_ok=True)
            swept.append(Path(entry.path))
    if swept:
        log.info("swept %d stale temp file(s) from %s", len(swept), folder)
    return swept


def _sweep_now_and_then(folder: Path) -> None:
    now, key = time.monotonic(), str(folder)
    if now - _last_sweep.get(key, -SWEEP_EVERY_S) >= SWEEP_EVERY_S:
        _last_sweep[key] = now
        sweep_stale_temp_files(folder)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temp path to write ``path``'s new content to (in as many steps as needed); when
    the block ends without an error it replaces ``path`` durably, otherwise it is deleted."""
    path = Path(path)
    make_dirs(path.parent)
    _sweep_now_and_then(path.parent)
    tmp = temp_path(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write or the rename failed
    fsync_path(path.parent)


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Replace ``path`` by what ``write(temp)`` writes to a temp file, durably; returns ``path``."""
    with replacing(path) as tmp:
        write(tmp)
    return Path(path)


def write_bytes_atomically(path: Path, data: bytes) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomically(path: Path, text: str, encoding: str = "utf-8") -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def write_parquet_atomically(table: pa.Table, path: Path) -> Path:
    return write_atomically(path, lambda tmp: pq.write_table(table, tmp))
