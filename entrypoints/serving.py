"""The one way ShopRec starts ``bentoml serve``: the demo, the tests' service harness and the
load benchmark all call ``start_service``.

The service runs in its own process group (BentoML starts one process per worker, which
SIGTERM to the parent alone leaves behind) with ``child_env(settings)``, so it loads exactly
the settings of the caller, and with ``BENTOML_HOME`` under the ShopRec home.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shoprec.config import REPO_ROOT, Settings, child_env
from shoprec.processes import stop_process_group

SERVICE = "services.service:ShopRecService"
READY_ANSWERS_PER_WORKER = 4


class ServiceStartError(RuntimeError):
    """``bentoml serve`` exited or did not answer in time."""


@dataclass
class RunningService:
    process: subprocess.Popen
    url: str
    log_path: Path | None

    def wait_until_live(self, timeout_seconds: float = 120.0) -> None:
        """Until the server answers ``/livez`` (it does before any model is loaded)."""
        self._wait(lambda: self._answers("/livez"), 1, timeout_seconds, "live")

    def wait_until_ready(self, workers: int = 1, token: str = "", timeout_seconds: float = 120.0) -> None:
        """Until every worker serves a model: each loads it on its own, and answers one at a time
        can all come from one worker (its event loop accepts every waiting connection). With
        ``token`` (read or API) the check is exact: ``GET /model`` names its worker, and every
        one of ``workers`` must have answered with a model; without it, ``/readyz`` in bursts."""
        if token and workers > 1:
            self._wait_for_workers(workers, token, timeout_seconds)
            return
        burst = READY_ANSWERS_PER_WORKER * max(1, workers)
        with ThreadPoolExecutor(burst) as pool:
            def all_ready() -> bool:
                return all(pool.map(lambda _: self._answers("/readyz"), range(burst)))

            self._wait(all_ready, 3 if workers > 1 else 1, timeout_seconds, "ready")

    def _wait_for_workers(self, workers: int, token: str, timeout_seconds: float) -> None:
        serving: set[int] = set()
        with ThreadPoolExecutor(READY_ANSWERS_PER_WORKER * workers) as pool:
            def all_serving() -> bool:
                answers = pool.map(lambda _: self._model(token), range(READY_ANSWERS_PER_WORKER * workers))
                serving.update(a["worker"] for a in answers if a and a.get("model_version"))
                return len(serving) >= workers

            self._wait(all_serving, 1, timeout_seconds, f"serving in all {workers} workers")

    def _model(self, token: str) -> dict | None:
        request = urllib.request.Request(self.url + "/model", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return None

    def stop(self, grace_seconds: float = 15.0) -> None:
        stop_process_group(self.process, grace_seconds)

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=3) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _wait(self, check, in_a_row: int, timeout_seconds: float, state: str) -> None:
        deadline, run = time.monotonic() + timeout_seconds, 0
        while run < in_a_row:
            if self.process.poll() is not None:
                raise ServiceStartError(f"bentoml serve exited with {self.process.returncode}{self._see_log()}")
            if time.monotonic() > deadline:
                raise ServiceStartError(f"the service at {self.url} was not {state} within {timeout_seconds:.0f} s{self._see_log()}")
            run = run + 1 if check() else 0
            if run == 0:
                time.sleep(0.25)

    def _see_log(self) -> str:
        return f"; its log: {self.log_path}" if self.log_path else ""


def bentoml_cli() -> str:
    """The ``bentoml`` executable of this interpreter's environment."""
    return str(Path(sys.executable).with_name("bentoml"))


def start_service(
    settings: Settings,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    wait: Literal["ready", "live", "no"] = "ready",
    timeout_seconds: float = 120.0,
) -> RunningService:
    """Start ``bentoml serve services.service:ShopRecService`` with exactly ``settings``, on
    ``port`` (default ``settings.serving.port``), and wait until it is ready (a model serves
    in each of ``settings.serving.workers``), live (it answers, model or not) or not at all.
    On a failed start the process group is stopped."""
    port = port or settings.serving.port
    env = child_env(settings, BENTOML_HOME=str(settings.bentoml_home))
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            [bentoml_cli(), "serve", SERVICE, "--port", str(port), "--host", host],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    finally:
        if log_path:
            log.close()  # the child holds its own copy of the descriptor
    service = RunningService(process, f"http://{host}:{port}", log_path)
    try:
        if wait == "ready":
            service.wait_until_ready(settings.serving.workers, settings.read_token or settings.api_token,
                                     timeout_seconds=timeout_seconds)
        elif wait == "live":
            service.wait_until_live(timeout_seconds)
    except BaseException:
        service.stop()
        raise
    return service
