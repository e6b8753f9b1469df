"""``shoprec serve`` (the recommender, N replicas behind one address) and ``shoprec balancer``
(haproxy alone, in front of replicas that run elsewhere: the compose file's containers).
Both run in the foreground until Ctrl-C or SIGTERM and stop what they started."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from entrypoints.balancer import (BalancerError, ReplicaSet, check_address, haproxy_executable, start_replicas,
                                  write_config)
from entrypoints.serving import ServiceStartError
from shoprec.config import load_settings


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the replicas (process groups of their own) are stopped too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def _report(running: ReplicaSet, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(running.to_json()), nl=True)
        return
    for n, replica in enumerate(running.replicas, 1):
        click.echo(f"replica {n}: {replica.url} (pid {replica.process.pid})")
    click.echo(f"serving on {running.url}" + (" (haproxy in front)" if running.balancer else "") + "; Ctrl-C stops")


def _supervise(running: ReplicaSet) -> None:
    """Until interrupted: a replica that exits is reported once (the balancer routes around it);
    when every replica or the balancer is gone, stop."""
    reported: set[int] = set()
    while True:
        for n, replica in enumerate(running.replicas, 1):
            if replica.process.poll() is not None and n not in reported:
                reported.add(n)
                click.echo(f"replica {n} ({replica.url}) exited with {replica.process.returncode}", err=True)
        if len(reported) == len(running.replicas) or (running.balancer and running.balancer.process.poll() is not None):
            raise click.ClickException("no replica or no balancer left")
        time.sleep(0.5)


@click.command("serve")
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="bentoml serve processes (default: settings balancer.replicas); above 1, haproxy in front of them.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="The one address's port: the balancer's, or the service's for one replica (default: serving.port).")
@click.option("--first-replica-port", type=click.IntRange(1, 65535), default=None,
              help="Replica i listens on this + i, on 127.0.0.1 (default: balancer.first_replica_port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="The interface the one address listens on.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write replica-N.log and balancer.log here (default: $SHOPREC_HOME/balancer/logs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line (url, pids) once everything serves.")
def serve(replicas: int | None, port: int | None, first_replica_port: int | None, host: str, log_dir: Path | None,
          as_json: bool) -> None:
    """Serve recommendations: N bentoml serve replicas behind haproxy on one address.

    The replicas share the online store and the model registry of the settings; each swaps to a
    promoted version on its own. Runs until Ctrl-C or SIGTERM, then stops them all."""
    _exit_on_sigterm()
    settings = load_settings()
    try:
        running = start_replicas(settings, replicas=replicas, port=port, first_replica_port=first_replica_port,
                                 host=host, log_dir=log_dir or settings.home / "balancer" / "logs")
    except (BalancerError, ServiceStartError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        _report(running, as_json)
        _supervise(running)
    finally:
        running.stop()


@click.command("balancer")
@click.option("--replica", "servers", multiple=True, metavar="HOST:PORT",
              help="A replica's address; repeat it (default: settings balancer.servers).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Listen on this port (default: serving.port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen on this interface (0.0.0.0 in a container).")
@click.option("--check", is_flag=True, help="Render and check the configuration, print its path, start nothing.")
def balancer(servers: tuple[str, ...], port: int | None, host: str, check: bool) -> None:
    """Run haproxy in front of serving replicas that run elsewhere (containers).

    Renders deploy/haproxy.cfg for the replicas into $SHOPREC_HOME/balancer/ and becomes haproxy
    (in the foreground)."""
    settings = load_settings()
    addresses = list(servers) or settings.balancer.servers
    try:
        for address in addresses:
            check_address(address)
        path, _ = write_config(settings, addresses, f"{host}:{port or settings.serving.port}")
    except (ValueError, BalancerError) as exc:
        raise click.ClickException(str(exc)) from exc
    if check:
        click.echo(str(path))
        return
    executable = haproxy_executable(settings)
    os.execv(executable, [executable, "-db", "-f", str(path)])  # haproxy itself takes the signals (a container's stop)
