"""Serving replicas behind one address (#15, item 4), against the real processes.

``shoprec serve --replicas 2`` (the CLI, as docs/scaling.md gives it) starts two
``bentoml serve`` processes and Debian's haproxy in front of them; they share one Redis
online store (its own server, database 15) and one model registry (the shop's home).
Shown here: both replicas serve behind the balancer, a promotion reaches both (their
pointer watchers; the deploy and smoke-test steps go through the balancer), a click sent
through one replica changes the next answer of the other, and SIGKILL of one replica (its
server and its worker) in the middle of load fails no request (haproxy retries on the other
one; /events carry Idempotency-Keys and are written exactly once all the same).

The compose file's replicas and balancer are checked with the compose client, like
tests/test_dags_deploy.py checks the rest of it.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from entrypoints.balancer import ServerStats, read_stats, render_config
from services.client import deploy, verify_deployment
from shoprec import event_log
from shoprec.config import REPO_ROOT, child_env, load_hyperparameters, load_settings
from shoprec.features.tables import event_log_dir
from tests.service_harness import READ_TOKEN, WRITE_TOKEN, RedisServer, call, prepare_shop, shop_settings
from training.artifact import save_artifact
from training.data import ItemVocab
from training.models import new_model
from training.registry import production_version, promote
from tests.tools import compose_config, require_tool

HAPROXY = shutil.which("haproxy")
REPLICA_PORTS = (3641, 3642)  # this test's ports (3640-3660): replicas, the balancer, Redis
BALANCER_PORT = 3660
REDIS_PORT = 3659
SPARE_PORT = 3640  # `shoprec balancer` alone
REDIS_DB = 15
LOAD_SECONDS = 8.0
KILL_AFTER_SECONDS = 2.5
LOAD_THREADS = 8


def shoprec_cli() -> str:
    return str(Path(sys.executable).with_name("shoprec"))


# --- the configuration, without processes ------------------------------------------------------


def test_the_rendered_configuration_is_valid_haproxy(home, tmp_path):
    require_tool(HAPROXY, "haproxy")
    settings = load_settings(balancer={"retries": 2})
    text = render_config(settings, ["127.0.0.1:3641", "recommender-2:3000"], "0.0.0.0:3000")
    assert "server replica-1 127.0.0.1:3641" in text and "server replica-2 recommender-2:3000" in text
    assert "retries 2" in text and "$" not in text  # every placeholder filled
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    check = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    # recommender-2 resolves in the compose network only: haproxy starts without it and finds it later
    warnings = [line for line in (check.stderr + check.stdout).splitlines()
                if "[WARNING]" in line and "could not resolve address 'recommender-2'" not in line]
    assert warnings == []


def test_a_replica_address_must_name_a_port(home):
    with pytest.raises(ValueError, match="host:port"):
        render_config(load_settings(), ["recommender"], "0.0.0.0:3000")


def test_compose_runs_two_replicas_behind_the_balancer():
    result = compose_config()
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    replicas = [name for name, s in services.items() if s.get("command", [])[:2] == ["bentoml", "serve"]]
    assert sorted(replicas) == ["recommender", "recommender-2"]
    for name in replicas:
        assert "ports" not in services[name], f"{name} is reached through the balancer only"
        assert "healthcheck" in services[name]
    balancer = services["balancer"]
    command = balancer["command"]
    assert command[:2] == ["shoprec", "balancer"]
    assert [command[i + 1] for i, word in enumerate(command) if word == "--replica"] == [
        f"{name}:3000" for name in sorted(replicas)]
    assert balancer["ports"][0]["target"] == 3000 and "healthcheck" in balancer
    assert set(balancer["depends_on"]) >= set(replicas)
    # the deploy task and every other client use the one address
    for service in services.values():
        url = service.get("environment", {}).get("SHOPREC_AIRFLOW__SERVICE_URL")
        assert url in (None, "http://balancer:3000")


# --- the real processes ------------------------------------------------------------------------


@dataclass
class Running:
    """``shoprec serve --replicas 2`` and what it reported once everything served."""

    url: str
    replica_urls: list[str]
    replica_pids: list[int]
    stats_socket: Path

    def balancer_stats(self) -> dict[str, ServerStats]:
        return {s.name: s for s in read_stats(self.stats_socket)}


def read_ready_line(process: subprocess.Popen, timeout: float, log_path: Path) -> dict:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"shoprec serve exited with {process.returncode}: see {log_path}")
        if selector.select(timeout=0.5):
            line = process.stdout.readline()
            if line.strip().startswith("{"):
                return json.loads(line)
    raise AssertionError(f"shoprec serve did not serve within {timeout:.0f} s")


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def alive(pids: list[int]) -> list[int]:
    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [pid for pid in pids if running(pid)]


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and every process below it, at once: a crashed host. (BentoML's workers
    run in process groups of their own: killing the server's group alone leaves them serving.)"""
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in processes]


def saved_challenger(settings, items: list[str]) -> str:
    """A small untrained version of the shop's items, saved as the release step finds one (the
    promotion test needs a second version to serve, not a good one)."""
    hyperparameters = load_hyperparameters("sasrec", "quick", {"use_text": False, "hidden": 8, "inner": 16,
                                                               "layers": 1, "heads": 1, "max_len": 10})
    net = new_model(hyperparameters, len(ItemVocab(items)), None)
    return save_artifact(net, items, settings.models_dir, {"protocol": "full"}, version="challenger-v2").name


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    require_tool(HAPROXY, "haproxy")
    home = tmp_path_factory.mktemp("replicas")
    redis = RedisServer(home / "redis", port=REDIS_PORT).start()
    settings = shop_settings(home, redis.port).with_overrides(
        online_store={"redis_connection_string": f"127.0.0.1:{redis.port},db={REDIS_DB},socket_timeout=1,"
                                                 "socket_connect_timeout=1"},
        serving={"port": BALANCER_PORT, "workers": 1, "reload_poll_seconds": 0.5},
        balancer={"first_replica_port": REPLICA_PORTS[0]},
        airflow={"service_url": f"http://127.0.0.1:{BALANCER_PORT}"},
    )
    started = time.monotonic()
    info = prepare_shop(settings, n_events=2000, epochs=1)
    challenger = saved_challenger(settings, info["items"]["item_id"].astype(str).tolist())
    print(f"\nshop ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
    (home / "logs").mkdir()
    cli_log = home / "logs" / "shoprec-serve.log"
    with open(cli_log, "wb") as log:
        cli = subprocess.Popen(
            [shoprec_cli(), "serve", "--replicas", "2", "--port", str(BALANCER_PORT),
             "--first-replica-port", str(REPLICA_PORTS[0]), "--log-dir", str(home / "logs"), "--json"],
            cwd=REPO_ROOT, env=child_env(settings, BENTOML_HOME=str(settings.bentoml_home)),
            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        )
    try:
        ready = read_ready_line(cli, timeout=240, log_path=cli_log)
        print(f"shoprec serve --replicas 2 served after {time.monotonic() - started:.0f} s", file=sys.stderr)
        running = Running(ready["url"], [r["url"] for r in ready["replicas"]], [r["pid"] for r in ready["replicas"]],
                          home / "balancer" / str(BALANCER_PORT) / "haproxy.sock")
        yield {"settings": settings, "running": running, "challenger": challenger, "home": home, **info}
    finally:
        started_by_cli = [p.pid for p in psutil.Process(cli.pid).children(recursive=True)] if cli.poll() is None else []
        cli.send_signal(signal.SIGTERM)  # the CLI stops its replicas and the balancer
        try:
            cli.wait(60)
        except subprocess.TimeoutExpired:
            kill_group(cli.pid)
        for pid in alive(started_by_cli):  # whatever a failed stop left
            kill_tree(pid)
        redis.kill()


@dataclass(frozen=True)
class At:
    """An address for ``service_harness.call``: the balancer or one replica."""

    url: str


def at(url: str) -> At:
    return At(url)


def model_of(url: str) -> dict:
    status, body = call(at(url), "GET", "/model", token=READ_TOKEN)
    assert status == 200, body
    return body


def recommend(url: str, user: str) -> dict:
    status, body = call(at(url), "POST", "/recommend", {"user_id": user, "k": 10}, token=READ_TOKEN)
    assert status == 200, body
    return body


@pytest.mark.scaleout
def test_the_balancer_spreads_requests_over_both_replicas(shop):
    running = shop["running"]
    workers = {model_of(running.url)["worker"] for _ in range(8)}
    direct = {model_of(url)["worker"] for url in running.replica_urls}
    assert len(direct) == 2 and workers == direct  # round robin: both replicas answer through the one address
    assert all(s.status.startswith("UP") for s in running.balancer_stats().values())


@pytest.mark.scaleout
def test_a_promotion_reaches_both_replicas(shop):
    settings, running, challenger = shop["settings"], shop["running"], shop["challenger"]
    assert {model_of(url)["model_version"] for url in running.replica_urls} == {shop["version"]}
    promote(challenger, settings)  # what the release step does; then the DAG's deploy and smoke_test steps
    started = time.monotonic()
    deploy(settings, challenger, url=settings.airflow.service_url)
    verify_deployment(settings, challenger, url=settings.airflow.service_url)
    deadline = time.monotonic() + 10 * settings.serving.reload_poll_seconds + 10
    while {model_of(url)["model_version"] for url in running.replica_urls} != {challenger}:
        assert time.monotonic() < deadline, "a replica did not swap to the promoted version"
        time.sleep(0.2)
    print(f"both replicas serve {challenger} {time.monotonic() - started:.1f} s after the promotion")
    assert production_version(settings) == challenger


@pytest.mark.scaleout
def test_a_click_through_one_replica_changes_the_next_answer_of_the_other(shop):
    first, second = shop["running"].replica_urls
    user = f"new-visitor-{uuid.uuid4().hex[:8]}"
    before = recommend(second, user)
    assert before["fallback"] is True  # nobody knows them yet: trending
    clicked = before["items"][0]["item_id"]
    status, body = call(at(first), "POST", "/events", {"events": [
        {"user_id": user, "item_id": clicked, "event_type": "view"}]}, token=WRITE_TOKEN)
    assert status == 200 and body["accepted"] == 1, body
    after = recommend(second, user)
    assert after["fallback"] is False, after  # the model now answers, from the event written through the other replica
    assert clicked not in [i["item_id"] for i in after["items"]]  # seen items are excluded
    assert all(i["reason"].startswith("because you viewed") for i in after["items"])  # their one event


@pytest.mark.scaleout
def test_the_balancer_command_alone_fronts_replicas_that_run_elsewhere(shop):
    """``shoprec balancer`` (the compose file's balancer container) in front of replica 1, with a
    home of its own (its configuration and stats socket are not the running balancer's)."""
    settings = shop["settings"].with_overrides(home=shop["home"] / "balancer-alone")
    first = shop["running"].replica_urls[0]
    log_path = shop["home"] / "logs" / "shoprec-balancer.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [shoprec_cli(), "balancer", "--replica", first.removeprefix("http://"), "--port", str(SPARE_PORT)],
            cwd=REPO_ROOT, env=child_env(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{SPARE_PORT}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _ = call(at(url), "GET", "/balancer/livez")
                break
            except OSError:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "shoprec balancer did not listen"
                time.sleep(0.2)
        assert status == 200  # haproxy's own answer: the container's health check
        assert model_of(url)["worker"] == model_of(first)["worker"]
    finally:
        process.terminate()  # haproxy itself (the command became it): a container's stop
        process.wait(10)


@dataclass
class LoadResult:
    statuses: Counter
    failures: list[str]  # what a client saw that was not a 2xx answer
    acknowledged_users: list[str]  # the users of /events requests answered 200
    seconds: float
    slowest: dict[str, float]  # per path, the longest a client waited for an answer (s)


def load(url: str, users: list[str], items: list[str], seconds: float, threads: int, on_the_way: Callable) -> LoadResult:
    """``threads`` clients for ``seconds``: /recommend (known ``users``) and /events (one new user each, an
    Idempotency-Key, no timestamp: the server stamps it) in turns; ``on_the_way`` runs meanwhile."""
    statuses: Counter = Counter()
    failures: list[str] = []
    acknowledged: list[str] = []
    slowest: dict[str, float] = {"/recommend": 0.0, "/events": 0.0}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(n: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            user = f"load-{n}-{i}-{uuid.uuid4().hex[:6]}"
            if i % 2:
                request = ("POST", "/recommend", {"user_id": users[(n * 7919 + i) % len(users)], "k": 5}, READ_TOKEN, None)
            else:
                request = ("POST", "/events", {"events": [{"user_id": user, "item_id": items[i % len(items)],
                                                           "event_type": "view"}]},
                           WRITE_TOKEN, {"Idempotency-Key": uuid.uuid4().hex})
            method, path, body, token, headers = request
            sent = time.monotonic()
            try:
                status, answer = call(at(url), method, path, body, token=token, headers=headers)
            except Exception as exc:  # noqa: BLE001 - a refused or broken connection is a failed request too
                status, answer = type(exc).__name__, str(exc)
            with lock:
                statuses[(path, status)] += 1
                slowest[path] = max(slowest[path], time.monotonic() - sent)
                if status != 200:
                    failures.append(f"{path} {status}: {answer}")
                elif path == "/events":
                    acknowledged.append(user)

    started = time.monotonic()
    with ThreadPoolExecutor(threads + 1) as pool:
        clients = [pool.submit(client, n) for n in range(threads)]
        pool.submit(on_the_way).result()
        for c in clients:
            c.result()
    return LoadResult(statuses, failures, acknowledged, time.monotonic() - started, slowest)


@pytest.mark.scaleout
def test_killing_a_replica_mid_load_fails_no_request(shop):
    running, settings = shop["running"], shop["settings"]
    items = shop["items"]["item_id"].astype(str).tolist()
    users = shop["events"]["user_id"].astype(str).unique().tolist()
    killed: dict[str, list[int]] = {}

    def kill_the_second_replica() -> None:
        time.sleep(KILL_AFTER_SECONDS)
        killed["pids"] = kill_tree(running.replica_pids[1])

    result = load(running.url, users, items, LOAD_SECONDS, LOAD_THREADS, kill_the_second_replica)
    stats = running.balancer_stats()
    total = sum(result.statuses.values())
    print(f"{total} requests in {result.seconds:.1f} s through the balancer, replica-2 killed after "
          f"{KILL_AFTER_SECONDS} s; answers {dict(result.statuses)}; failures {len(result.failures)}; "
          f"slowest answers (s) {result.slowest}; "
          f"balancer: {stats}")
    assert len(killed["pids"]) >= 2 and not alive(killed["pids"])  # the server and its worker
    assert result.failures == []
    assert total >= 50, "too little load to say anything"
    assert stats["replica-2"].status.startswith("DOWN")
    # the kill was felt: requests that went to the dead replica were retried on the live one
    assert sum(s.retries + s.redispatches for s in stats.values()) > 0
    assert model_of(running.url)["worker"] == model_of(running.replica_urls[0])["worker"]  # the survivor serves
    # exactly once: every acknowledged event is in the event log once, retried or not
    logged = event_log.raw_events(event_log_dir(settings))
    counts = logged[logged["user_id"].str.startswith("load-")]["user_id"].value_counts()
    assert len(result.acknowledged_users) > 0
    assert counts.reindex(result.acknowledged_users).fillna(0).eq(1).all(), counts[counts != 1]
