"""Scoped bearer tokens: the read, write and API scopes, the public history-only /recommend,
the start-up refusal of short and placeholder tokens, and a /model that names no place.

The guard's rules are unit-tested on our own ASGI middleware with a fake app; the same rules
are then shown on the real ``bentoml serve`` (tests/service_harness.py) with a real model:
one server with all three tokens, and one with only the API token and the public history
setting on (its read and write scopes closed).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import subprocess

import pytest
from pydantic import ValidationError

from entrypoints.serving import SERVICE, bentoml_cli
from services.guards import RequestGuard, Tokens, history_only, scope_of
from shoprec.config import REPO_ROOT, child_env, load_settings
from shoprec.features.tables import event_log_dir
from shoprec.event_log import read_events
from tests.service_harness import (READ_TOKEN, TOKEN, WRITE_TOKEN, RedisServer, Server, call, free_port,
                                   prepare_shop, shop_settings)

slow = pytest.mark.slow
VARIABLES = {"api_token": "SHOPREC_API_TOKEN", "read_token": "SHOPREC_READ_TOKEN", "write_token": "SHOPREC_WRITE_TOKEN"}


# --- start-up refusal (shoprec.config) ---------------------------------------------------------
@pytest.mark.parametrize("field", VARIABLES)
def test_a_short_token_is_refused_with_the_variable_named(home, field):
    short = secrets.token_urlsafe(24)[:23]  # random, but one character too short
    with pytest.raises(ValidationError) as refused:
        load_settings(**{field: short})
    message = str(refused.value)
    assert VARIABLES[field] in message and "23 characters" in message and "at least 24" in message
    assert short not in message  # the refused value is never printed


def env_example_tokens() -> dict[str, str]:
    lines = (REPO_ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"SHOPREC_\w+_TOKEN=", line))


@pytest.mark.parametrize("field", VARIABLES)
@pytest.mark.parametrize("placeholder", ["change-me-to-a-long-random-string", "your-token-goes-here-please",
                                         "a" * 32, "0123012301230123012301230123"])
def test_a_placeholder_token_is_refused_with_the_variable_named(home, field, placeholder):
    with pytest.raises(ValidationError, match=f"{VARIABLES[field]} is a placeholder"):
        load_settings(**{field: placeholder})


def test_the_env_example_tokens_are_refused_from_the_environment(home, monkeypatch):
    example = env_example_tokens()
    assert set(example) == set(VARIABLES.values())
    for variable, value in example.items():
        monkeypatch.setenv(variable, value)
        with pytest.raises(ValidationError, match=f"{variable} is a placeholder"):
            load_settings()
        monkeypatch.delenv(variable)


def test_real_tokens_and_no_tokens_are_accepted(home):
    tokens = {field: secrets.token_urlsafe(32) for field in VARIABLES}
    assert load_settings(**tokens).read_token == tokens["read_token"]
    assert load_settings().api_token == ""  # no token: its scope is closed, not an error


@slow
def test_the_service_does_not_start_with_a_placeholder_token(home):
    settings = load_settings(home=home)
    env = child_env(settings, BENTOML_HOME=str(settings.bentoml_home), SHOPREC_WRITE_TOKEN="change-me-three")
    result = subprocess.run([bentoml_cli(), "serve", SERVICE, "--port", str(free_port())], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    assert "SHOPREC_WRITE_TOKEN has 15 characters" in result.stdout + result.stderr


# --- the guard (our own ASGI middleware, with a fake app) -------------------------------------
READ, WRITE, API = "r" + secrets.token_urlsafe(30), "w" + secrets.token_urlsafe(30), "a" + secrets.token_urlsafe(30)


def through_guard(path: str, token: str | None = None, body: bytes = b"{}", method: str = "POST",
                  chunks: int = 1, **guard) -> tuple[int, bytes | None]:
    """(status, the body the app received; None when the request never reached it)."""
    reached = {}

    async def app(scope, receive, send):
        received = b""
        while True:
            message = await receive()
            received += message.get("body", b"")
            if not message.get("more_body"):
                break
        reached["body"] = received
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    size = -(-len(body) // chunks) or 1
    parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    headers = [(b"content-type", b"application/json")] + ([(b"authorization", f"Bearer {token}".encode())] if token else [])
    scope = {"type": "http", "path": path, "method": method, "headers": headers}
    options = {"max_body_bytes": 10_000, "api_token": API, "read_token": READ, "write_token": WRITE, **guard}
    asyncio.run(RequestGuard(app, **options)(scope, receive, send))
    if sent[0]["status"] == 401:
        assert "bearer token" in json.loads(sent[1]["body"])["error"]
    return sent[0]["status"], reached.get("body")


PATHS = {"/recommend": "read", "/similar_items": "read", "/model": "read", "/events": "write",
         "/admin/reload": "admin", "/admin/forget_user": "admin", "/admin/erasures/job-1": "admin",
         "/recommend/": "admin", "/anything-new": "admin"}


@pytest.mark.parametrize("path, scope", PATHS.items())
def test_each_path_opens_only_to_its_scope_or_the_api_token(path, scope):
    assert scope_of(path) == scope
    opens = {None: False, "wrong" + READ: False, READ: scope == "read", WRITE: scope == "write", API: True}
    for token, expected in opens.items():
        method = "GET" if path == "/model" else "POST"
        status, reached = through_guard(path, token, method=method)
        assert (status == 200) is expected and (reached is not None) is expected, (path, token is not None)


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz", "/metrics", "/", "/docs.json"])
def test_probes_metrics_and_docs_stay_open(path):
    assert through_guard(path, None, method="GET") == (200, b"{}")


def test_no_token_configured_closes_its_scope():
    unset = {"api_token": "", "read_token": "", "write_token": ""}
    for path, token in [("/recommend", ""), ("/events", ""), ("/admin/reload", "")]:
        assert through_guard(path, token, **unset) == (401, None)
    assert not Tokens().allow("read", "Bearer ")
    status, reached = through_guard("/events", WRITE, read_token="")  # one closed scope leaves the others
    assert status == 200 and reached == b"{}"
    assert through_guard("/recommend", READ, read_token="") == (401, None)


HISTORY = json.dumps({"history": ["i1", "i2"], "k": 3}).encode()


def test_public_history_opens_only_anonymous_history_recommend():
    public = {"public_history_recommend": True}
    assert through_guard("/recommend", None, HISTORY, **public) == (200, HISTORY)
    assert through_guard("/recommend", None, HISTORY, chunks=3, **public) == (200, HISTORY)  # replayed whole
    with_null_user = json.dumps({"history": ["i1"], "user_id": None}).encode()
    assert through_guard("/recommend", None, with_null_user, **public)[0] == 200
    refused = [
        json.dumps({"user_id": "u1", "k": 3}).encode(),
        json.dumps({"history": ["i1"], "user_id": "u1"}).encode(),
        b'{"history": ["i1"], "history": ["i1"], "user_id": "u1"}',
        b'{"history": ["i1"], "user_\\u0069d": "u1"}',  # an escaped name is still user_id
        json.dumps({"history": ["i1"], "something": 1}).encode(),
        b'{"history": ["i1"]',
        b"",
        b'["history"]',
    ]
    for body in refused:
        assert through_guard("/recommend", None, body, **public) == (401, None), body
    assert through_guard("/recommend", None, HISTORY, method="GET", **public) == (401, None)
    assert through_guard("/similar_items", None, HISTORY, **public) == (401, None)
    assert through_guard("/recommend", None, HISTORY) == (401, None)  # the setting is off by default
    assert through_guard("/recommend", READ, json.dumps({"user_id": "u1"}).encode(), **public)[0] == 200


def test_history_only_reads_bodies_strictly():
    assert history_only(HISTORY)
    assert not history_only(b'{"history": "i1"}') and not history_only(b"not json") and not history_only(b"{}")


# --- the real service ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    home = tmp_path_factory.mktemp("auth-home")
    redis = RedisServer(home / "redis").start()
    settings = shop_settings(home, redis.port)
    info = prepare_shop(settings, n_events=2000)
    servers = []
    try:
        servers.append(Server(settings, log_path=home / "serve.log").start())
        # the API token only, and browsers may ask for anonymous histories
        public = settings.with_overrides(read_token="", write_token="", serving={"public_history_recommend": True})
        servers.append(Server(public, log_path=home / "serve-public.log").start())
        yield {"home": home, "settings": settings, "server": servers[0], "public": servers[1], **info}
    finally:
        for server in servers:
            server.stop()
        redis.kill()



def _item(shop) -> str:
    return str(shop["items"]["item_id"].iloc[0])


def _user(shop) -> str:
    counts = shop["events"]["user_id"].value_counts()
    return str(counts[counts >= 3].index[-1])


def _offline_users(shop) -> set[str]:
    folder = event_log_dir(shop["settings"])
    return set(read_events(folder)["user_id"]) if folder.exists() else set()


@slow
def test_reads_without_the_read_token_get_401(shop):
    server, user, item = shop["server"], _user(shop), _item(shop)
    reads = [("POST", "/recommend", {"user_id": user, "k": 3}), ("POST", "/recommend", {"history": [item], "k": 3}),
             ("POST", "/similar_items", {"item_id": item, "k": 3}), ("GET", "/model", None)]
    for method, path, body in reads:
        for token in (None, "wrong-" + READ_TOKEN, WRITE_TOKEN):
            status, answer = call(server, method, path, body, token=token)
            assert status == 401 and "read token" in answer["error"], (path, answer)
        assert call(server, method, path, body, token=READ_TOKEN)[0] == 200, path


@slow
def test_events_without_the_write_token_get_401_and_nothing_is_written(shop):
    server, user = shop["server"], "auth-writer"
    event = {"events": [{"user_id": user, "item_id": _item(shop), "event_type": "view"}]}
    for token in (None, "wrong-" + WRITE_TOKEN, READ_TOKEN):
        status, answer = call(server, "POST", "/events", event, token=token)
        assert status == 401 and "write token" in answer["error"] and "nothing was written" in answer["error"]
    assert call(server, "POST", "/recommend", {"user_id": user, "k": 3}, token=READ_TOKEN)[1]["fallback"] is True
    assert user not in _offline_users(shop)
    assert call(server, "POST", "/events", event, token=WRITE_TOKEN)[0] == 200  # the same request, with its token
    assert call(server, "POST", "/recommend", {"user_id": user, "k": 3}, token=READ_TOKEN)[1]["fallback"] is False
    assert user in _offline_users(shop)


@slow
def test_admin_needs_the_api_token(shop):
    server, user = shop["server"], _user(shop)
    for token in (None, READ_TOKEN, WRITE_TOKEN, "wrong-" + TOKEN):
        assert call(server, "POST", "/admin/reload", {}, token=token)[0] == 401
        assert call(server, "POST", "/admin/forget_user", {"user_id": user}, token=token)[0] == 401
    # nothing was erased: the user's history still drives the answer
    assert call(server, "POST", "/recommend", {"user_id": user, "k": 3}, token=READ_TOKEN)[1]["fallback"] is False


@slow
def test_the_api_token_opens_every_scope(shop):
    server, item = shop["server"], _item(shop)
    event = {"events": [{"user_id": "auth-api-user", "item_id": item, "event_type": "view"}]}
    assert call(server, "POST", "/recommend", {"user_id": _user(shop), "k": 3}, token=TOKEN)[0] == 200
    assert call(server, "POST", "/similar_items", {"item_id": item, "k": 3}, token=TOKEN)[0] == 200
    assert call(server, "GET", "/model", token=TOKEN)[1]["model_version"] == shop["version"]
    assert call(server, "POST", "/events", event, token=TOKEN)[0] == 200
    status, answer = call(server, "POST", "/admin/reload", {}, token=TOKEN)
    assert status == 200 and answer["serving"] == shop["version"]
    for probe in ("/livez", "/readyz", "/metrics"):  # open to all
        assert call(server, "GET", probe)[0] == 200


@slow
def test_public_history_setting_opens_history_recommend_only(shop):
    public, user, item = shop["public"], _user(shop), _item(shop)
    status, answer = call(public, "POST", "/recommend", {"history": [item], "k": 3})
    assert status == 200 and answer["user_id"] is None and len(answer["items"]) == 3
    for body in ({"user_id": user, "k": 3}, {"history": [item], "user_id": user}):
        assert call(public, "POST", "/recommend", body)[0] == 401
    # its read and write scopes are closed (no tokens configured there): another server's tokens open nothing
    assert call(public, "POST", "/recommend", {"user_id": user, "k": 3}, token=READ_TOKEN)[0] == 401
    event = {"events": [{"user_id": "auth-public-writer", "item_id": item, "event_type": "view"}]}
    assert call(public, "POST", "/events", event, token=WRITE_TOKEN)[0] == 401
    assert call(public, "POST", "/similar_items", {"item_id": item, "k": 3})[0] == 401
    assert call(public, "POST", "/recommend", {"user_id": user, "k": 3}, token=TOKEN)[1]["fallback"] is False


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@slow
def test_model_shows_no_paths_or_host_names(shop):
    server = shop["server"]
    # a failed reload: its message names the models folder (the API caller gets it whole)
    status, failed = call(server, "POST", "/admin/reload", {"version": "v-missing"}, token=TOKEN)
    assert status == 200 and failed["status"] == "failed" and str(shop["home"]) in failed["failure"]["error"]
    status, info = call(server, "GET", "/model", token=READ_TOKEN)
    assert status == 200 and info["model_version"] == shop["version"] and info["created_at"] and info["metrics"]
    assert info["last_reload_failure"]["version"] == "v-missing" and info["last_reload_failure"]["error"]
    places = [str(shop["home"]), socket.gethostname(), "127.0.0.1", "localhost", "redis"]
    for text in _strings(info):
        assert not re.search(r"(^|[\s'\"(=:])(/|~/|\.\./)\w", text), text
        assert not any(place in text for place in places), text
    assert call(server, "POST", "/admin/reload", {}, token=TOKEN)[1]["serving"] == shop["version"]
