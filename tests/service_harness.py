"""Start the real pieces the service needs, for tests and the load benchmark.

A shop home (synthetic events + catalog in the lake), feature tables in Feast with a
Redis online store on a private port, a quick model promoted to production, and a
``bentoml serve services.service:ShopRecService`` subprocess on a free port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-123"


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


def env_for(home: Path, redis_port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SHOPREC_HOME": str(home),
        "SHOPREC_API_TOKEN": TOKEN,
        "SHOPREC_ONLINE_STORE__TYPE": "redis",
        "SHOPREC_ONLINE_STORE__REDIS_CONNECTION_STRING": f"127.0.0.1:{redis_port},db=0,socket_timeout=1,socket_connect_timeout=1",
        "SHOPREC_SERVING__RELOAD_POLL_SECONDS": "0.5",
        "BENTOML_HOME": str(home / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def prepare_shop(n_events: int = 4000, seed: int = 0, epochs: int = 3) -> dict:
    """In the current SHOPREC_HOME: synthetic shop -> lake -> features -> quick model -> production."""
    from shoprec.config import load_settings
    from shoprec.features import store
    from shoprec.features.tables import build_tables
    from shoprec.generate import generate
    from shoprec.lake import write_batch
    from training.pipeline import train_version
    from training.registry import promote

    settings = load_settings()
    batch = generate(n_events, seed=seed)
    write_batch(settings.lake_dir, batch)
    build_tables(settings)
    store.apply(settings)
    store.materialize(settings)
    version, _ = train_version(
        settings, data="lake", events=batch.events, items=batch.items, profile="quick",
        overrides={"max_epochs": epochs}, progress=False, checkpoint=False,
    )
    promote(version, settings)
    return {"version": version, "items": batch.items, "events": batch.events}


class Server:
    """``bentoml serve`` in its own process group, stopped with the whole group."""

    def __init__(self, env: dict[str, str], port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "Server":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("bentoml")), "serve", "services.service:ShopRecService",
             "--port", str(self.port), "--host", "127.0.0.1"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        # each worker loads the model on its own: only a run of ready answers (4 per worker,
        # each on a new connection) says they all serve
        wanted, ready = 4 * int(self.env.get("SHOPREC_SERVING__WORKERS", "1")), 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}")
            try:
                ready = ready + 1 if call(self, "GET", "/readyz")[0] == 200 else 0
            except OSError:
                ready = 0
            if ready >= wanted:
                return self
            time.sleep(0.25 if ready == 0 else 0.01)
        self.stop()
        raise RuntimeError("the service did not become ready")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


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
