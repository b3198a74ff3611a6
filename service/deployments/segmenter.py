"""Segmenter: one deployment per model; batches requests and runs them on the model's device."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ray import serve

from service import metrics
from service.config import ModelSpec
from service.errors import DeadlineExceeded, ModelFailure
from service.models.inference import configure_threads
from service.models.runners import build_runner
from service.types import PreparedImage, Segmentation


@serve.deployment
class Segmenter:
    def __init__(self, spec: ModelSpec, weights: str | None) -> None:
        self.spec = spec
        self.threads = configure_threads(spec.deployment)
        self.runner = build_runner(spec, Path(weights) if weights else None)
        self.runner.warm_up()
        self._batch.set_max_batch_size(spec.batching.max_batch_size)
        self._batch.set_batch_wait_timeout_s(spec.batching.batch_wait_timeout_s)
        self.broken: str | None = None
        self.metrics = metrics.SegmenterMetrics(spec, self.runner.device, weights)
        self.runner.on_group = self.metrics.on_group
        self.metrics.update(self.runner)

    async def segment(self, prepared: PreparedImage) -> Segmentation:
        result = await self._batch(prepared, time.perf_counter())
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def _batch(
        self, items: list[PreparedImage], queued_at: list[float]
    ) -> list[Segmentation | Exception]:
        # Work whose deadline already passed is dropped here, before it costs a forward pass.
        now = time.time()
        expired = [
            i for i, it in enumerate(items) if it.options.deadline is not None and it.options.deadline < now
        ]
        live = [i for i in range(len(items)) if i not in expired]
        results: list[Segmentation | Exception] = [
            DeadlineExceeded("the deadline passed while the request waited for the model")
        ] * len(items)
        if live:
            try:
                # The forward runs in a worker thread so the event loop keeps queueing the next batch.
                done = await asyncio.to_thread(
                    self.runner.run, [items[i] for i in live], [queued_at[i] for i in live]
                )
            except Exception as e:  # a model failure on valid input: report it, mark the replica
                self.broken = f"{type(e).__name__}: {e}"
                self.metrics.batch_failed([items[i] for i in live], e)
                failure = ModelFailure(f"model {self.spec.name!r} failed: {self.broken}")
                done = [failure] * len(live)
            for i, r in zip(live, done, strict=True):
                results[i] = r
            self.metrics.update(self.runner, healthy=self.broken is None)
        return results

    def ready(self) -> dict:
        return {"model": self.spec.name, "device": str(self.runner.device), "threads": self.threads}

    def check_health(self) -> None:
        self.metrics.update(self.runner, healthy=self.broken is None)  # periodic refresh of the gauges
        if self.broken is not None:
            raise RuntimeError(f"model {self.spec.name!r} is broken: {self.broken}")
