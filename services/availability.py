"""Only items that are available: their state read online for the candidates an answer is about to show.

Availability and price are the catalog's current state, kept in the online store's
``item_stats`` view (``shoprec.features.online.OnlineFeatures.item_states``), so a catalog
change reaches the answers at the next materialization, with no model swap. Reading the
state of the whole catalog per request would not fit a 100,000-item catalog, so
``pick_available`` asks only for the items an answer would pick: every answer of one
micro-batch walks its ranking (best first, category cap), the picks not known yet are read
in one online read for the whole batch (plus a few next candidates, so one unavailable pick
rarely costs a second read), unavailable ones are skipped and the walk is redone. The walk
is greedy in score order, so the answer is exactly the ranking with every unavailable item
removed.

States read online are kept for ``ITEM_STATE_TTL_S`` (per worker): under load the same
popular candidates come up in batch after batch, and a second of staleness still brings a
catalog change to the answers within seconds. When the online store is down (or has no
row for an item), the state the bundle read from the offline ``item_stats`` table at load
stands in (``ServedBundle.last_known``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.catalog import CatalogState
from services.ranking import best_first, search_depth, walk
from services.resilience import StoreGuard
from shoprec.features.online import ItemState

PREFETCH_SHARE = 0.5  # next candidates read along with the picks, as a share of k
ITEM_STATE_TTL_S = 1.0  # how long a state read online is reused
MAX_CACHED_STATES = 200_000  # above this the cache starts over (a bound on memory, not a policy)
UNKNOWN = ItemState(available=None, price=None)

StateReader = Callable[[list[str]], dict[str, ItemState]]


@dataclass
class Candidates:
    """One answer's ranking problem: the best ``k`` of ``scores`` that are not ``banned``
    (the rules' exclusions), at most ``max_per_category`` per category, only available items."""

    item_ids: list[str]  # the served model's vocabulary: index -> item id
    scores: np.ndarray
    k: int
    banned: np.ndarray
    categories: np.ndarray | None = None
    max_per_category: int = 0


def is_available(state: ItemState | None) -> bool:
    """Unknown state counts as available (an item never marked otherwise)."""
    return state is None or state.available is not False


def pick_available(problems: list[Candidates], read: StateReader,
                   hide_unavailable: bool = True) -> tuple[list[list[int]], dict[str, ItemState]]:
    """Each problem's picks (vocabulary indices, best first) and the states read on the way.

    ``read`` gets item ids and returns their states; it is called once per round for all
    problems together (normally one round). With ``hide_unavailable`` off, states are still
    read (answers show the price) but nothing is skipped."""
    known: dict[str, ItemState] = {}
    walks = [_Walk(p) for p in problems]
    picks: list[list[int] | None] = [None] * len(problems)
    while any(p is None for p in picks):
        wanted: set[str] = set()
        for n, ranking in enumerate(walks):
            if picks[n] is None:
                picks[n], to_read = ranking.attempt(known, hide_unavailable)
                wanted.update(to_read)
        if wanted:
            states = read(sorted(wanted))
            known.update({item: states.get(item, UNKNOWN) for item in wanted})
    return picks, known


class _Walk:
    """One problem across rounds: its best-first order, deepened when too many items are skipped."""

    def __init__(self, problem: Candidates):
        self.problem = problem
        self.allowed = len(problem.banned) - int(np.count_nonzero(problem.banned))  # no 100,000-item temporary
        self.depth = min(self.allowed, search_depth(problem.k, problem.max_per_category) + _prefetch(problem.k))
        self.order = best_first(problem.scores, problem.banned, self.depth)

    def attempt(self, known: dict[str, ItemState], hide_unavailable: bool) -> tuple[list[int] | None, list[str]]:
        """(the picks, once every one of them is known; else None) and the item ids to read first."""
        p, ids = self.problem, self.problem.item_ids
        chosen, looked = walk(self.order, p.k, lambda i: hide_unavailable and not is_available(known.get(ids[i])),
                              p.categories, p.max_per_category)
        unknown = [ids[i] for i in chosen if ids[i] not in known]
        if unknown:
            ahead = [ids[i] for i in self.order[looked:looked + _prefetch(p.k)].tolist() if ids[i] not in known]
            return None, unknown + ahead
        if len(chosen) < p.k and self.depth < self.allowed:  # too many skipped: look deeper
            self.depth = min(self.allowed, self.depth * 4)
            self.order = best_first(p.scores, p.banned, self.depth)
            return None, []
        return chosen, []


def _prefetch(k: int) -> int:
    return math.ceil(k * PREFETCH_SHARE)


class ItemStates:
    """Item states for answers: online (``read_online``, e.g. ``OnlineFeatures.item_states``) when
    the store is up, reused for ``ttl_s``; else the bundle's last-known state."""

    def __init__(self, read_online: StateReader | None, store: StoreGuard, ttl_s: float = ITEM_STATE_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self._read_online = read_online
        self.store = store
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, ItemState]] = {}

    def reader(self, last_known: CatalogState) -> StateReader:
        """A reader for ``pick_available``; ``last_known`` (the served bundle's) fills in what is not online."""
        def read(item_ids: list[str]) -> dict[str, ItemState]:
            online = self._online(item_ids)
            return {item: _or_last_known(online.get(item), last_known, item) for item in item_ids}

        return read

    def _online(self, item_ids: list[str]) -> dict[str, ItemState]:
        now = self._clock()
        found = {}
        for item in item_ids:
            hit = self._cache.get(item)
            if hit is not None and now - hit[0] < self.ttl_s:
                found[item] = hit[1]
        missing = [item for item in item_ids if item not in found]
        if not missing or self._read_online is None or not self.store.should_try():
            return found
        try:
            states = self._read_online(missing)
        except Exception as exc:  # FeatureStoreUnavailable, or a client error Feast lets through
            self.store.failed(exc)
            return found
        self.store.succeeded()
        if len(self._cache) > MAX_CACHED_STATES:
            self._cache = {}
        self._cache.update({item: (now, state) for item, state in states.items()})
        return {**found, **states}


def _or_last_known(state: ItemState | None, last_known: CatalogState, item_id: str) -> ItemState:
    """The online state; where it has no value, what the offline table said at load."""
    if state is not None and state.available is not None:
        return state
    last = last_known.state(item_id)
    return ItemState(last.available, state.price if state is not None and state.price is not None else last.price)
