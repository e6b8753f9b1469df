"""Start the real pieces the service needs, for tests and the load benchmark.

A shop home (synthetic events + catalog in the lake), feature tables in Feast with a
Redis online store on a private port, a quick model promoted to production, and
``bentoml serve services.service:ShopRecService`` on a free port, started the one way
ShopRec starts it (``entrypoints.serving.start_service``) with the shop's own settings.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from entrypoints.serving import RunningService, start_service
from shoprec.config import Settings, child_env, load_settings
from shoprec.features import store
from shoprec.features.tables import build_tables
from shoprec.lake import write_batch
from simulator.shop import generate
from training.pipeline import train_version
from training.registry import promote

# one token per scope, as long and random as the service demands (shoprec.config.token_problem)
TOKEN = secrets.token_urlsafe(32)  # SHOPREC_API_TOKEN: every endpoint, /admin included
READ_TOKEN = secrets.token_urlsafe(32)  # /recommend, /similar_items, /model
WRITE_TOKEN = secrets.token_urlsafe(32)  # /events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server on its own port, durable like production (AOF, fsync every second)."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


def shop_settings(home: Path, redis_port: int) -> Settings:
    """The settings of a test shop: its own home, Redis online store and tokens, a fast pointer poll."""
    return load_settings(
        home=home,
        api_token=TOKEN,
        read_token=READ_TOKEN,
        write_token=WRITE_TOKEN,
        online_store={"type": "redis",
                      "redis_connection_string": f"127.0.0.1:{redis_port},db=0,socket_timeout=1,socket_connect_timeout=1"},
        serving={"reload_poll_seconds": 0.5},
    )


def env_for(home: Path, redis_port: int, **extra: str) -> dict[str, str]:
    """The environment of a process working on the shop (``shop_settings``), with ``extra`` on top."""
    settings = shop_settings(home, redis_port)
    return child_env(settings, BENTOML_HOME=str(settings.bentoml_home), **extra)


def prepare_shop(settings: Settings, n_events: int = 4000, seed: int = 0, epochs: int = 3,
                 n_items: int | None = None, hyperparameters: dict | None = None) -> dict:
    """Synthetic shop -> lake -> features -> quick model -> production, in ``settings`` (``shop_settings``).

    ``n_items``: the catalog's size (default: the generator's for ``n_events``, ~n_events / 50);
    every catalog item is in the model's vocabulary, so a large catalog is scored in full even
    when few of its items have events. ``hyperparameters``: overrides of the quick preset."""
    overrides = {"max_epochs": epochs, **(hyperparameters or {})}
    settings = settings.with_overrides(training={"preset": "quick", "overrides": overrides})
    batch = generate(n_events, seed=seed, n_items=n_items)
    write_batch(settings.lake_dir, batch)
    build_tables(settings)
    store.apply(settings)
    store.materialize(settings)
    version, _ = train_version(settings, data="lake", events=batch.events, items=batch.items, progress=False,
                               checkpoint=False)
    promote(version, settings)
    return {"version": version, "items": batch.items, "events": batch.events}


class Server:
    """``bentoml serve`` (``entrypoints.serving``) with exactly ``settings`` (e.g. ``shop_settings(...)``,
    or a copy with other serving options), in its own process group, stopped with the whole group."""

    def __init__(self, settings: Settings, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = settings
        self.log_path = log_path
        self.service: RunningService | None = None

    def start(self, timeout: float = 120) -> "Server":
        self.service = start_service(self.settings, port=self.port, log_path=self.log_path, timeout_seconds=timeout)
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


def call(server: Server, method: str, path: str, body=None, token: str | None = None,
         raw: bytes | None = None, headers: dict | None = None) -> tuple[int, object]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    try:
        return status, json.loads(payload) if payload.strip() else None
    except json.JSONDecodeError:
        return status, payload.decode(errors="replace")
