"""The Debian tools some tests drive (scripts/system-deps.sh installs them)."""

from __future__ import annotations

import os

import pytest


def require_tool(path: str | None, what: str) -> None:
    """Skip a test whose Debian tool is missing on a developer's machine; fail under CI, where
    scripts/test.sh installs them (scripts/system-deps.sh): there a skip would hide a broken install."""
    if path is None:
        message = f"{what} is not installed (scripts/system-deps.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

