"""Start the Airflow UI as the README says, check in headless Chromium that it lists the ShopRec
DAGs with their runs, and save a screenshot (default docs/airflow-ui.png).

Run it after ``shoprec demo --exit`` (same SHOPREC_HOME), so there are runs to show:

    .venv/bin/python scripts/airflow_ui_screenshot.py [--out docs/airflow-ui.png]

Needs Debian's chromium (``apt-get install -y chromium``). The UI's login is switched off for
this one local process (simple auth manager, all users admin) so the browser needs no session.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entrypoints.airflow_env import start_airflow, ui_url, wait_until_healthy  # noqa: E402
from shoprec.processes import stop_process_group  # noqa: E402
from shoprec.config import REPO_ROOT, load_settings  # noqa: E402

DAG_IDS = ("shoprec_features", "shoprec_training")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]


def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1440,900",
             "--virtual-time-budget=15000", *args, url],
            capture_output=True, text=True, timeout=120,
        )


def latest_run_states(base: str) -> dict[str, str | None]:
    """The state of each DAG's newest run (None: no run)."""
    states = {}
    for dag_id in DAG_IDS:
        url = f"{base}/api/v2/dags/{dag_id}/dagRuns?limit=1&order_by=-run_after"
        with urllib.request.urlopen(url, timeout=10) as response:
            runs = json.loads(response.read())["dag_runs"]
        states[dag_id] = runs[0]["state"] if runs else None
    return states


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "airflow-ui.png")
    args = parser.parse_args()
    settings = load_settings()
    airflow = start_airflow(settings, settings.reports_dir / "airflow-ui-screenshot.log",
                            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True")
    try:
        wait_until_healthy(settings, timeout_seconds=180)
        base = ui_url(settings)
        states = latest_run_states(base)
        print("newest run per DAG (REST API):", states)
        dom = chromium(f"{base}/dags", "--dump-dom").stdout
        missing = [dag_id for dag_id in DAG_IDS if dag_id not in dom]
        if missing:
            print(f"the UI page does not list {missing}", file=sys.stderr)
            return 1
        if any(state != "success" for state in states.values()):
            print("some DAG has no successful newest run: run `shoprec demo --exit` first", file=sys.stderr)
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shot = chromium(f"{base}/dags", f"--screenshot={args.out.resolve()}")
        if not args.out.exists():
            print(shot.stderr[-2000:], file=sys.stderr)
            return 1
        print(f"the UI lists {', '.join(DAG_IDS)} with successful runs; screenshot: {args.out}")
        return 0
    finally:
        stop_process_group(airflow)


if __name__ == "__main__":
    sys.exit(main())
