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
import shlex
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from entrypoints.airflow_env import (admin_password, airflow_cli, airflow_env, migrate_db, start_airflow, ui_url,
                                     wait_until_healthy)
from entrypoints.inbox import inbox_folder
from entrypoints.serving import RunningService, ServiceStartError, start_service
from shoprec.adapters.base import Batch
from shoprec.config import REPO_ROOT, Settings, load_settings
from shoprec.processes import stop_process_group
from simulator.shop import generate, write_generated
from training.registry import production_version

# settings.compression overrides for a light compression benchmark: every variant is still built, gated and served
DEMO_COMPRESSION_OVERRIDES = {"prune_epochs": 1, "distill_epochs": 1, "rounds_b1": 20, "rounds_b32": 5}
PRESETS = click.Choice(["quick", "full"])
STEPS = 6


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
        compression=DEMO_COMPRESSION_OVERRIDES,
        # a token per scope unless configured: the deploy task hot-swaps the service through /admin
        # (the API token) and smoke-tests it (the read token); the demo's own /recommend reads too
        api_token=base.api_token or secrets.token_urlsafe(32),
        read_token=base.read_token or secrets.token_urlsafe(32),
        write_token=base.write_token or secrets.token_urlsafe(32),
    )


@dataclass
class DemoRun:
    """What the demo's steps share: the settings, the logs folder, the start time, the processes started."""

    settings: Settings
    logs: Path
    now: datetime
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def hour(self) -> datetime:
        return self.now.replace(minute=0, second=0, microsecond=0)


def _step(number: int, text: str) -> float:
    click.secho(f"[{number}/{STEPS}] {text}", bold=True)
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


def _recommend(service: RunningService, read_token: str, user_id: str, k: int = 5) -> dict:
    request = urllib.request.Request(
        f"{service.url}/recommend",
        data=json.dumps({"user_id": user_id, "k": k}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {read_token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def prepare_run(settings: Settings, fresh: bool) -> DemoRun:
    """An empty home when ``fresh``; the logs folder."""
    if fresh and settings.home.exists():
        shutil.rmtree(settings.home)
    logs = settings.reports_dir / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    click.echo(f"ShopRec demo: state in {settings.home}, logs in {logs}")
    return DemoRun(settings, logs, datetime.now(timezone.utc))


def generate_shop(run: DemoRun, n_events: int) -> Batch:
    """Step 1: a synthetic shop's last 30 days, dropped into the inbox."""
    started = _step(1, f"generating a shop with {n_events:,} events over 30 days, into the inbox")
    batch = generate(n_events, seed=0, start=(run.hour - timedelta(days=30)).isoformat(), days=30, progress=True)
    write_generated(batch, inbox_folder(run.settings, run.now, "demo-shop"))
    _done(started, f"{batch.events['user_id'].nunique():,} users, {len(batch.items):,} items")
    return batch


def start_recommender(run: DemoRun) -> RunningService:
    """Step 2: Airflow's metadata database, and ``bentoml serve`` (live, no model yet)."""
    started = _step(2, "preparing Airflow's metadata database and starting the recommender service")
    migrate_db(run.settings)
    try:
        service = start_service(run.settings, log_path=run.logs / "bentoml.log", wait="live")
    except ServiceStartError as error:
        raise click.ClickException(str(error)) from error
    run.processes.append(service.process)
    _done(started)
    return service


def run_features_dag(run: DemoRun) -> None:
    """Step 3: the inbox batch through validation, the lake, the feature tables and Feast."""
    started = _step(3, "Airflow: shoprec_features (validate with Great Expectations -> lake -> features -> Feast)")
    _run_dag(run.settings, "shoprec_features", run.hour + timedelta(hours=1), run.logs / "shoprec_features.log")
    _done(started)


def run_training_dag(run: DemoRun) -> None:
    """Step 4: a full training run, which must end with a model in production."""
    log_path = run.logs / "shoprec_training.log"
    started = _step(4, f"Airflow: shoprec_training ({run.settings.training.preset} preset: train -> compress -> evaluate "
                       "-> gate -> release -> deploy -> smoke test)")
    _run_dag(run.settings, "shoprec_training", run.now, log_path, {"mode": "full"})
    served = production_version(run.settings)
    if served is None:
        raise click.ClickException(f"the gate promoted no model (see 'gate' in {log_path})")
    _done(started, f"serving {served}")


def show_recommendation(run: DemoRun, service: RunningService, user: str) -> None:
    """Step 5: once every worker serves the model, a live answer for one of the shop's users."""
    started = _step(5, "asking the live service for a recommendation")
    try:
        service.wait_until_ready(run.settings.serving.workers, run.settings.read_token, timeout_seconds=120)
    except ServiceStartError as error:
        raise click.ClickException(str(error)) from error
    answer = _recommend(service, run.settings.read_token, user)
    click.echo(f"      POST /recommend {{\"user_id\": \"{user}\", \"k\": 5}} ->")
    click.echo("      " + json.dumps(answer, default=str)[:1500])
    _done(started)


def start_airflow_ui(run: DemoRun) -> None:
    """Step 6: ``airflow standalone``, until its UI answers."""
    started = _step(6, "starting the Airflow UI")
    log_path = run.logs / "airflow-standalone.log"
    run.processes.append(start_airflow(run.settings, log_path))
    try:
        wait_until_healthy(run.settings, timeout_seconds=180)
    except TimeoutError as error:
        raise click.ClickException(f"{error}; its log: {log_path}") from error
    _done(started)


def write_tokens(run: DemoRun) -> Path:
    """The service's tokens, for calling it by hand, in a file only this user can read (not on the screen)."""
    path = run.logs / "tokens.env"
    path.touch(mode=0o600)
    path.chmod(0o600)
    tokens = {"SHOPREC_READ_TOKEN": run.settings.read_token, "SHOPREC_WRITE_TOKEN": run.settings.write_token,
              "SHOPREC_API_TOKEN": run.settings.api_token}
    path.write_text("".join(f"export {name}={shlex.quote(token)}\n" for name, token in tokens.items()))
    return path


def print_summary(run: DemoRun, total_started: float) -> None:
    settings = run.settings
    click.secho(f"\nDemo finished in {time.monotonic() - total_started:.0f} s.", bold=True)
    click.echo(f"  Airflow UI:       {ui_url(settings)}  (user admin, password {admin_password(settings)})")
    click.echo(f"  Service API docs: http://localhost:{settings.serving.port}/  (OpenAPI: /docs.json)")
    click.echo(f"  Service tokens:   {write_tokens(run)}  (source it, then e.g. curl -H \"Authorization: "
               "Bearer $SHOPREC_READ_TOKEN\" ... /recommend)")
    click.echo(f"  Storefront:       http://localhost:{settings.serving.port}/shop  (sign in with the read and write "
               "tokens of tokens.env)")
    click.echo(f"  Reports:          {settings.reports_dir}  (validation: {settings.validation_dir})")


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
    total_started = time.monotonic()
    run = prepare_run(demo_settings(load_settings(), old_preset or preset, epochs), fresh)
    try:
        batch = generate_shop(run, n_events)
        service = start_recommender(run)
        run_features_dag(run)
        run_training_dag(run)
        show_recommendation(run, service, batch.events["user_id"].iloc[-1])
        start_airflow_ui(run)
        print_summary(run, total_started)
        if keep_serving:
            click.echo("Serving; press Ctrl+C to stop the service and Airflow.")
            run.processes[-1].wait()
    except KeyboardInterrupt:
        pass
    finally:
        for process in reversed(run.processes):
            stop_process_group(process)
