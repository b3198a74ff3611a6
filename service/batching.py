"""Dynamic batching for the segmenter: a batch is whatever queued while the model was busy.

Why not Ray Serve's ``@serve.batch``: in Ray 2.60 its loop forms a batch as soon as the first item
arrives (waiting at most ``batch_wait_timeout_s`` for more) and only then queues that batch behind
the one still running (``max_concurrent_batches``). Under load, items that pile up while a forward
pass runs are not gathered: each becomes its own batch of one, waiting its turn. We measured exactly
that: a mean batch size of 1.0 at 16 concurrent requests with ~0.5 s of queueing per request.

Here a batch is formed when a slot is free: everything queued by then, up to ``max_batch_size``
(optionally after waiting up to ``wait_s`` from the oldest item's arrival for the batch to fill).
A lone request at low load runs at once, alone; under load batches grow with the queue. Pure
asyncio, no Ray, so it is tested directly.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item]):
    item: Item
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[Item, Result]):
    """``await submit(item)`` returns ``handler(batch)[i]`` for the item's place ``i`` in its batch.

    ``handler`` gets a list and returns a list of the same length (an entry may be an exception
    instance, which is then raised to that item's caller). If ``handler`` raises, every item of the
    batch gets the exception. Items whose caller went away (cancelled future) are left out of a batch.
    """

    def __init__(
        self,
        handler: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
        max_batch_size: int,
        wait_s: float = 0.0,
        max_concurrent_batches: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_concurrent_batches < 1 or wait_s < 0:
            raise ValueError("max_batch_size and max_concurrent_batches must be >= 1, wait_s >= 0")
        self.handler = handler
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_concurrent_batches = max_concurrent_batches
        self._queue: collections.deque[_Pending[Item]] = collections.deque()
        self._arrival = asyncio.Event()
        self._slots: asyncio.Semaphore | None = None
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, item: Item) -> Result:
        self._ensure_loop()
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, future))
        self._arrival.set()
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    def _ensure_loop(self) -> None:
        # Started lazily, on the loop of the first caller (a Serve replica runs user code on its own
        # event loop, not the one __init__ ran on).
        if self._loop_task is None or self._loop_task.done():
            self._slots = asyncio.Semaphore(self.max_concurrent_batches)
            self._loop_task = asyncio.get_running_loop().create_task(self._form_batches())

    async def _form_batches(self) -> None:
        assert self._slots is not None
        while True:
            await self._slots.acquire()  # a batch is formed only when it can run at once
            batch = await self._next_batch()
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Pending[Item]]:
        while True:
            while not self._live_head():
                self._arrival.clear()
                await self._arrival.wait()
            if self.wait_s > 0:
                # Give the batch until the oldest item has waited wait_s to fill up.
                deadline = self._queue[0].arrived + self.wait_s
                while len(self._queue) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._arrival.clear()
                    try:
                        await asyncio.wait_for(self._arrival.wait(), left)
                    except TimeoutError:
                        break
            batch = []
            while self._queue and len(batch) < self.max_batch_size:
                pending = self._queue.popleft()
                if not pending.future.done():  # skip callers that were cancelled
                    batch.append(pending)
            if batch:
                return batch

    def _live_head(self) -> bool:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        return bool(self._queue)

    async def _run(self, batch: list[_Pending[Item]]) -> None:
        assert self._slots is not None
        try:
            results: Sequence[Any] = await self.handler([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch handler returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for pending in batch:
                pending.future.cancel()
            raise
        except Exception as e:
            results = [e] * len(batch)
        finally:
            self._slots.release()
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
