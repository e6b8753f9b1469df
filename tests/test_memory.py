"""shoprec.memory: the C heap's free pages go back to the OS where glibc allows it."""

from __future__ import annotations

import platform

import pytest

from shoprec.memory import release_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_freed_memory_calls_glibc():
    assert release_freed_memory() is True
