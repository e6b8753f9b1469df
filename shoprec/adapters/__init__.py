"""Ingestion adapters: each turns one source layout into a canonical ``Batch``.

One module per format; ``ADAPTERS`` maps the ``--format`` name to its reader.
"""

from __future__ import annotations

from shoprec.adapters.base import Batch

__all__ = ["Batch", "read_batch", "FORMATS"]

FORMATS = ("s3rec", "events", "retailrocket", "sessions")


def read_batch(fmt: str, path, **options) -> Batch:
    """Read ``path`` with the adapter named ``fmt`` (one of FORMATS)."""
    if fmt == "s3rec":
        from shoprec.adapters.s3rec import read
    elif fmt == "events":
        from shoprec.adapters.events import read
    elif fmt == "retailrocket":
        from shoprec.adapters.retailrocket import read
    elif fmt == "sessions":
        from shoprec.adapters.sessions import read
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return read(path, **options)
