"""Adaptive micro-batching of model calls across concurrent requests.

Request threads ``submit`` one input and wait; a single collector thread takes
whatever has queued up (at most ``max_batch``; with ``max_wait_s`` > 0 it also waits
that long for more once the first arrives) and makes one batched call. With the
default wait of 0 the batching adapts by itself: a lone request runs at once, and
requests that arrive while a call runs form the next batch, so the per-call
overhead is shared under load and no request ever waits for company. Results go
back to each caller in its own order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

I = TypeVar("I")
O = TypeVar("O")


class MicroBatcher(Generic[I, O]):
    def __init__(self, fn: Callable[[list[I]], list[O]], max_batch: int, max_wait_s: float):
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.SimpleQueue[tuple[I, Future]] = queue.SimpleQueue()
        self.batch_sizes: list[int] = []  # recent sizes, for /metrics-style inspection
        threading.Thread(target=self._run, name="micro-batcher", daemon=True).start()

    def submit(self, item: I) -> O:
        future: Future = Future()
        self._queue.put((item, future))
        return future.result()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        batch.append(self._queue.get(timeout=left))
                    except queue.Empty:
                        break
            self._call(batch)

    def _call(self, batch: list[tuple[I, Future]]) -> None:
        self.batch_sizes = (self.batch_sizes + [len(batch)])[-1000:]
        try:
            outputs = self._fn([item for item, _ in batch])
        except BaseException as exc:  # every waiting request learns of the failure
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), out in zip(batch, outputs):
            future.set_result(out)
