#!/usr/bin/env bash
# Debian packages some checks need, installed only when missing (root + apt-get required):
#   docker-compose  validates docker-compose.yml without a Docker engine (tests)
#   wrk             the C load generator of benchmarks/service_load.py
#   chromium        headless screenshots of the Airflow UI (scripts/airflow_ui_screenshot.py)
# Usage: scripts/system-deps.sh [PACKAGE ...]   (default: docker-compose)
set -uo pipefail
want=("${@:-docker-compose}")
missing=()
for pkg in "${want[@]}"; do command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: ${missing[*]} missing and cannot be installed here (needs root and apt-get); dependent checks are skipped" >&2
  exit 0
fi
echo "==> installing ${missing[*]}" >&2
{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
  >/tmp/shoprec-apt.log 2>&1 || echo "note: installing ${missing[*]} failed (see /tmp/shoprec-apt.log); dependent checks are skipped" >&2
exit 0
