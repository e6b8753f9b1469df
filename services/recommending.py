"""/recommend: the model's picks for a user or an anonymous session, with fallbacks and the shop's rules.

One answer goes through: the user's recent events (online store), the model's scores over
the catalog, the rules (exclusions, category cap), only available items (their state read
online, ``services.availability``), a reason per pick. Concurrent requests share the
fixed costs: ``recommend_async`` hands each request to an ``AsyncBatcher`` on the event
loop, and one batch does one online read of its users, one model call per served
version and one online read of its candidates' item state. Fallbacks: trending items for
an unknown user or a history the model does not know, all-time popularity when the online
store is unreachable (``fallback: true`` in both).

Every answer has a ``recommendation_id`` and names the ``arm`` and ``experiment`` that served
it (``services.experiments``: the arm's bundle is the request's, so the batch's "one model call
per served version" covers the arms too); it is logged as an impression off the request path
(``ImpressionSink``). A shadow challenger's request rides in the same batch and is only logged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from services.availability import Candidates, ItemStates, pick_available
from services.batching import AsyncBatcher
from services.bundle import CurrentModel, ServedBundle
from services.experiments import Assignment, Experiments, ImpressionSink
from services.guards import Limits
from services.ranking import POPULAR, TRENDING, Rules, excluded_items, explain
from services.resilience import StoreGuard
from shoprec.config import Settings
from shoprec.features.online import ItemState, OnlineFeatures
from shoprec.impressions import Impression

log = logging.getLogger(__name__)
REASON_WINDOW = 20  # history items considered when explaining a pick

Events = list[tuple[str, str]]  # (item_id, event_type), oldest first


@dataclass(frozen=True)
class RecommendRequest:
    bundle: ServedBundle  # the version serving when the request came in
    user_id: str | None
    history: list[str] | None
    k: int
    exclude_seen: bool
    session_id: str | None = None
    arm: str = "champion"
    experiment: str | None = None
    shadow: bool = False  # a challenger's answer in shadow mode: logged, never shown


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    score: float
    reason: str
    price: float | None  # the catalog's price, from the same online read as the availability

    def to_json(self) -> dict:
        return {"item_id": self.item_id, "score": self.score, "reason": self.reason, "price": self.price}


@dataclass(frozen=True)
class Recommendation:
    user_id: str | None
    items: list[RecommendedItem]
    model_version: str
    fallback: bool
    recommendation_id: str = ""
    arm: str = "champion"
    experiment: str | None = None

    def to_json(self) -> dict:
        return {"user_id": self.user_id, "items": [i.to_json() for i in self.items],
                "model_version": self.model_version, "fallback": self.fallback,
                "recommendation_id": self.recommendation_id, "arm": self.arm, "experiment": self.experiment}


@dataclass(frozen=True)
class _Plan:
    """How one request is answered: which scores, and how each pick is explained."""

    scores: np.ndarray
    fallback: bool
    reason: str | None  # one reason for every pick (a fallback); None: explain from the history
    known: list[tuple[int, str]]  # the history the model knows, as (vocabulary index, event_type)
    events: Events


class Recommending:
    def __init__(self, settings: Settings, model: CurrentModel, features: OnlineFeatures | None,
                 item_states: ItemStates, store: StoreGuard, limits: Limits,
                 on_batch: Callable[[int], None] | None = None, experiments: Experiments | None = None,
                 impressions: ImpressionSink | None = None):
        s = settings.serving
        self.model = model
        self.experiments = experiments
        self.impressions = impressions
        self._shadows: set[asyncio.Task] = set()  # shadow requests in flight (a task is kept while it runs)
        self.features = features
        self.store = store
        self.limits = limits
        self.rules = Rules(s.exclude, s.hide_unavailable, s.max_per_category)
        self.sequence_length = settings.features.sequence_length
        self.item_states = item_states
        self._batcher = AsyncBatcher(self.answer_batch, s.batch_max_size, s.batch_max_wait_ms / 1000, on_batch)

    def recommend(self, user_id: str | None, history: list[str] | None, k: int, exclude_seen: bool = True,
                  session_id: str | None = None) -> Recommendation:
        """An answer computed in the calling thread (in-process use)."""
        shown, shadow = self._requests(user_id, history, k, exclude_seen, session_id)
        return self.answer_batch([shown] if shadow is None else [shown, shadow])[0]

    async def recommend_async(self, user_id: str | None, history: list[str] | None, k: int,
                              exclude_seen: bool = True, session_id: str | None = None) -> Recommendation:
        """The same answer on the service's event loop, batched with concurrent requests; a shadow
        request is submitted beside it and not waited for."""
        shown, shadow = self._requests(user_id, history, k, exclude_seen, session_id)
        if shadow is not None:
            task = asyncio.ensure_future(self._batcher.submit(shadow))
            self._shadows.add(task)
            task.add_done_callback(self._shadow_done)
        return await self._batcher.submit(shown)

    def _shadow_done(self, task: asyncio.Task) -> None:
        self._shadows.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the shown answer is unaffected
            log.warning("shadow request failed: %s", task.exception())

    def warm_up(self) -> None:
        """Run the request path once (imports, first-use costs of the model and the store reads); logs nothing."""
        bundle = self.model.bundle()
        self.answer_batch([self._requests(None, [bundle.catalog.item_ids[0]], 10, True, None)[0]], log=False)
        if self.features is not None:
            self.features.recent_events(["warm-up"])

    def _requests(self, user_id, history, k, exclude_seen, session_id) -> tuple[RecommendRequest, RecommendRequest | None]:
        """The request whose answer is shown, and a shadow challenger's (or None)."""
        user_id, history, k = self.limits.check_recommend(user_id, history, k)
        session_id = None if session_id is None else self.limits.check_id(session_id, "session_id")
        assigned = (self.experiments.assign(user_id, session_id) if self.experiments is not None
                    else Assignment(None, "champion", self.model.bundle()))
        shown = RecommendRequest(assigned.bundle, user_id, history, k, bool(exclude_seen), session_id,
                                 assigned.arm, assigned.experiment)
        if assigned.shadow_bundle is None:
            return shown, None
        return shown, replace(shown, bundle=assigned.shadow_bundle, arm=assigned.shadow_arm, shadow=True)

    # --- the batched step ------------------------------------------------------------------
    def answer_batch(self, requests: list[RecommendRequest], log: bool = True) -> list[Recommendation]:
        """The answers of concurrent requests, their store reads and model calls shared; each
        logged as an impression (``log``)."""
        events = self._events(requests)
        known = [[(r.bundle.catalog.index[i], t) for i, t in e or () if i in r.bundle.catalog.index]
                 for r, e in zip(requests, events)]
        scores = self._score_known(requests, known)
        plans = [self._plan(r, e, kn, sc) for r, e, kn, sc in zip(requests, events, known, scores)]
        problems = [self._candidates(r, p) for r, p in zip(requests, plans)]
        read = self.item_states.reader(requests[0].bundle.last_known)  # one read for the batch, whatever its versions
        picks, states = pick_available(problems, read, self.rules.hide_unavailable)
        answers = [self._answer(r, p, pk, states) for r, p, pk in zip(requests, plans, picks)]
        if log and self.impressions is not None:
            self._log(requests, answers)
        return answers

    def _log(self, requests: list[RecommendRequest], answers: list[Recommendation]) -> None:
        now = pd.Timestamp.now(tz="UTC")
        for r, a in zip(requests, answers):
            self.impressions.shown(Impression(a.recommendation_id, now, r.user_id, r.session_id,
                                              [i.item_id for i in a.items], a.model_version, r.arm, r.experiment,
                                              r.shadow, a.fallback))

    def _events(self, requests: list[RecommendRequest]) -> list[Events | None]:
        """Each request's events: its user's from the online store (None: unreachable), or its history."""
        users = list(dict.fromkeys(r.user_id for r in requests if r.user_id is not None))
        online = self._user_events(users) if users else {}
        return [[(item, "view") for item in r.history] if r.user_id is None
                else (None if online is None else online.get(r.user_id, [])) for r in requests]

    def _user_events(self, user_ids: list[str]) -> dict[str, Events] | None:
        if self.features is None or not self.store.should_try():
            return None
        try:
            events = self.features.recent_events(user_ids)
        except Exception as exc:  # FeatureStoreUnavailable, or a client error Feast lets through
            self.store.failed(exc)
            return None
        self.store.succeeded()
        return events

    def _score_known(self, requests: list[RecommendRequest], known: list[list[tuple[int, str]]]) -> list[np.ndarray | None]:
        """Model scores for the requests with known items (None for the others): one model call per
        served bundle, since a model swap may land between two requests of a batch."""
        scores: list[np.ndarray | None] = [None] * len(requests)
        for bundle in {id(r.bundle): r.bundle for r in requests}.values():
            rows = [n for n, r in enumerate(requests) if r.bundle is bundle and known[n]]
            if rows:
                histories = [[bundle.catalog.item_ids[i] for i, _ in known[n]][-self.sequence_length:] for n in rows]
                for n, row in zip(rows, bundle.recommender.score(histories)):
                    scores[n] = row
        return scores

    def _plan(self, request: RecommendRequest, events: Events | None, known, scores) -> _Plan:
        popularity = request.bundle.popularity
        if events is None:  # the online store is unreachable
            return _Plan(popularity.overall, True, POPULAR, [], [])
        if scores is None:  # no history, or none of it known to the model
            return _Plan(popularity.trending, True, TRENDING, [], events)
        return _Plan(scores, False, None, known, events)

    def _candidates(self, request: RecommendRequest, plan: _Plan) -> Candidates:
        catalog = request.bundle.catalog
        banned = np.zeros(len(catalog.item_ids), dtype=bool)
        banned[catalog.indices(sorted(excluded_items(plan.events, self.rules.exclude, request.exclude_seen)))] = True
        return Candidates(catalog.item_ids, plan.scores, request.k, banned, catalog.categories, self.rules.max_per_category)

    def _answer(self, request: RecommendRequest, plan: _Plan, picks: list[int],
                states: dict[str, ItemState]) -> Recommendation:
        bundle = request.bundle
        catalog = bundle.catalog
        if plan.reason is None:
            reasons = explain(picks, plan.known[-REASON_WINDOW:], bundle.unit_embeddings,
                              lambda i: catalog.title(catalog.item_ids[i]))
        else:
            reasons = [plan.reason] * len(picks)
        items = [
            RecommendedItem(catalog.item_ids[i], round(float(plan.scores[i]), 6), reason, states[catalog.item_ids[i]].price)
            for i, reason in zip(picks, reasons)
        ]
        return Recommendation(request.user_id, items, bundle.version, plan.fallback, uuid.uuid4().hex,
                              request.arm, request.experiment)
