#!/usr/bin/env bash
# Debian packages some checks need, installed only when missing (root + apt-get required):
#   docker-compose  validates docker-compose.yml without a Docker engine (tests)
#   wrk             the C load generator of benchmarks/service_load.py
#   chromium        the storefront's browser test (tests/test_storefront.py, via Playwright) and
#                   headless screenshots of the Airflow UI (scripts/airflow_ui_screenshot.py)
#   openjdk-17-jre-headless  the JVM of Spark (offline_store.engine spark; tests/test_scaleout_offline.py)
#   haproxy         the balancer in front of serving replicas (shoprec serve --replicas N; tests/test_scaleout_serving.py)
# Usage: scripts/system-deps.sh [PACKAGE ...]   (default: docker-compose)
set -uo pipefail
want=("${@:-docker-compose}")
missing=()
command_of() { case "$1" in openjdk-*-jre-headless) echo java ;; *) echo "$1" ;; esac; }  # package -> what it installs
for pkg in "${want[@]}"; do command -v "$(command_of "$pkg")" >/dev/null 2>&1 || missing+=("$pkg"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: ${missing[*]} missing and cannot be installed here (needs root and apt-get); dependent checks are skipped" >&2
  exit 0
fi
echo "==> installing ${missing[*]}" >&2
{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
  >/tmp/shoprec-apt.log 2>&1 || echo "note: installing ${missing[*]} failed (see /tmp/shoprec-apt.log); dependent checks are skipped" >&2
exit 0
