"""The BentoML service: HTTP in, ``RecommendationEngine`` calls, JSON out.

Run from the repository root::

    bentoml serve services.service:ShopRecService --port 3000

Settings come from the environment/profile (``shoprec.config``); the bearer token
for writes from ``SHOPREC_API_TOKEN``. See docs/service.md for the API.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Annotated, Any

from shoprec.config import load_settings

settings = load_settings()
# BentoML reads its home when it is imported: point it into SHOPREC_HOME first
os.environ.setdefault("BENTOML_HOME", str(settings.bentoml_home))

import bentoml  # noqa: E402
from bentoml.validators import ContentType  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

from services.engine import RecommendationEngine  # noqa: E402
from services.guards import RequestError, RequestGuard  # noqa: E402
from services.resilience import settle_heap  # noqa: E402

http_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
# A declared media type: otherwise BentoML derives it from a JSON schema it rebuilds
# for every response, a fifth of the event loop's time per /recommend.
JSON = Annotated[dict, ContentType("application/json")]
answers_total = bentoml.metrics.Counter(
    name="shoprec_recommendations_total",
    documentation="Recommendation answers by kind (model or fallback)",
    labelnames=["kind"],
)
batch_sizes = bentoml.metrics.Histogram(
    name="shoprec_recommend_batch_size",
    documentation="/recommend requests that shared one online-store read and model call",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


@functools.cache
def _answers_of_kind(kind: str):
    return answers_total.labels(kind=kind)


def _respond(call, *args) -> Any:
    """The engine's answer, or its refusal as JSON with the right status code."""
    try:
        return call(*args)
    except RequestError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(
    name="shoprec",
    workers=settings.serving.workers,
    threads=settings.serving.threads,
    logging={"access": {"enabled": settings.serving.access_log}},
    tracing={"excluded_urls": settings.serving.untraced_paths},
    traffic={"timeout": 30},
    http={"port": settings.serving.port},
)
class ShopRecService:
    def __init__(self) -> None:
        import torch

        from shoprec.features.online import OnlineFeatures

        # threads per worker: more than one oversubscribes the cores under concurrent requests
        torch.set_num_threads(settings.serving.torch_threads)
        self.engine = RecommendationEngine(settings, features=OnlineFeatures(settings), on_batch=batch_sizes.observe)
        holder = self.engine.holder
        # load in the background: /livez answers at once, /readyz once a model serves
        threading.Thread(target=self._load_and_warm_up, name="initial-model-load", daemon=True).start()
        holder.watch(settings.serving.reload_poll_seconds)

    def _load_and_warm_up(self) -> None:
        self.engine.holder.refresh()
        if self.engine.holder.current is not None:
            self.engine.warm_up()
            settle_heap()  # what the warm-up imported and cached lives as long as the model

    def __is_ready__(self) -> bool:
        return self.engine.holder.current is not None

    @bentoml.api(route="/recommend")
    async def recommend(
        self, user_id: str | None = None, history: list[str] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> JSON:
        # on the event loop, not in a request thread: no thread hand-off per request
        try:
            answer = await self.engine.recommend_async(user_id, history, k, exclude_seen)
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        _answers_of_kind("fallback" if answer["fallback"] else "model").inc()
        # a ready response: BentoML's output model would only validate and re-encode the dict
        return JSONResponse(answer)

    @bentoml.api(route="/similar_items")
    def similar_items(self, item_id: str, k: int = 10, text: str | None = None) -> JSON:
        return _respond(self.engine.similar_items, item_id, k, text)

    @bentoml.api(route="/events")
    def events(self, events: list[Any]) -> JSON:
        return _respond(self.engine.ingest_events, events)

    @bentoml.api(route="/admin/reload")
    def admin_reload(self, version: str | None = None) -> JSON:
        return _respond(self.engine.reload, version)

    @bentoml.api(route="/admin/forget_user")
    def admin_forget_user(self, user_id: str) -> JSON:
        return _respond(self.engine.forget_user, user_id)

    @http_app.get("/model")
    def model(self) -> dict:
        return self.engine.model_info()


ShopRecService.add_asgi_middleware(
    RequestGuard, max_body_bytes=settings.serving.max_body_bytes, api_token=settings.api_token
)
