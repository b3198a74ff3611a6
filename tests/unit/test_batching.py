"""DynamicBatcher: batches are what queued while the handler was busy; errors reach the right callers."""

from __future__ import annotations

import asyncio

import pytest

from service.batching import DynamicBatcher


class GatedHandler:
    """Records each batch; each call waits until the test opens the gate (or returns at once if open)."""

    def __init__(self, open_: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        if open_:
            self.gate.set()
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return [i * 10 for i in items]


async def until(predicate, timeout_s: float = 2.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


def test_a_lone_item_runs_at_once_in_a_batch_of_one():
    async def main():
        handler = GatedHandler(open_=True)
        batcher = DynamicBatcher(handler, max_batch_size=8)
        assert await batcher.submit(3) == 30
        assert handler.batches == [[3]]

    asyncio.run(main())


def test_items_queued_while_the_handler_is_busy_form_the_next_batch_up_to_the_maximum():
    async def main():
        handler = GatedHandler()
        batcher = DynamicBatcher(handler, max_batch_size=3)
        first = asyncio.create_task(batcher.submit(0))
        await until(lambda: handler.batches == [[0]])
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
        await until(lambda: batcher.queued() == 5)
        handler.gate.set()
        assert await first == 0
        assert await asyncio.gather(*rest) == [10, 20, 30, 40, 50]
        # Ray Serve 2.60's @serve.batch gives [[0], [1], [2], [3], [4], [5]] here (wait 0).
        assert handler.batches == [[0], [1, 2, 3], [4, 5]]

    asyncio.run(main())


def test_a_handler_exception_reaches_every_caller_of_its_batch_and_the_batcher_keeps_serving():
    async def main():
        calls = []

        async def handler(items):
            calls.append(list(items))
            if len(calls) == 1:
                raise ValueError("model broke")
            return items

        batcher = DynamicBatcher(handler, max_batch_size=4)
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        assert [type(r) for r in results] == [ValueError, ValueError]
        assert await batcher.submit(7) == 7

    asyncio.run(main())


def test_an_exception_instance_in_the_results_is_raised_to_that_caller_only():
    async def main():
        async def handler(items):
            return [KeyError(i) if i == 2 else i for i in items]

        batcher = DynamicBatcher(handler, max_batch_size=4)
        results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)), return_exceptions=True)
        assert results[0] == 1 and results[2] == 3
        assert isinstance(results[1], KeyError)

    asyncio.run(main())


def test_a_handler_returning_the_wrong_number_of_results_fails_the_whole_batch():
    async def main():
        async def handler(items):
            return items[:1]

        batcher = DynamicBatcher(handler, max_batch_size=4)
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "1 results for 2 items" in str(r) for r in results)

    asyncio.run(main())


def test_a_cancelled_caller_is_left_out_of_the_next_batch():
    async def main():
        handler = GatedHandler()
        batcher = DynamicBatcher(handler, max_batch_size=8)
        first = asyncio.create_task(batcher.submit(0))
        await until(lambda: len(handler.batches) == 1)
        gone = asyncio.create_task(batcher.submit(1))
        stays = asyncio.create_task(batcher.submit(2))
        await until(lambda: batcher.queued() == 2)
        gone.cancel()
        handler.gate.set()
        assert await first == 0 and await stays == 20
        assert handler.batches == [[0], [2]]
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(main())


def test_wait_s_lets_a_batch_fill_with_items_that_arrive_within_the_wait():
    async def main():
        handler = GatedHandler(open_=True)
        batcher = DynamicBatcher(handler, max_batch_size=8, wait_s=0.5)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)  # well inside the wait: joins the first item's batch
        second = asyncio.create_task(batcher.submit(2))
        assert await asyncio.gather(first, second) == [10, 20]
        assert handler.batches == [[1, 2]]

    asyncio.run(main())


def test_wait_s_ends_early_when_the_batch_is_full():
    async def main():
        handler = GatedHandler(open_=True)
        batcher = DynamicBatcher(handler, max_batch_size=2, wait_s=30)
        results = await asyncio.wait_for(asyncio.gather(batcher.submit(1), batcher.submit(2)), timeout=5)
        assert results == [10, 20] and handler.batches == [[1, 2]]

    asyncio.run(main())


def test_max_concurrent_batches_runs_that_many_batches_at_once_and_no_more():
    async def main():
        handler = GatedHandler()
        batcher = DynamicBatcher(handler, max_batch_size=1, max_concurrent_batches=2)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(4)]
        await until(lambda: len(handler.batches) == 2)
        await asyncio.sleep(0.05)
        assert handler.running == 2 and batcher.queued() == 2
        handler.gate.set()
        assert await asyncio.gather(*tasks) == [0, 10, 20, 30]
        assert handler.most_running == 2

    asyncio.run(main())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_batch_size": 1, "wait_s": -1},
        {"max_batch_size": 1, "max_concurrent_batches": 0},
    ],
)
def test_nonsense_settings_are_refused(kwargs):
    async def handler(items):
        return items

    with pytest.raises(ValueError):
        DynamicBatcher(handler, **kwargs)
