"""Adaptive batching of the shared step of concurrent requests, on the event loop.

Request coroutines ``submit`` one input and await its output. One batch runs at a time,
on the event loop itself: before each batch the drain task yields once, so every request
that has arrived by then joins it (at most ``max_batch``). A lone request runs at once;
under load the step's fixed cost (an online-store round trip, a model call) is shared
and no request waits for company. ``max_wait_s`` > 0 also waits that long for more.

Why not a worker thread: handing the GIL back and forth between the loop and a thread
per batch cost more than overlapping the I/O gained (2 workers, concurrency 8: about
600 against 750 requests/s, benchmarks/service_load.py). Each caller gets its own
output; an error reaches every caller of that batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

I = TypeVar("I")
O = TypeVar("O")


class AsyncBatcher(Generic[I, O]):
    def __init__(self, fn: Callable[[list[I]], list[O]], max_batch: int, max_wait_s: float = 0.0,
                 on_batch: Callable[[int], None] | None = None):
        self._fn = fn
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch  # told each batch's size (the service: a Prometheus histogram)
        self._pending: deque[tuple[I, asyncio.Future]] = deque()
        self._draining = False

    async def submit(self, item: I) -> O:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((item, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(self.max_wait_s)  # 0: one turn of the loop for requests already in
                batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
                self._run([(item, future) for item, future in batch if not future.cancelled()])  # client gone
        finally:
            self._draining = False

    def _run(self, batch: list[tuple[I, asyncio.Future]]) -> None:
        if not batch:
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            outputs = self._fn([item for item, _ in batch])
        except Exception as exc:  # every waiting request learns of the failure
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), output in zip(batch, outputs):
            future.set_result(output)
