"""Shared fixtures. Every test session gets its own SHOPREC_HOME, so nothing touches .shoprec/."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

SESSION_HOME = Path(tempfile.mkdtemp(prefix="shoprec-test-"))
os.environ["SHOPREC_HOME"] = str(SESSION_HOME)
os.environ.setdefault("SHOPREC_PROFILE", "local")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

BEAUTY_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty SHOPREC_HOME for one test."""
    path = tmp_path / "home"
    monkeypatch.setenv("SHOPREC_HOME", str(path))
    return path


@pytest.fixture
def settings(home):
    from shoprec.config import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def beauty_dir() -> Path:
    if not (BEAUTY_DIR / "Beauty.txt").exists():
        pytest.skip(f"Beauty data not found at {BEAUTY_DIR}")
    return BEAUTY_DIR
