"""Refusing bad requests: limits on what a request may ask for, and an ASGI guard in front.

- ``Limits``: k, history length, events per request, text length; refused with
  ``RequestError`` (422 by default) and a message that says why. Ids are checked with the
  id rules of ``shoprec.validation`` (the same definition the batch gate and /events use).
- ``RequestGuard`` (plain ASGI middleware, testable with a fake app), before anything
  parses the body: every path but the probes, /metrics, the API docs and the storefront page needs
  ``Authorization: Bearer <token>`` of its scope (``Tokens``: read for /recommend,
  /similar_items, /items, /model and /experiments, write for /events, the API token for everything, /admin
  included); a scope with no token configured is closed (401, nothing written). With
  ``serving.public_history_recommend`` a history-only /recommend needs no token (its body
  is read here to tell); a POST body must be JSON (a form-encoded body would otherwise be
  read as "no fields" and answered with defaults): 415; a body above
  ``max_body_bytes`` gets 422, whether the client sent a Content-Length or streamed chunks.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Literal

from shoprec.config import Settings
from shoprec.validation import check_id, id_rules

Scope = Literal["open", "read", "write", "admin"]
# Open: liveness/readiness probes, Prometheus counts and latencies (no user data; restrict
# /metrics at the network if even that is private), and BentoML's API docs (no data).
# The storefront page (/shop: HTML, JS, CSS, no data) is public too; its API calls carry the shopper's tokens.
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/", "/docs.json", "/schema.json", "/shop"})
OPEN_PREFIXES = ("/static_content/", "/assets/", "/shop/")
# /model is a read: it tells which version serves and how good it is, nothing a shop's public needs
SCOPE_OF_PATH: dict[str, Scope] = {"/recommend": "read", "/similar_items": "read", "/model": "read",
                                   "/items": "read", "/experiments": "read", "/events": "write"}
PUBLIC_HISTORY_FIELDS = frozenset({"history", "k", "exclude_seen", "user_id", "session_id"})  # user_id only as null


class RequestError(ValueError):
    """A request the service refuses; ``status`` is the HTTP code, ``detail`` extra JSON."""

    def __init__(self, message: str, status: int = 422, detail: object | None = None):
        super().__init__(message)
        self.status = status
        self.detail = detail

    def body(self) -> dict:
        out: dict = {"error": str(self)}
        if self.detail is not None:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class Limits:
    max_k: int
    max_history: int
    max_events: int
    max_id_length: int
    max_body_bytes: int
    max_text_length: int = 1000  # /similar_items text of a new item

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        s = settings.serving
        return cls(
            max_k=s.max_k,
            max_history=s.max_history,
            max_events=s.max_events_per_request,
            max_id_length=settings.validation.max_id_length,
            max_body_bytes=s.max_body_bytes,
        )

    def check_id(self, value: object, field: str) -> str:
        """A request's id (``field`` names it in the message), stripped; RequestError if a rule refuses it."""
        if not isinstance(value, str):  # JSON numbers are not ids here, unlike in an event record
            raise RequestError(f"{field} must be a string")
        cleaned, errors = check_id(value, id_rules(field, self.max_id_length))
        if errors:
            raise RequestError("; ".join(errors))
        return cleaned

    def check_text(self, text: object) -> str:
        if not isinstance(text, str) or not text.strip():
            raise RequestError("text must be a non-empty string")
        if len(text) > self.max_text_length:
            raise RequestError(f"text is longer than {self.max_text_length} characters")
        return text.strip()

    def check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int):
            raise RequestError("k must be an integer")
        if not 1 <= k <= self.max_k:
            raise RequestError(f"k must be between 1 and {self.max_k} (got {k})")
        return k

    def check_recommend(self, user_id: str | None, history: list[str] | None, k: int) -> tuple[str | None, list[str] | None, int]:
        """Exactly one of user_id / history; returns the cleaned values."""
        k = self.check_k(k)
        if (user_id is None) == (history is None):
            raise RequestError("give either user_id or history (an anonymous session), not both and not neither")
        if user_id is not None:
            return self.check_id(user_id, "user_id"), None, k
        if len(history) > self.max_history:
            raise RequestError(f"history has {len(history)} items; at most {self.max_history} are allowed")
        return None, [self.check_id(item, f"history[{i}]") for i, item in enumerate(history)], k

    def check_events(self, events: list) -> None:
        if not events:
            raise RequestError("events must be a non-empty list")
        if len(events) > self.max_events:
            raise RequestError(f"{len(events)} events in one request; at most {self.max_events} are allowed")


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def authorized(header: str | None, token: str) -> bool:
    if not token or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), token.encode())


def scope_of(path: str) -> Scope:
    """The token scope a path needs; anything not listed (``/admin/...`` too) needs the API token."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return "open"
    return SCOPE_OF_PATH.get(path, "admin")


@dataclass(frozen=True)
class Tokens:
    """The configured bearer tokens; "" closes a scope. The API token opens every scope."""

    read: str = ""
    write: str = ""
    api: str = ""

    def allow(self, scope: Scope, header: str | None) -> bool:
        if scope == "open" or authorized(header, self.api):
            return True
        own = {"read": self.read, "write": self.write}.get(scope, "")
        return authorized(header, own)


def history_only(body: bytes) -> bool:
    """Whether ``body`` is a /recommend for an anonymous history and nothing else: a JSON
    object with a ``history`` list, no user_id (or null) and no other fields. A repeated key
    is refused: the service's JSON parser could read it another way than this one."""

    def no_repeats(pairs: list[tuple[str, object]]) -> dict:
        keys = [key for key, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("repeated key")
        return dict(pairs)

    try:
        request = json.loads(body or b"{}", object_pairs_hook=no_repeats)
    except ValueError:  # JSONDecodeError and a repeated key
        return False
    return (isinstance(request, dict) and set(request) <= PUBLIC_HISTORY_FIELDS
            and request.get("user_id") is None and isinstance(request.get("history"), list))


def _unauthorized(scope: Scope) -> dict:
    needs = {"read": "the read token (or the API token)", "write": "the write token (or the API token)",
             "admin": "the API token"}[scope]
    return {"error": f"missing or invalid bearer token: this endpoint needs {needs}; nothing was written"}


class RequestGuard:
    def __init__(self, app, max_body_bytes: int, api_token: str = "", read_token: str = "", write_token: str = "",
                 public_history_recommend: bool = False):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.tokens = Tokens(read=read_token, write=write_token, api=api_token)
        self.public_history_recommend = public_history_recommend

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        needs = scope_of(scope["path"])
        allowed = self.tokens.allow(needs, headers.get("authorization"))
        # an anonymous history may be let in, but only once its body is read (below)
        maybe_public = self.public_history_recommend and scope["path"] == "/recommend" and scope["method"] == "POST"
        if not allowed and not maybe_public:
            return await _send_json(send, 401, _unauthorized(needs))
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type != "application/json":
            return await _send_json(send, 415, {"error": f"send JSON with Content-Type: application/json (got {content_type!r})"})
        too_big = {"error": f"request body is larger than {self.max_body_bytes} bytes"}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _send_json(send, 422, too_big)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return await _send_json(send, 422, too_big)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        if not allowed and not history_only(b"".join(m.get("body", b"") for m in messages)):
            return await _send_json(send, 401, _unauthorized(needs))

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)
