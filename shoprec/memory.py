"""Giving freed C-heap memory back to the operating system.

glibc keeps what a process frees in its malloc arenas, one per thread that allocated, and
hands it back only from the top of each heap. Ranking 100,000 items for a batch of users
allocates and frees ~100 MB in torch's worker threads, and those arenas keep growing:
evaluating 60,000 users on a 100,000-item catalog peaked at 6.2 GB resident, and the 10 M-event
shop's evaluation (110,000 users) at 12 GB. ``malloc_trim(0)`` after each batch returns the free
pages of every arena: 0.6 GB for 60,000 users, and faster (32 s against 46 s;
``benchmarks/evaluate_memory.py``, docs/results/evaluate_memory.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _malloc_trim():
    for name in (ctypes.util.find_library("c"), "libc.so.6"):  # find_library needs ldconfig or a compiler
        try:
            return getattr(ctypes.CDLL(name), "malloc_trim")
        except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to trim this way
            continue
    return None


def release_freed_memory() -> bool:
    """Return the free pages of every malloc arena to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
