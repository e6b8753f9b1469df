"""The deploy steps of the training DAG, over the service's HTTP API (no BentoML import).

``reload_service`` asks the running service to load a version now (instead of waiting
for its pointer watcher); ``smoke_test`` checks it serves that version and answers.
``deploy`` and ``verify_deployment`` are those steps for a just promoted version: when one
fails, production goes back, through ``training.registry.rollback``, to the version it
replaced, so a version the service cannot serve never stays production. The service is
at ``http://127.0.0.1:<settings.serving.port>`` unless ``url`` is given. The results are
small dataclasses (``Deployment``, ``SmokeTest``); ``to_dict()`` gives what Airflow's XCom takes.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from shoprec.config import Settings
from training.registry import production_version, rollback


class ServiceError(RuntimeError):
    """The service did not do what a deploy step needs."""


@dataclass(frozen=True)
class Deployment:
    """The service's answer to a reload that left it serving the wanted version."""

    status: str  # "swapped", or "unchanged" when it already served it
    serving: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SmokeTest:
    """A passed smoke test: the version the service serves and its answer to a recommendation."""

    model_version: str
    items: int  # how many items /recommend returned
    fallback: bool  # whether that answer was a fallback (e.g. the online store unreachable)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def service_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.serving.port}"


def read_token(settings: Settings) -> str:
    """The token for /model and /recommend: the read token where set (the narrowest), else the API token."""
    return settings.read_token or settings.api_token


def _call(url: str, path: str, body: dict | None = None, token: str = "", timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except OSError as error:
        raise ServiceError(f"the service at {url} is not reachable: {error}") from error


def reload_service(settings: Settings, version: str, url: str | None = None) -> Deployment:
    """Load ``version`` in the running service; raises ServiceError if it is not serving it afterwards."""
    status, body = _call(url or service_url(settings), "/admin/reload", {"version": version}, settings.api_token)
    if status != 200 or body.get("serving") != version:
        raise ServiceError(f"reload of {version} failed ({status}): {body}")
    return Deployment(status=body["status"], serving=version)


def smoke_test(settings: Settings, expect_version: str, url: str | None = None) -> SmokeTest:
    """GET /model names ``expect_version`` and POST /recommend answers with items (both with
    ``read_token(settings)``).

    ``/admin/reload`` reaches one worker process; the others swap when their pointer watcher
    next polls. So the check waits, up to a few poll intervals, until ``confirmations`` answers
    in a row (spread over the workers by the server) name the version.
    """
    url = url or service_url(settings)
    confirmations = 4 * max(1, settings.serving.workers)
    deadline = time.monotonic() + 3 * settings.serving.reload_poll_seconds + 5
    in_a_row = 0
    while in_a_row < confirmations:
        status, model = _call(url, "/model", token=read_token(settings))
        if status == 401:
            raise ServiceError("/model answered 401: set SHOPREC_READ_TOKEN (or SHOPREC_API_TOKEN) to the service's")
        serving = (model or {}).get("model_version") if status == 200 else None
        in_a_row = in_a_row + 1 if serving == expect_version else 0
        if in_a_row == 0:
            if time.monotonic() > deadline:
                raise ServiceError(f"the service serves {serving}, not {expect_version}")
            time.sleep(0.2)
    status, answer = _call(url, "/recommend", {"user_id": "smoke-test", "k": 5}, read_token(settings))
    if status != 200 or not answer.get("items"):
        raise ServiceError(f"/recommend answered {status}: {answer}")
    return SmokeTest(model_version=expect_version, items=len(answer["items"]), fallback=bool(answer["fallback"]))


def _rolled_back(settings: Settings, version: str, error: ServiceError) -> ServiceError:
    """Undo the promotion of ``version`` through the registry (back to the production version
    it replaced, or none); the error, with what was done. A version someone promoted since is
    left alone."""
    current = production_version(settings)
    if current != version:
        return ServiceError(f"{error}; production is {current}, not {version}: nothing rolled back")
    rollback(settings)
    restored = production_version(settings)
    if restored:
        return ServiceError(f"{error}; production rolled back to {restored}")
    return ServiceError(f"{error}; production cleared (there was no earlier production version)")


def deploy(settings: Settings, version: str, url: str | None = None) -> Deployment:
    """Hot-swap the service to ``version`` (just promoted), rolling production back if it fails."""
    try:
        return reload_service(settings, version, url)
    except ServiceError as error:
        raise _rolled_back(settings, version, error) from error


def verify_deployment(settings: Settings, version: str, url: str | None = None) -> SmokeTest:
    """``smoke_test`` of ``version`` (just promoted and deployed), rolling production back if it fails."""
    try:
        return smoke_test(settings, version, url)
    except ServiceError as error:
        raise _rolled_back(settings, version, error) from error
