"""The synthetic shop: a deterministic catalog and event stream with learnable structure.

What a model can learn from it (and what tests check it did):

- users have latent tastes: a primary category and a favourite brand, which bias
  the items they look at and make them more likely to buy;
- every item has a few "next" items (two of its own category, one of a
  complementary category: phone -> case, espresso maker -> mugs); within a session
  users often go on to one of them. This is the sequential signal;
- sessions run view -> add_to_cart -> purchase, so purchases are rarer than carts,
  carts rarer than views, and every cart or purchase follows a view of its item;
- item popularity drifts: each item's appeal follows a slow wave over time, so the
  best sellers of the first week are not those of the last;
- a few catalog items are unavailable (out of stock): they get views, never carts.

The catalog and the users (the "world") depend only on the seed and the sizes; the
events on the seed and the time window. ``generate`` makes one batch over
``[start, start + days)``. ``generate_window`` makes the events of any window
(a day, an hour) from the same world, so a scheduled pipeline gets a fresh,
reproducible batch per run: same seed and window, same events.

All work is vectorised numpy; Python loops run over session steps (at most
``max_session_views``), never over events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from shoprec.adapters.base import Batch
from shoprec.schema import EVENT_ARROW_SCHEMA, ITEM_ARROW_SCHEMA
from simulator.catalog import CATEGORIES, catalog_frame, per_category_choice

SECONDS_PER_DAY = 86_400.0
EVENT_TYPES = np.array(["view", "add_to_cart", "purchase"], dtype=object)
VIEW, CART, PURCHASE = 0, 1, 2
NEXT_SLOT_WEIGHTS = np.array([0.5, 0.3, 0.2])  # how often each of an item's 3 next items is chosen
# Relative shop traffic per hour of the day (UTC): quiet nights, busy evenings.
HOURLY_TRAFFIC = np.array(
    [0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0,
     1.1, 1.0, 0.9, 0.9, 1.0, 1.1, 1.3, 1.5, 1.6, 1.4, 1.0, 0.6]
)


@dataclass(frozen=True)
class Behaviour:
    """How the simulated shoppers behave; the defaults give a clearly learnable signal."""

    mean_session_views: float = 5.0
    max_session_views: int = 40
    follow_next_item: float = 0.6  # P(next view is one of the current item's next items)
    from_taste_category: float = 0.5  # otherwise: P(a fresh view comes from the user's category)
    from_favourite_brand: float = 0.15  # ... from the user's favourite brand (else: any item)
    add_to_cart: float = 0.08  # P(cart | view)
    add_to_cart_taste_bonus: float = 0.1  # extra P(cart | view) for an item of the user's category
    purchase: float = 0.45  # P(purchase | cart)
    unavailable_ratio: float = 0.03
    popularity_spread: float = 1.0  # sigma of the log-normal item popularity
    drift: float = 1.0  # typical amplitude (log scale) of an item's popularity wave


def default_sizes(n_events: int) -> tuple[int, int]:
    """(n_users, n_items) for a batch of n_events: ~20 events per user, catalog ~ n_events/50."""
    n_users = max(10, n_events // 20)
    n_items = int(np.clip(n_events // 50, 50, 100_000))
    return n_users, n_items


def generate(
    n_events: int,
    seed: int = 0,
    n_users: int | None = None,
    n_items: int | None = None,
    start: str | pd.Timestamp = "2026-01-01",
    days: int = 30,
    behaviour: Behaviour = Behaviour(),
    progress: bool = False,
) -> Batch:
    """Exactly ``n_events`` events in ``[start, start + days)`` plus the catalog, as a canonical Batch.

    Same arguments, same frames. Popularity completes half a wave over the window,
    so trends are visible within it.
    """
    start = _utc(start)
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    default_users, default_items = default_sizes(n_events)
    world = _World.build(n_users or default_users, n_items or default_items, seed, behaviour)
    events = _simulate(
        world,
        np.random.default_rng([seed, 1]),
        n_events,
        start,
        days * SECONDS_PER_DAY,
        drift_origin=start,
        drift_period_days=2.0 * days,
        session_prefix="s",
        progress=progress,
    )
    metadata = _metadata(world, seed, n_events, start, start + pd.Timedelta(days=days))
    return Batch.from_frames(events, world.items, source=f"generate:seed={seed}", metadata=metadata)


def generate_window(
    start: str | pd.Timestamp,
    end: str | pd.Timestamp,
    events_per_day: int,
    seed: int = 0,
    n_users: int | None = None,
    n_items: int | None = None,
    drift_origin: str | pd.Timestamp = "2026-01-01",
    drift_period_days: float = 60.0,
    behaviour: Behaviour = Behaviour(),
) -> Batch:
    """The events of ``[start, end)`` (a day, an hour) from the shop of ``seed``.

    For scheduled pipelines: every window of the same seed shares the catalog and
    users (sized for a month of ``events_per_day`` unless given), popularity drifts
    on one clock from ``drift_origin``, and the window's events are seeded by the
    window itself, so re-running a window reproduces it exactly. The number of
    events follows the hour-of-day traffic curve (a whole day gets ``events_per_day``).
    """
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError(f"empty window: end {end} is not after start {start}")
    window_s = (end - start).total_seconds()
    n_events = int(round(events_per_day * _traffic(start, window_s).sum() / HOURLY_TRAFFIC.sum()))
    default_users, default_items = default_sizes(events_per_day * 30)
    world = _World.build(n_users or default_users, n_items or default_items, seed, behaviour)
    window_key = [seed, 2, int(start.timestamp()), int(end.timestamp())]
    events = _simulate(
        world,
        np.random.default_rng(window_key),
        n_events,
        start,
        window_s,
        drift_origin=_utc(drift_origin),
        drift_period_days=drift_period_days,
        session_prefix=f"s{start:%Y%m%d%H%M}-",
    )
    metadata = _metadata(world, seed, n_events, start, end)
    return Batch.from_frames(events, world.items, source=f"generate:seed={seed}", metadata=metadata)


def write_generated(batch: Batch, out_dir: str | Path) -> dict[str, Path]:
    """Write ``out_dir/events.parquet`` and ``out_dir/items.parquet`` (canonical columns)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"events": out_dir / "events.parquet", "items": out_dir / "items.parquet"}
    pq.write_table(pa.Table.from_pandas(batch.events, schema=EVENT_ARROW_SCHEMA, preserve_index=False), paths["events"])
    pq.write_table(pa.Table.from_pandas(batch.items, schema=ITEM_ARROW_SCHEMA, preserve_index=False), paths["items"])
    return paths


@dataclass(frozen=True)
class Tastes:
    """The latent tastes of a generated shop's users, and what its items are (``simulator.customers``)."""

    user_ids: np.ndarray
    user_category: np.ndarray  # per user: their category index
    user_brand: np.ndarray  # per user: their favourite brand index
    item_ids: np.ndarray
    item_category: np.ndarray
    item_brand: np.ndarray
    next_items: np.ndarray  # (n_items, 3): where a session often goes on from an item


def tastes_of(metadata: dict) -> Tastes:
    """The tastes of the world a batch was generated from (its ``metadata``: seed and sizes)."""
    world = _World.build(int(metadata["n_users"]), int(metadata["n_items"]), int(metadata["seed"]),
                         Behaviour(**metadata.get("behaviour", {})))
    return Tastes(world.user_ids, world.user_category, world.user_brand, world.item_ids, world.category, world.brand,
                  world.next_items)


# --- the world: catalog and users -------------------------------------------------


@dataclass
class _World:
    items: pd.DataFrame
    item_ids: np.ndarray  # object array of id strings
    user_ids: np.ndarray
    category: np.ndarray  # per item: category index
    brand: np.ndarray  # per item: global brand index
    price: np.ndarray
    available: np.ndarray
    log_popularity: np.ndarray
    drift_amplitude: np.ndarray
    drift_phase: np.ndarray
    next_items: np.ndarray  # (n_items, 3)
    user_category: np.ndarray
    user_brand: np.ndarray
    user_activity_cdf: np.ndarray
    behaviour: Behaviour

    @classmethod
    def build(cls, n_users: int, n_items: int, seed: int, behaviour: Behaviour) -> "_World":
        if n_users < 1 or n_items < len(CATEGORIES):
            raise ValueError(f"need n_users >= 1 and n_items >= {len(CATEGORIES)}, got {n_users}, {n_items}")
        rng = np.random.default_rng([seed, 0])
        n_cat = len(CATEGORIES)
        brands_per_cat = len(CATEGORIES[0].brands)
        category_weight = rng.dirichlet(np.full(n_cat, 4.0))
        category = rng.choice(n_cat, size=n_items, p=category_weight)
        category[:n_cat] = np.arange(n_cat)  # every category has items
        brand = category * brands_per_cat + rng.integers(brands_per_cat, size=n_items)
        median = np.array([c.median_price for c in CATEGORIES])[category]
        price = np.maximum(np.floor(median * rng.lognormal(0.0, 0.45, n_items)), 0.0) + 0.99
        available = rng.random(n_items) >= behaviour.unavailable_ratio
        log_popularity = rng.normal(0.0, behaviour.popularity_spread, n_items)
        # most items drift gently, a few trend strongly up or down
        drift_amplitude = behaviour.drift * np.abs(rng.normal(0.0, 1.0, n_items)) * np.where(
            rng.random(n_items) < 0.05, 2.5, 1.0
        )
        drift_phase = rng.uniform(0.0, 2 * np.pi, n_items)
        next_items = _next_items(rng, category, log_popularity)
        user_category = rng.choice(n_cat, size=n_users, p=category_weight)
        user_brand = user_category * brands_per_cat + rng.integers(brands_per_cat, size=n_users)
        activity = rng.lognormal(0.0, 1.0, n_users)
        item_ids = _ids("i", n_items)
        items = catalog_frame(rng, item_ids, category, brand, price, available)
        return cls(
            items, item_ids, _ids("u", n_users), category, brand, price, available, log_popularity,
            drift_amplitude, drift_phase, next_items, user_category, user_brand,
            np.cumsum(activity) / activity.sum(), behaviour,
        )


def _next_items(rng: np.random.Generator, category: np.ndarray, log_popularity: np.ndarray) -> np.ndarray:
    """Per item, 3 next items: 2 from its category, 1 from a complementary one (popular ones likelier)."""
    n_items = len(category)
    sampler = _SegmentSampler(np.argsort(category, kind="stable"), np.exp(0.5 * log_popularity))
    bounds = np.searchsorted(category[sampler.order], np.arange(len(CATEGORIES) + 1))
    names = [c.name for c in CATEGORIES]
    complements = [tuple(names.index(n) for n in c.complements) for c in CATEGORIES]
    complement = per_category_choice(complements, category, rng.random(n_items))
    target = np.stack([category, category, complement.astype(np.int64)], axis=1)
    flat = target.ravel()
    drawn = sampler.draw(0, bounds[flat], bounds[flat + 1], rng.random(flat.size)).reshape(n_items, 3)
    # an item is not its own next item: take its neighbour in the category instead
    position = np.empty(n_items, dtype=np.int64)
    position[sampler.order] = np.arange(n_items)
    selfish = drawn == np.arange(n_items)[:, None]
    rows = np.nonzero(selfish)[0]
    lo, hi = bounds[category[rows]], bounds[category[rows] + 1]
    neighbour = lo + (position[rows] - lo + 1) % (hi - lo)
    drawn[selfish] = sampler.order[neighbour]
    return drawn


def _ids(prefix: str, n: int) -> np.ndarray:
    """prefix + zero-padded index, e.g. i00042; sorts like the index."""
    digits = pc.cast(pa.array(np.arange(n)), pa.string())
    padded = pc.utf8_lpad(digits, width=len(str(max(n - 1, 0))), padding="0")
    return pc.binary_join_element_wise(prefix, padded, "").to_numpy(zero_copy_only=False)


# --- sampling -------------------------------------------------------------------------


class _SegmentSampler:
    """Weighted draws restricted to a contiguous run ``order[lo:hi]`` of one weight row.

    ``weights`` is (rows, n) or (n,), given per item; ``order`` sorts items so that
    each group (a category, a brand) is contiguous. One flat cumulative sum over all
    rows lets a single searchsorted serve draws from different rows and groups.
    """

    def __init__(self, order: np.ndarray, weights: np.ndarray):
        self.order = order
        self.n = len(order)
        rows = np.atleast_2d(weights)[:, order]
        self.rows = len(rows)
        self.cum = np.concatenate([[0.0], np.cumsum(rows.ravel())])

    def draw(self, row, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
        base = np.asarray(row) * self.n
        a, b = self.cum[base + lo], self.cum[base + hi]
        pos = np.searchsorted(self.cum, a + u * (b - a), side="right") - 1
        return self.order[np.clip(pos, base + lo, base + hi - 1) - base]


@dataclass
class _Chunk:
    """Events of a set of sessions, views first, then carts, then purchases (causal order)."""

    session: np.ndarray
    user: np.ndarray  # per session
    item: np.ndarray
    kind: np.ndarray
    offset_s: np.ndarray  # seconds after the window start
    quantity: np.ndarray


def _simulate(
    world: _World,
    rng: np.random.Generator,
    n_events: int,
    start: pd.Timestamp,
    window_s: float,
    drift_origin: pd.Timestamp,
    drift_period_days: float,
    session_prefix: str,
    progress: bool = False,
) -> pd.DataFrame:
    """Exactly n_events events in [start, start + window_s), as a frame of canonical columns."""
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    drifted = _drifted_sampler(world, start, window_s, drift_origin, drift_period_days)
    brand_sampler = _SegmentSampler(np.argsort(world.brand, kind="stable"), np.exp(world.log_popularity))
    traffic = _traffic(start, window_s)
    chunks: list[_Chunk] = []
    produced, n_sessions = 0, 0
    events_per_session = world.behaviour.mean_session_views * 1.2
    while produced < n_events:
        missing = n_events - produced
        wanted = int(missing / events_per_session * 1.05 + 3 * np.sqrt(missing) + 1)
        chunk = _sessions(world, rng, wanted, window_s, traffic, drifted, brand_sampler, progress)
        chunk.session += n_sessions
        chunks.append(chunk)
        n_sessions += wanted
        produced += len(chunk.item)
        events_per_session = max(1.0, len(chunk.item) / wanted)
    chunk = _concat(chunks)
    keep = _exactly(rng, chunk, n_sessions, n_events)
    return _frame(world, chunk, keep, start, session_prefix)


def _drifted_sampler(world, start, window_s, origin, period_days) -> _SegmentSampler:
    """Item popularity per time bucket of the window (about one bucket a day)."""
    n_buckets = int(np.clip(np.ceil(window_s / SECONDS_PER_DAY), 1, 64))
    bucket_mid_s = (start - origin).total_seconds() + (np.arange(n_buckets) + 0.5) * window_s / n_buckets
    mid_days = bucket_mid_s / SECONDS_PER_DAY
    wave = np.sin(2 * np.pi * mid_days[:, None] / period_days + world.drift_phase[None, :])
    weights = np.exp(world.log_popularity[None, :] + world.drift_amplitude[None, :] * wave)
    return _SegmentSampler(np.argsort(world.category, kind="stable"), weights)


def _sessions(world, rng, n_sessions, window_s, traffic, drifted, brand_sampler, progress) -> _Chunk:
    b = world.behaviour
    user = np.searchsorted(world.user_activity_cdf, rng.random(n_sessions), side="right")
    user = np.minimum(user, len(world.user_ids) - 1)
    length = np.minimum(rng.geometric(1.0 / b.mean_session_views, n_sessions), b.max_session_views)
    by_length = np.argsort(-length, kind="stable")  # active sessions at step t are a prefix
    user, length = user[by_length], length[by_length]
    start_s = _session_starts(rng, n_sessions, window_s, traffic)
    bucket = np.minimum((start_s / window_s * drifted.rows).astype(np.int64), drifted.rows - 1)
    first_view = np.concatenate([[0], np.cumsum(length)[:-1]])
    item = np.empty(int(length.sum()), dtype=np.int64)
    fresh = _FreshDraw(world, rng, user, bucket, drifted, brand_sampler)
    current = fresh(np.arange(n_sessions))
    item[first_view] = current
    for step in tqdm(range(1, int(length.max(initial=1))), desc="session steps", disable=not progress):
        active = int(np.count_nonzero(length > step))
        slot = np.searchsorted(np.cumsum(NEXT_SLOT_WEIGHTS), rng.random(active), side="right")
        nxt = world.next_items[current[:active], np.minimum(slot, 2)]
        wander = np.flatnonzero(rng.random(active) >= b.follow_next_item)
        nxt[wander] = fresh(wander)
        current[:active] = nxt
        item[first_view[:active] + step] = nxt
    return _funnel(world, rng, user, length, first_view, item, start_s, window_s)


class _FreshDraw:
    """A view not led by the previous item: from the user's taste or the (drifting) shop at large."""

    def __init__(self, world, rng, user, bucket, drifted: _SegmentSampler, brand_sampler: _SegmentSampler):
        self.world, self.rng, self.user, self.bucket = world, rng, user, bucket
        self.drifted, self.brand_sampler = drifted, brand_sampler
        order = drifted.order
        self.cat_bounds = np.searchsorted(world.category[order], np.arange(len(CATEGORIES) + 1))
        n_brands = len(CATEGORIES) * len(CATEGORIES[0].brands)
        self.brand_bounds = np.searchsorted(world.brand[brand_sampler.order], np.arange(n_brands + 1))

    def __call__(self, sessions: np.ndarray) -> np.ndarray:
        b, n = self.world.behaviour, len(sessions)
        users = self.user[sessions]
        mode, u = self.rng.random(n), self.rng.random(n)
        lo, hi = np.zeros(n, np.int64), np.full(n, self.drifted.n, np.int64)
        taste = mode < b.from_taste_category
        cat = self.world.user_category[users[taste]]
        lo[taste], hi[taste] = self.cat_bounds[cat], self.cat_bounds[cat + 1]
        drawn = self.drifted.draw(self.bucket[sessions], lo, hi, u)
        brand_mode = (mode >= b.from_taste_category) & (mode < b.from_taste_category + b.from_favourite_brand)
        brand = self.world.user_brand[users]
        b_lo, b_hi = self.brand_bounds[brand], self.brand_bounds[brand + 1]
        by_brand = brand_mode & (b_hi > b_lo)  # a small catalog may lack the brand
        drawn[by_brand] = self.brand_sampler.draw(0, b_lo[by_brand], b_hi[by_brand], u[by_brand])
        return drawn


def _funnel(world, rng, user, length, first_view, item, start_s, window_s) -> _Chunk:
    """Carts and purchases for the views, and every event's time."""
    b = world.behaviour
    n_sessions, n_views = len(length), len(item)
    view_session = np.repeat(np.arange(n_sessions), length)
    gap = 5.0 + rng.exponential(40.0, n_views)
    gap[first_view] = 0.0
    view_offset = np.cumsum(gap)
    view_offset -= np.repeat(view_offset[first_view], length)
    likes = world.category[item] == world.user_category[user[view_session]]
    p_cart = (b.add_to_cart + b.add_to_cart_taste_bonus * likes) * world.available[item]
    cart = np.flatnonzero(rng.random(n_views) < p_cart)
    cart_offset = view_offset[cart] + 2.0 + rng.exponential(20.0, cart.size)
    bought = rng.random(cart.size) < b.purchase
    buy = cart[bought]
    buy_offset = cart_offset[bought] + 5.0 + rng.exponential(90.0, buy.size)
    span = view_offset[first_view + length - 1].copy()
    np.maximum.at(span, view_session[cart], cart_offset)
    np.maximum.at(span, view_session[buy], buy_offset)
    # sessions end inside the window: late starters begin a little earlier
    start_s = np.maximum(np.minimum(start_s, window_s - span - 1e-3), 0.0)
    views = np.arange(n_views)
    source_view = np.concatenate([views, cart, buy])
    session = view_session[source_view]
    offset = np.minimum(start_s[session] + np.concatenate([view_offset, cart_offset, buy_offset]), window_s - 1e-3)
    kind = np.concatenate([np.full(n_views, VIEW), np.full(cart.size, CART), np.full(buy.size, PURCHASE)])
    quantity = np.ones(len(kind), dtype=np.int64)
    quantity[kind == PURCHASE] += rng.poisson(0.15, buy.size)
    return _Chunk(session, user, item[source_view], kind.astype(np.int8), offset, quantity)


def _session_starts(rng, n: int, window_s: float, traffic: np.ndarray) -> np.ndarray:
    """Start times (seconds into the window) following the hour-of-day traffic curve."""
    slice_start = np.arange(len(traffic)) * 3600.0
    slice_length = np.minimum(3600.0, window_s - slice_start)
    cdf = np.cumsum(traffic) / traffic.sum()
    hour = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(traffic) - 1)
    return np.minimum(slice_start[hour] + rng.random(n) * slice_length[hour], window_s - 1e-3)


def _traffic(start: pd.Timestamp, window_s: float) -> np.ndarray:
    """Traffic weight of each hour-long slice of the window (the last one may be partial)."""
    n_slices = int(np.ceil(window_s / 3600.0))
    hours = (start.hour + start.minute / 60 + np.arange(n_slices)).astype(int) % 24
    lengths = np.minimum(3600.0, window_s - np.arange(n_slices) * 3600.0) / 3600.0
    return HOURLY_TRAFFIC[hours] * lengths


def _concat(chunks: list[_Chunk]) -> _Chunk:
    if len(chunks) == 1:
        return chunks[0]  # the usual case; no copy of a 10M-event chunk
    if not chunks:
        return _Chunk(*(np.zeros(0, np.int64),) * 6)
    users = np.concatenate([c.user for c in chunks])
    merged = {
        name: np.concatenate([getattr(c, name) for c in chunks])
        for name in ("session", "item", "kind", "offset_s", "quantity")
    }
    return _Chunk(user=users, **merged)


def _exactly(rng, chunk: _Chunk, n_sessions: int, n_events: int) -> np.ndarray:
    """Indices of exactly n_events events: whole sessions in random order, then the
    time-ordered beginning of one more session (a prefix keeps view -> cart -> purchase intact)."""
    per_session = np.bincount(chunk.session, minlength=n_sessions)
    shuffled = rng.permutation(n_sessions)
    total = np.cumsum(per_session[shuffled])
    n_whole = int(np.searchsorted(total, n_events, side="right"))
    chosen = np.zeros(n_sessions, dtype=bool)
    chosen[shuffled[:n_whole]] = True
    keep = np.flatnonzero(chosen[chunk.session])
    missing = n_events - len(keep)
    if missing:
        partial = np.flatnonzero(chunk.session == shuffled[n_whole])
        partial = partial[np.argsort(chunk.offset_s[partial], kind="stable")][:missing]
        keep = np.concatenate([keep, partial])
    return keep


def _frame(world: _World, chunk: _Chunk, keep: np.ndarray, start: pd.Timestamp, session_prefix: str) -> pd.DataFrame:
    keep = np.sort(keep)  # causal order, so the stable time sort breaks ties causally
    keep = keep[np.argsort(chunk.offset_s[keep], kind="stable")]
    session = chunk.session[keep]
    # number sessions by their first event, so ids read in time order
    first = np.full(len(chunk.user), len(keep), dtype=np.int64)
    first[session[::-1]] = np.arange(len(keep) - 1, -1, -1)  # the last write wins: the first event
    used = np.flatnonzero(first < len(keep))
    rank = np.zeros(len(chunk.user), dtype=np.int64)
    rank[used[np.argsort(first[used], kind="stable")]] = np.arange(len(used))
    session_code = rank[session]
    session_ids = _ids(session_prefix, len(used))
    item = chunk.item[keep]
    timestamp = start.value + np.round(chunk.offset_s[keep] * 1e3).astype(np.int64) * 1_000_000
    return pd.DataFrame(
        {
            "user_id": world.user_ids[chunk.user[session]],
            "item_id": world.item_ids[item],
            "event_type": EVENT_TYPES[chunk.kind[keep]],
            "timestamp": pd.DatetimeIndex(timestamp.astype("datetime64[ns]")).tz_localize("UTC"),
            "session_id": session_ids[session_code],
            "price": world.price[item],
            "quantity": chunk.quantity[keep],
        },
        copy=False,
    )


def _metadata(world: _World, seed: int, n_events: int, start: pd.Timestamp, end: pd.Timestamp) -> dict:
    return {
        "generator": "simulator.shop",
        "seed": seed,
        "n_events": n_events,
        "n_users": len(world.user_ids),
        "n_items": len(world.item_ids),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "behaviour": asdict(world.behaviour),
    }


def _utc(value: str | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
