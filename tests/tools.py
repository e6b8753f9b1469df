"""The Debian tools some tests drive (scripts/system-deps.sh installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from shoprec.config import REPO_ROOT

COMPOSE = shutil.which("docker-compose")  # Debian's 1.29: validates the compose file without an engine


def require_tool(path: str | None, what: str) -> None:
    """Skip a test whose Debian tool is missing on a developer's machine; fail under CI, where
    scripts/test.sh installs them (scripts/system-deps.sh): there a skip would hide a broken install."""
    if path is None:
        message = f"{what} is not installed (scripts/system-deps.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def compose_config(env_file: str = ".env.example", extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``docker-compose config`` of the production compose file: the merged file, or why it is refused."""
    require_tool(COMPOSE, "docker-compose (Debian's 1.29)")
    return subprocess.run(
        [COMPOSE, "-f", "docker-compose.yml", "--env-file", env_file, "config"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "SHOPREC_ENV_FILE": env_file, **(extra_env or {})},
    )
