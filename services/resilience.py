"""Keep serving when a dependency fails: the model version and the online store.

``ModelHolder``: the served model is loaded in the background and swapped atomically,
never lost to a bad version. ``refresh`` loads the production version (or a given one)
while the current model keeps serving; only a fully built bundle replaces it, in one
reference assignment. A version that fails to load leaves the old one in place and is
reported in ``last_failure`` (GET /model shows it).

``StoreGuard``: after an online-store failure the store is skipped for ``cooldown_s``
(requests get the popularity fallback at once instead of each waiting on a dead
store); the next request after that tries it again, so the service recovers by itself.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Collect once, then exempt everything alive (model, catalog, Feast registry) from future
    collections: otherwise a full collection walks millions of long-lived objects in the middle
    of a request (p99 255 ms vs p50 28 ms at concurrency 8 before this)."""
    gc.collect()
    gc.freeze()


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Refresh:
    """What a refresh did (POST /admin/reload answers it)."""

    status: Literal["swapped", "unchanged", "failed", "no production version"]
    serving: str | None  # the version serving after it
    failure: dict | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "serving"}


class ModelHolder(Generic[T]):
    def __init__(self, load: Callable[[str], T], production_version: Callable[[], str | None]):
        self._load = load
        self._production_version = production_version
        self._current: T | None = None
        self._version: str | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self.last_failure: dict | None = None

    @property
    def current(self) -> T | None:
        return self._current

    @property
    def version(self) -> str | None:
        return self._version

    def refresh(self, version: str | None = None) -> Refresh:
        """Load ``version`` (default: the production pointer) if it is not the one serving."""
        with self._refresh_lock:
            try:
                target = version or self._production_version()
            except Exception as exc:  # an unreadable pointer must not stop serving either
                return self._failed(None, exc)
            if target is None:
                return Refresh("no production version", self._version)
            if target == self._version:
                return Refresh("unchanged", self._version)
            try:
                bundle = self._load(target)
            except Exception as exc:
                return self._failed(target, exc)
            self._current, self._version = bundle, target
            self.last_failure = None
            settle_heap()
            log.info("now serving model version %s", target)
            return Refresh("swapped", target)

    def _failed(self, target: str | None, exc: Exception) -> Refresh:
        self.last_failure = {"version": target, "error": f"{type(exc).__name__}: {exc}", "at": _utc_now()}
        log.error("model version %s failed to load, still serving %s: %s", target, self._version, exc)
        return Refresh("failed", self._version, self.last_failure)

    def watch(self, interval_s: float) -> threading.Thread:
        """Poll the production pointer in a daemon thread until ``stop``."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.refresh()

        thread = threading.Thread(target=loop, name="model-watcher", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


class StoreGuard:
    def __init__(self, cooldown_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def should_try(self) -> bool:
        return self._clock() >= self._retry_at

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._retry_at = self._clock() + self.cooldown_s
            self.last_error = f"{type(exc).__name__}: {exc}"

    def succeeded(self) -> None:
        if self.last_error is not None:
            with self._lock:
                self._retry_at = 0.0
                self.last_error = None
