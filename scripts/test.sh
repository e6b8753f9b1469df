#!/usr/bin/env bash
# The README's test command: set up .venv if needed, make sure PostgreSQL and Redis
# are up, run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/services.sh
scripts/system-deps.sh docker-compose openjdk-17-jre-headless haproxy chromium  # chromium: tests/test_storefront.py
export HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true AIRFLOW__CORE__LOAD_EXAMPLES=False
exec .venv/bin/python -m pytest "$@"
