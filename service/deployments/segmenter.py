"""Segmenter: one deployment per model; batches requests and runs them on the model's device.

In the fused topology the replica also decodes and encodes (``segment_image``), with the same
``CodecStage`` the split topology's ``ImageCodec`` deployment runs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ray import serve

from service import metrics
from service.batching import DynamicBatcher
from service.config import ModelSpec
from service.deployments.codec import CodecStage
from service.errors import DeadlineExceeded, ModelFailure
from service.models.inference import configure_threads
from service.models.runners import build_runner
from service.types import PreparedImage, Segmentation, SegmentOptions, SegmentResult


@serve.deployment
class Segmenter:
    def __init__(self, spec: ModelSpec, weights: str | None, codec: CodecStage | None = None) -> None:
        self.spec = spec
        self.codec = codec
        self.threads = configure_threads(spec.deployment)
        self.runner = build_runner(spec, Path(weights) if weights else None)
        self.runner.warm_up()
        b = spec.batching
        self.batcher = DynamicBatcher(
            self._run_batch, b.max_batch_size, b.batch_wait_timeout_s, b.max_concurrent_batches
        )
        self.broken: str | None = None
        self.metrics = metrics.SegmenterMetrics(spec, self.runner.device, weights)
        self.runner.on_group = self.metrics.on_group
        self.metrics.update(self.runner)

    async def segment(self, prepared: PreparedImage) -> Segmentation:
        return await self.batcher.submit((prepared, time.perf_counter()))

    async def segment_image(
        self, body: bytes, content_type: str | None, options: SegmentOptions
    ) -> SegmentResult:
        """Fused topology: bytes in, encoded answer out, in one replica (one hop from the ingress)."""
        if self.codec is None:
            raise RuntimeError("segment_image needs the fused topology (this replica has no codec)")
        # Decode and encode in worker threads (Pillow, numpy and zlib release the GIL), so the event
        # loop keeps forming batches while they run.
        prepared = await asyncio.to_thread(self.codec.prepare, body, content_type, options)
        segmentation = await self.segment(prepared)
        return await asyncio.to_thread(self.codec.encode, segmentation)

    async def _run_batch(self, queued: list[tuple[PreparedImage, float]]) -> list[Segmentation | Exception]:
        """One batch: (prepared image, time it was queued) pairs in, one result or error per item out."""
        items = [item for item, _ in queued]
        queued_at = [t for _, t in queued]
        self.metrics.queue_length(self.batcher.queued())
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
        self.metrics.queue_length(self.batcher.queued())
        if self.broken is not None:
            raise RuntimeError(f"model {self.spec.name!r} is broken: {self.broken}")
