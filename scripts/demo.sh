#!/usr/bin/env bash
# The README's main command: set up .venv if needed, then run `shoprec demo` (all arguments go to it).
# Everything runs on embedded defaults (SQLite, file registry, local processes); state in .shoprec/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true AIRFLOW__CORE__LOAD_EXAMPLES=False
exec .venv/bin/shoprec demo "$@"
