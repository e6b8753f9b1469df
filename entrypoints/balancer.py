"""Serving replicas behind one address: haproxy (Debian's) in front of ``bentoml serve`` processes.

``start_balancer`` renders ``deploy/haproxy.cfg`` for the replicas' addresses
(``settings.balancer``), checks it with ``haproxy -c`` and runs haproxy in the foreground in
its own process group; ``start_replicas`` starts N services (``entrypoints.serving``) on
``balancer.first_replica_port + i`` and the balancer in front of them on ``serving.port``.
``shoprec serve --replicas N`` and ``shoprec balancer`` are the commands over them.

The replicas share only what their settings name: the online store (Redis: pushes are
serialised across hosts by its locks, idempotency keys live there) and the model registry
(``SHOPREC_HOME/models``). Each swaps to a promoted version on its own, through its pointer
watcher (``serving.reload_poll_seconds``), so the deploy task needs no list of replicas.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template

from entrypoints.serving import RunningService, start_service
from shoprec.config import REPO_ROOT, Settings
from shoprec.durable import write_text_atomically
from shoprec.processes import stop_process_group

TEMPLATE = REPO_ROOT / "deploy" / "haproxy.cfg"


class BalancerError(RuntimeError):
    """haproxy is missing, refused its configuration, or did not start."""


@dataclass(frozen=True)
class ServerStats:
    """One replica as the balancer sees it (haproxy's ``show stat``)."""

    name: str
    address: str
    status: str  # UP, DOWN, "UP 1/2" while a check series runs, MAINT
    requests: int  # sessions sent to it (stot)
    retries: int  # requests it failed that were tried again (wretr)
    redispatches: int  # of those, sent on to another replica (wredis)
    connection_errors: int  # econ
    response_errors: int  # eresp


def check_address(address: str) -> str:
    """``host:port`` of a replica, or ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a replica address is host:port, not {address!r}")
    return address


def render_config(settings: Settings, servers: list[str], bind: str, stats_socket: Path | None = None) -> str:
    """``deploy/haproxy.cfg`` for ``servers`` (``host:port`` each), listening on ``bind``."""
    if not servers:
        raise ValueError("a balancer needs at least one replica address")
    lines = [f"    server replica-{n} {check_address(a)}" for n, a in enumerate(servers, 1)]
    b = settings.balancer
    return Template(TEMPLATE.read_text()).substitute(
        bind=bind, servers="\n".join(lines), retries=b.retries, health_interval_ms=b.health_interval_ms,
        connect_timeout_ms=b.connect_timeout_ms,
        stats_socket=f"stats socket {stats_socket} mode 600 level user" if stats_socket else "",
    )


def haproxy_executable(settings: Settings) -> str:
    found = shutil.which(settings.balancer.haproxy)
    if found is None:
        raise BalancerError(f"{settings.balancer.haproxy} not found: apt-get install haproxy "
                            "(scripts/system-deps.sh haproxy)")
    return found


def write_config(settings: Settings, servers: list[str], bind: str) -> tuple[Path, Path]:
    """The rendered configuration under ``$SHOPREC_HOME/balancer/<port>`` (one folder per balancer:
    two on one home keep their files apart), checked by haproxy; (its path, the stats socket)."""
    folder = settings.home / "balancer" / bind.rsplit(":", 1)[-1]
    folder.mkdir(parents=True, exist_ok=True)
    stats_socket = folder / "haproxy.sock"
    path = write_text_atomically(folder / "haproxy.cfg", render_config(settings, servers, bind, stats_socket))
    check = subprocess.run([haproxy_executable(settings), "-c", "-q", "-f", str(path)],
                           capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise BalancerError(f"haproxy refused {path}: {check.stderr.strip() or check.stdout.strip()}")
    return path, stats_socket


@dataclass
class RunningBalancer:
    process: subprocess.Popen
    url: str
    config_path: Path
    stats_socket: Path

    def stats(self) -> list[ServerStats]:
        return read_stats(self.stats_socket)

    def stop(self, grace_seconds: float = 10.0) -> None:
        stop_process_group(self.process, grace_seconds)


def read_stats(stats_socket: Path) -> list[ServerStats]:
    """The replicas' states and counters, from the stats socket of a running balancer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(stats_socket))
        conn.sendall(b"show stat\n")
        data = b"".join(iter(lambda: conn.recv(65536), b""))
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    return [_server_stats(row) for row in rows if row["pxname"] == "replicas"
            and row["svname"] not in ("FRONTEND", "BACKEND")]


def _server_stats(row: dict[str, str]) -> ServerStats:
    def number(column: str) -> int:
        return int(row.get(column) or 0)

    return ServerStats(name=row["svname"], address=row.get("addr", ""), status=row["status"],
                       requests=number("stot"), retries=number("wretr"), redispatches=number("wredis"),
                       connection_errors=number("econ"), response_errors=number("eresp"))


def start_balancer(settings: Settings, servers: list[str], *, port: int | None = None, host: str = "127.0.0.1",
                   log_path: Path | None = None, timeout_seconds: float = 10.0) -> RunningBalancer:
    """haproxy on ``host:port`` (default ``serving.port``) in front of ``servers``, in its own
    process group; returns once it accepts connections."""
    port = port or settings.serving.port
    config_path, stats_socket = write_config(settings, servers, f"{host}:{port}")
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        process = subprocess.Popen([haproxy_executable(settings), "-db", "-f", str(config_path)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log_path:
            log.close()
    balancer = RunningBalancer(process, f"http://{_client_host(host)}:{port}", config_path, stats_socket)
    try:
        _wait_for_port(process, _client_host(host), port, timeout_seconds)
    except BaseException:
        balancer.stop()
        raise
    return balancer


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _wait_for_port(process: subprocess.Popen, host: str, port: int, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BalancerError(f"haproxy exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BalancerError(f"haproxy did not listen on {host}:{port} within {timeout_seconds:.0f} s")


@dataclass
class ReplicaSet:
    """The replicas and the balancer in front of them (none for one replica)."""

    replicas: list[RunningService]
    balancer: RunningBalancer | None

    @property
    def url(self) -> str:
        return self.balancer.url if self.balancer else self.replicas[0].url

    def to_json(self) -> dict:
        return {"url": self.url, "balancer_pid": self.balancer.process.pid if self.balancer else None,
                "replicas": [{"url": r.url, "pid": r.process.pid} for r in self.replicas]}

    def stop(self) -> None:
        if self.balancer:
            self.balancer.stop()
        for replica in self.replicas:
            replica.stop()


def replica_ports(settings: Settings, replicas: int, first_port: int | None = None) -> list[int]:
    first = first_port or settings.balancer.first_replica_port
    return [first + i for i in range(replicas)]


def start_replicas(settings: Settings, *, replicas: int | None = None, port: int | None = None,
                   first_replica_port: int | None = None, host: str = "127.0.0.1", log_dir: Path | None = None,
                   timeout_seconds: float = 180.0) -> ReplicaSet:
    """``replicas`` (default ``balancer.replicas``) services with exactly ``settings``, and, for
    more than one, the balancer on ``host:port`` (default ``serving.port``) in front of them; the
    replicas listen on 127.0.0.1 (only the balancer faces clients). Returns once every replica
    serves a model in each worker and the balancer listens; on a failure everything is stopped."""
    count = replicas or settings.balancer.replicas
    port = port or settings.serving.port
    if count == 1:
        return ReplicaSet([start_service(settings, port=port, host=host, log_path=_log(log_dir, "replica-1"),
                                         timeout_seconds=timeout_seconds)], None)
    running = ReplicaSet([], None)
    try:
        for n, replica_port in enumerate(replica_ports(settings, count, first_replica_port), 1):
            running.replicas.append(start_service(settings, port=replica_port, log_path=_log(log_dir, f"replica-{n}"),
                                                  wait="no"))  # they load their models side by side
        for replica in running.replicas:
            replica.wait_until_ready(settings.serving.workers, settings.read_token or settings.api_token,
                                     timeout_seconds=timeout_seconds)
        servers = [r.url.removeprefix("http://") for r in running.replicas]
        running.balancer = start_balancer(settings, servers, port=port, host=host, log_path=_log(log_dir, "balancer"))
    except BaseException:
        running.stop()
        raise
    return running


def _log(log_dir: Path | None, name: str) -> Path | None:
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir / f"{name}.log"
