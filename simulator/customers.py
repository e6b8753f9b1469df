"""Simulated customers: the synthetic shop's users, shopping through the running service.

Each session is one user of the generated world (``simulator.shop.tastes_of``: their
category and favourite brand) who asks ``/recommend`` for a list, looks at its first
``Reaction.look_at`` items and views each with a probability that grows with how well it
fits their tastes (``Reaction.click``) and, as the generator's sessions do, more often when it
is a "next item" of one they looked at last (``Reaction.follow_next``; their past events, when
given, and this session's views), adds a viewed item of their category to the cart and buys
some of those; the events go to ``/events`` naming the list's
``recommendation_id``, so the next list already knows them. A better model shows items
that fit better, so it gets more clicks: what an experiment between arms should find.

    python -m simulator.customers --url http://127.0.0.1:3000 --events 4000 --seed 0 --sessions 500
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from shoprec.config import load_settings
from simulator.shop import Tastes, default_sizes, tastes_of


@dataclass(frozen=True)
class Reaction:
    """How a customer reacts to a list."""

    look_at: int = 5  # the first items of a list they look at
    click: tuple[float, float, float] = (0.01, 0.15, 0.3)  # P(view): another category, their category, + their brand
    follow_next: float = 0.3  # + P(view) of a next item of one of their ``recent`` last items
    recent: int = 3
    add_to_cart: float = 0.3  # P(cart | view of an item of their category)
    purchase: float = 0.5  # P(purchase | cart)


@dataclass
class CustomerRun:
    """What the customers did."""

    sessions: int = 0
    lists: int = 0
    views: int = 0
    carts: int = 0
    purchases: int = 0
    errors: int = 0
    lists_by_arm: Counter = field(default_factory=Counter)
    views_by_arm: Counter = field(default_factory=Counter)

    def add(self, other: "CustomerRun") -> None:
        for name in ("sessions", "lists", "views", "carts", "purchases", "errors"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lists_by_arm.update(other.lists_by_arm)
        self.views_by_arm.update(other.views_by_arm)

    def to_dict(self) -> dict:
        return {**asdict(self), "lists_by_arm": dict(self.lists_by_arm), "views_by_arm": dict(self.views_by_arm)}


class Customers:
    def __init__(self, url: str, tastes: Tastes, read_token: str = "", write_token: str = "",
                 reaction: Reaction = Reaction(), seed: int = 0, k: int = 10,
                 history: dict[str, list[str]] | None = None):
        self.url = url.rstrip("/")
        self.tastes = tastes
        self.history = history or {}  # user -> their past items, oldest first (e.g. the generated events)
        self.tokens = {"/recommend": read_token, "/events": write_token}
        self.reaction = reaction
        self.seed = seed
        self.k = k
        self._item_index = {item: n for n, item in enumerate(tastes.item_ids)}
        self._runs = 0  # each run draws other users (and numbers its sessions on)
        self._sessions = 0

    def run(self, sessions: int, lists_per_session: int = 2, concurrency: int = 8) -> CustomerRun:
        """``sessions`` sessions of distinct users (drawn with the seed), ``concurrency`` at a time."""
        rng = np.random.default_rng([self.seed, 7, self._runs])
        users = rng.choice(len(self.tastes.user_ids), size=sessions, replace=sessions > len(self.tastes.user_ids))
        first, self._runs, self._sessions = self._sessions, self._runs + 1, self._sessions + sessions
        total = CustomerRun()
        with ThreadPoolExecutor(concurrency) as pool:
            for run in pool.map(lambda a: self.session(int(a[1]), lists_per_session, first + a[0]), enumerate(users)):
                total.add(run)
        return total

    def session(self, user: int, lists: int, number: int) -> CustomerRun:
        """One user's session: ask for a list, react to it, ``lists`` times."""
        rng = np.random.default_rng([self.seed, 11, number])
        run = CustomerRun(sessions=1)
        user_id = str(self.tastes.user_ids[user])
        recent = [self._item_index[i] for i in self.history.get(user_id, []) if i in self._item_index]
        for _ in range(lists):
            status, answer = self._post("/recommend", {"user_id": user_id, "k": self.k})
            if status != 200:
                run.errors += 1
                continue
            run.lists += 1
            run.lists_by_arm[answer["arm"]] += 1
            events = self.react(user, answer, rng, recent[-self.reaction.recent:])
            recent += [self._item_index[e["item_id"]] for e in events if e["event_type"] == "view"]
            run.views += sum(e["event_type"] == "view" for e in events)
            run.views_by_arm[answer["arm"]] += sum(e["event_type"] == "view" for e in events)
            run.carts += sum(e["event_type"] == "add_to_cart" for e in events)
            run.purchases += sum(e["event_type"] == "purchase" for e in events)
            if events and self._post("/events", {"events": events})[0] != 200:
                run.errors += 1
        return run

    def react(self, user: int, answer: dict, rng: np.random.Generator, recent: list[int] = ()) -> list[dict]:
        """The events of one user looking at one list (``recent``: the item indices they looked at
        last): views, then carts and purchases of some."""
        shown = [i["item_id"] for i in answer["items"][: self.reaction.look_at] if i["item_id"] in self._item_index]
        if not shown:
            return []
        index = np.array([self._item_index[i] for i in shown])
        in_category = self.tastes.item_category[index] == self.tastes.user_category[user]
        in_brand = self.tastes.item_brand[index] == self.tastes.user_brand[user]
        p_view = np.where(in_category & in_brand, self.reaction.click[2],
                          np.where(in_category, self.reaction.click[1], self.reaction.click[0]))
        follows = np.isin(index, self.tastes.next_items[list(recent)].ravel()) if len(recent) else False
        p_view = np.minimum(0.9, p_view + self.reaction.follow_next * follows)
        viewed = rng.random(len(index)) < p_view
        carted = viewed & in_category & (rng.random(len(index)) < self.reaction.add_to_cart)
        bought = carted & (rng.random(len(index)) < self.reaction.purchase)
        user_id, rid = str(self.tastes.user_ids[user]), answer["recommendation_id"]
        events = []
        for kind, mask in (("view", viewed), ("add_to_cart", carted), ("purchase", bought)):
            events += [{"user_id": user_id, "item_id": shown[n], "event_type": kind, "recommendation_id": rid}
                       for n in np.flatnonzero(mask)]
        return events

    def _post(self, path: str, body) -> tuple[int, dict | None]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        if self.tokens[path]:
            request.add_header("Authorization", f"Bearer {self.tokens[path]}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, None
        except OSError:
            return 0, None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    parser.add_argument("--events", type=int, required=True, help="n_events the shop was generated with")
    parser.add_argument("--seed", type=int, default=0, help="the shop's seed (and the customers')")
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--lists-per-session", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    n_users, n_items = default_sizes(args.events)
    tastes = tastes_of({"n_users": n_users, "n_items": n_items, "seed": args.seed})
    settings = load_settings()  # the tokens: SHOPREC_READ_TOKEN, SHOPREC_WRITE_TOKEN
    customers = Customers(args.url, tastes, settings.read_token, settings.write_token, seed=args.seed)
    print(json.dumps(customers.run(args.sessions, args.lists_per_session, args.concurrency).to_dict(), indent=2))


if __name__ == "__main__":
    main()
