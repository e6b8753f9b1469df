"""``shoprec demo``: the whole platform on embedded defaults, through Airflow, in one command.

generate a shop's data -> drop it in the inbox -> run ``shoprec_features`` and
``shoprec_training`` through Airflow (``airflow dags test``: real runs, recorded in the
metadata database, so the UI lists them) -> the training run promotes a model and the
running ``bentoml serve`` hot-swaps to it -> a live recommendation -> the Airflow UI.

The demo's configuration is one ``Settings`` (``demo_settings``); every child process
(Airflow, ``bentoml serve``) gets exactly it through ``child_env``. This process's
environment is left as it was.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from entrypoints.airflow_env import (admin_password, airflow_cli, airflow_env, migrate_db, start_airflow, ui_url,
                                     wait_until_healthy)
from entrypoints.inbox import inbox_folder
from entrypoints.processes import stop_process_group
from entrypoints.serving import RunningService, ServiceStartError, start_service
from shoprec.config import REPO_ROOT, Settings, load_settings
from simulator.shop import generate, write_generated
from training.registry import production_version

# a light compression benchmark: every variant is still built, gated and served
DEMO_COMPRESSION = {"prune_epochs": 1, "distill_epochs": 1, "rounds_b1": 20, "rounds_b32": 5}
PRESETS = click.Choice(["quick", "full"])


def demo_settings(base: Settings, preset: str, epochs: int) -> Settings:
    """The demo's configuration on top of ``base`` (the profile and environment)."""
    return base.with_overrides(
        training={
            "preset": preset,
            "overrides": {**base.training.overrides, "max_epochs": epochs},
            # one torch thread unless configured: on a small shared machine two threads contend with any
            # neighbour and the gate's latency benchmark reads 100x slower (p50 2 ms alone, 325 ms beside a busy core)
            "num_threads": base.training.num_threads or 1,
        },
        # a demo shows one pass: a failing task fails at once instead of backing off and retrying
        airflow={"retries": 0},
        compression=DEMO_COMPRESSION,
        # the deploy task hot-swaps the service through its /admin API, which needs a bearer token
        api_token=base.api_token or secrets.token_urlsafe(24),
    )


def _step(number: int, text: str) -> float:
    click.secho(f"[{number}/6] {text}", bold=True)
    return time.monotonic()


def _done(started: float, detail: str = "") -> None:
    click.echo(f"      done in {time.monotonic() - started:.0f} s{(': ' + detail) if detail else ''}")


def _run_dag(settings: Settings, dag_id: str, logical_date: datetime, log_path: Path, conf: dict | None = None) -> None:
    """One real DAG run through the Airflow CLI; its (long) log goes to a file."""
    with open(log_path, "w") as log:
        result = subprocess.run(
            [airflow_cli(), "dags", "test", dag_id, logical_date.isoformat(), *(["-c", json.dumps(conf)] if conf else [])],
            env=airflow_env(settings), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    finished = [line for line in log_path.read_text().splitlines() if "DagRun Finished" in line]
    if result.returncode != 0 or not finished or "state=success" not in finished[-1]:
        raise click.ClickException(f"DAG {dag_id} failed; its log: {log_path}")


def _recommend(service: RunningService, user_id: str, k: int = 5) -> dict:
    request = urllib.request.Request(
        f"{service.url}/recommend",
        data=json.dumps({"user_id": user_id, "k": k}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@click.command()
@click.option("--events", "n_events", default=15_000, show_default=True, type=click.IntRange(min=2_000),
              help="Events in the generated shop.")
@click.option("--preset", default="quick", show_default=True, type=PRESETS, help="Training hyperparameter preset.")
@click.option("--profile", "old_preset", default=None, type=PRESETS, hidden=True)  # the name --preset had before
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1, 200),
              help="Most training epochs (early stopping may end sooner).")
@click.option("--fresh/--keep", default=True, show_default=True, help="Start from an empty SHOPREC_HOME.")
@click.option("--serve/--exit", "keep_serving", default=True, show_default=True,
              help="Keep the service and the Airflow UI running until Ctrl+C, or stop them at the end.")
def demo(n_events: int, preset: str, old_preset: str | None, epochs: int, fresh: bool, keep_serving: bool) -> None:
    """Run ShopRec end to end on embedded defaults: data -> Airflow DAGs -> served model -> live answer."""
    total = time.monotonic()
    preset = old_preset or preset
    settings = demo_settings(load_settings(), preset, epochs)
    if fresh and settings.home.exists():
        shutil.rmtree(settings.home)
    logs = settings.reports_dir / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    click.echo(f"ShopRec demo: state in {settings.home}, logs in {logs}")
    processes: list[subprocess.Popen] = []
    try:
        t = _step(1, f"generating a shop with {n_events:,} events over 30 days, into the inbox")
        now = datetime.now(timezone.utc)
        hour = now.replace(minute=0, second=0, microsecond=0)
        batch = generate(n_events, seed=0, start=(hour - timedelta(days=30)).isoformat(), days=30, progress=True)
        write_generated(batch, inbox_folder(settings, now, "demo-shop"))
        _done(t, f"{batch.events['user_id'].nunique():,} users, {len(batch.items):,} items")

        t = _step(2, "preparing Airflow's metadata database and starting the recommender service")
        migrate_db(settings)
        try:
            service = start_service(settings, log_path=logs / "bentoml.log", wait="live")
        except ServiceStartError as error:
            raise click.ClickException(str(error)) from error
        processes.append(service.process)
        _done(t)

        t = _step(3, "Airflow: shoprec_features (validate with Great Expectations -> lake -> features -> Feast)")
        _run_dag(settings, "shoprec_features", hour + timedelta(hours=1), logs / "shoprec_features.log")
        _done(t)

        t = _step(4, f"Airflow: shoprec_training ({preset} preset: train -> compress -> evaluate -> gate "
                     "-> release -> deploy -> smoke test)")
        _run_dag(settings, "shoprec_training", now, logs / "shoprec_training.log", {"mode": "full"})
        served = production_version(settings)
        if served is None:
            raise click.ClickException(f"the gate promoted no model (see 'gate' in {logs / 'shoprec_training.log'})")
        _done(t, f"serving {served}")

        t = _step(5, "asking the live service for a recommendation")
        try:
            service.wait_until_ready(settings.serving.workers, timeout_seconds=120)
        except ServiceStartError as error:
            raise click.ClickException(str(error)) from error
        user = batch.events["user_id"].iloc[-1]
        answer = _recommend(service, user)
        click.echo(f"      POST /recommend {{\"user_id\": \"{user}\", \"k\": 5}} ->")
        click.echo("      " + json.dumps(answer, default=str)[:1500])
        _done(t)

        t = _step(6, "starting the Airflow UI")
        airflow = start_airflow(settings, logs / "airflow-standalone.log")
        processes.append(airflow)
        try:
            wait_until_healthy(settings, timeout_seconds=180)
        except TimeoutError as error:
            raise click.ClickException(f"{error}; its log: {logs / 'airflow-standalone.log'}") from error
        _done(t)

        click.secho(f"\nDemo finished in {time.monotonic() - total:.0f} s.", bold=True)
        click.echo(f"  Airflow UI:       {ui_url(settings)}  (user admin, password {admin_password(settings)})")
        click.echo(f"  Service API docs: http://localhost:{settings.serving.port}/  (OpenAPI: /docs.json)")
        click.echo(f"  Reports:          {settings.reports_dir}  (validation: {settings.validation_dir})")
        if keep_serving:
            click.echo("Serving; press Ctrl+C to stop the service and Airflow.")
            processes[-1].wait()
    except KeyboardInterrupt:
        pass
    finally:
        for process in reversed(processes):
            stop_process_group(process)
