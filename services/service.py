"""The BentoML service: HTTP in, calls to the jobs of ``services/``, JSON out.

Run from the repository root (``entrypoints.serving`` starts it with the settings'
environment, ``BENTOML_HOME`` included)::

    bentoml serve services.service:ShopRecService --port 3000

The class only composes the jobs: ``CurrentModel`` (the served bundle, reload, /model),
``Recommending`` (/recommend), ``SimilarItems``, ``EventIngest`` (/events) and ``Erasure``
(/admin/forget_user, /admin/erasures/<job>), over one ``OnlineFeatures`` and one ``StoreGuard``. Settings come
from the environment/profile (``shoprec.config``); the bearer tokens of the scopes from
``SHOPREC_READ_TOKEN``, ``SHOPREC_WRITE_TOKEN`` and ``SHOPREC_API_TOKEN`` (``RequestGuard``
checks them before any route runs). See docs/service.md for the API and its authentication.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import bentoml
import torch
from bentoml.validators import ContentType
from fastapi import FastAPI, Query
from starlette.responses import JSONResponse
from starlette.staticfiles import StaticFiles

from services import metrics
from services.availability import ItemStates
from services.browsing import CatalogBrowsing
from services.bundle import CurrentModel
from services.erasure import Erasure
from services.events import EventIngest
from services.experiments import Experiments, ImpressionSink
from services.guards import Limits, RequestError, RequestGuard
from services.recommending import Recommending
from services.resilience import StoreGuard, settle_heap
from services.similar import SimilarItems
from shoprec.config import load_settings
from shoprec.features.online import OnlineFeatures

log = logging.getLogger(__name__)
settings = load_settings()
http_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
STOREFRONT_DIR = Path(__file__).resolve().parent / "storefront"
# the storefront page: static files, public (guards.OPEN_PATHS); it calls the API with the shopper's tokens
http_app.mount("/shop", StaticFiles(directory=STOREFRONT_DIR, html=True), name="storefront")
# A declared media type: otherwise BentoML derives it from a JSON schema it rebuilds
# for every response, a fifth of the event loop's time per /recommend.
JSON = Annotated[dict, ContentType("application/json")]


def _respond(call: Callable[..., Any], *args: Any) -> Any:
    """The job's answer as JSON, or its refusal as JSON with the right status code."""
    try:
        return call(*args).to_json()
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
        # threads per worker: more than one oversubscribes the cores under concurrent requests
        torch.set_num_threads(settings.serving.torch_threads)
        features = OnlineFeatures(settings)
        store = StoreGuard(cooldown_s=settings.serving.store_retry_seconds)
        limits = Limits.from_settings(settings)
        item_states = ItemStates(features.item_states, store)  # one per worker: its cache serves both
        self.model = CurrentModel(settings)
        self.experiments = Experiments(settings, self.model)  # the champion and the challengers' arms
        self.impressions = ImpressionSink(settings)
        self.recommending = Recommending(settings, self.model, features, item_states, store, limits,
                                         on_batch=metrics.batch_sizes.observe, experiments=self.experiments,
                                         impressions=self.impressions)
        self.similar = SimilarItems(settings, self.model, item_states, limits)
        self.events_in = EventIngest(settings, self.model, features, store, limits, self.impressions)
        self.erasure = Erasure(settings, features, limits)
        self.browsing = CatalogBrowsing(settings, self.model, item_states, limits)
        self.store = store
        # load in the background: /livez answers at once, /readyz once a model serves
        threading.Thread(target=self._load_and_warm_up, name="initial-model-load", daemon=True).start()
        self.model.holder.watch(settings.serving.reload_poll_seconds)
        self.experiments.start(settings.serving.reload_poll_seconds)

    def _load_and_warm_up(self) -> None:
        self.model.holder.refresh()
        if self.model.holder.current is None:
            return
        try:  # the request paths once on made-up input, before traffic does; writes nothing
            self.recommending.warm_up()
            self.events_in.warm_up()
        except Exception as exc:  # noqa: BLE001 - never fatal: only the first requests are slower
            log.warning("warm-up failed (the first requests will be slower): %s", exc)
        settle_heap()  # what the warm-up imported and cached lives as long as the model

    def __is_ready__(self) -> bool:
        return self.model.holder.current is not None

    @bentoml.api(route="/recommend")
    async def recommend(
        self, user_id: str | None = None, history: list[str] | None = None, k: int = 10, exclude_seen: bool = True,
        session_id: str | None = None,
    ) -> JSON:
        # on the event loop, not in a request thread: no thread hand-off per request
        try:
            answer = await self.recommending.recommend_async(user_id, history, k, exclude_seen, session_id)
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        metrics.answers_of_kind("fallback" if answer.fallback else "model").inc()
        # a ready response: BentoML's output model would only validate and re-encode the dict
        return JSONResponse(answer.to_json())

    @bentoml.api(route="/similar_items")
    def similar_items(self, item_id: str, k: int = 10, text: str | None = None) -> JSON:
        return _respond(self.similar.similar_items, item_id, k, text)

    @bentoml.api(route="/events")
    def events(self, events: list[Any], ctx: bentoml.Context) -> JSON:
        # a client's retry sends the same Idempotency-Key: it is answered once (services.events)
        try:
            return self.events_in.ingest(events, ctx.request.headers.get("idempotency-key")).to_json()
        except RequestError as exc:
            ctx.response.status_code = exc.status  # with a Context, BentoML answers with its status code
            return exc.body()

    @bentoml.api(route="/admin/reload")
    def admin_reload(self, version: str | None = None) -> JSON:
        return _respond(self.model.reload, version)

    @bentoml.api(route="/admin/forget_user")
    def admin_forget_user(self, user_id: str) -> JSON:
        answer = _respond(self.erasure.forget_user, user_id)  # 202: the erasure job runs on
        return answer if isinstance(answer, JSONResponse) else JSONResponse(answer, status_code=202)

    @http_app.get("/admin/erasures/{job_id}")
    def admin_erasure(self, job_id: str) -> JSONResponse:
        answer = _respond(self.erasure.status, job_id)
        return answer if isinstance(answer, JSONResponse) else JSONResponse(answer)

    @http_app.get("/items")
    def items(self, offset: int = 0, limit: int = 24, q: str | None = None,
              ids: Annotated[list[str] | None, Query()] = None) -> JSONResponse:
        answer = _respond(self.browsing.items, offset, limit, q, ids)
        return answer if isinstance(answer, JSONResponse) else JSONResponse(answer)

    @http_app.get("/experiments")
    def experiments_report(self) -> JSONResponse:
        """Per arm impressions and rates with intervals, and the online test's decision as of now."""
        return JSONResponse(self.experiments.report().to_json())

    @http_app.get("/model")
    def model_info(self) -> dict:
        return self.model.info(self.store.last_error).to_json()


ShopRecService.add_asgi_middleware(
    RequestGuard, max_body_bytes=settings.serving.max_body_bytes, api_token=settings.api_token,
    read_token=settings.read_token, write_token=settings.write_token,
    public_history_recommend=settings.serving.public_history_recommend,
)
