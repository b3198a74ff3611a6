"""One model in one process: its runner, its batcher, its metrics and (fused topology) its codec work.

No Ray here. The ``Segmenter`` deployment (split topology) and the ``Ingress`` deployment (fused
topology, where every ingress replica runs the models itself) are thin shells around these classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service import metrics
from service.batching import DynamicBatcher
from service.codec import CodecStage
from service.config import Limits, ModelSpec
from service.cores import CoreShare
from service.errors import DeadlineExceeded, ModelFailure, Overloaded
from service.models.runners import build_runner
from service.tiled import TiledRequest
from service.types import ImageInput, PreparedImage, Segmentation, SegmentOptions, SegmentResult


class ModelWorker:
    """Batches one model's requests and runs them on its device; with a codec, also decodes and encodes."""

    def __init__(
        self,
        spec: ModelSpec,
        weights: Path | None,
        codec: CodecStage | None = None,
        cores: CoreShare | None = None,
    ) -> None:
        self.spec = spec
        self.codec = codec
        self.runner = build_runner(spec, weights)
        self.runner.warm_up()
        # Every model's requests mark the replica busy; a CPU model that asks to borrow idle cores does
        # when its forward is long enough to gain from more threads (``service/cores.py``).
        self.cores = cores
        asks = spec.deployment.borrow_idle_cores and self.runner.device.type == "cpu"
        self.borrows = cores is not None and asks and cores.pays_for(self._timed_forward_ms())
        b = spec.batching
        self.batcher = DynamicBatcher(
            self._run_batch, b.max_batch_size, b.batch_wait_timeout_s, b.max_concurrent_batches
        )
        self.broken: str | None = None
        # Admission bound of the fused topology (the split one's segmenter replicas get it from Ray
        # Serve's max_ongoing_requests / max_queued_requests): -1 queues without bound.
        d = spec.deployment
        self.capacity = d.max_ongoing_requests + d.max_queued_requests if d.max_queued_requests >= 0 else None
        self.admitted = 0
        self.metrics = metrics.SegmenterMetrics(spec, self.runner.device, str(weights) if weights else None)
        self.runner.on_group = self.metrics.on_group
        self.metrics.update(self.runner)

    async def segment(self, prepared: PreparedImage) -> Segmentation:
        if prepared.tiled:
            # A large image: its tiles go through the same batcher, a few at a time (tile.tiles_per_request).
            return await TiledRequest(self.spec, self.runner, prepared, self.metrics).run(self._submit)
        return await self._submit(prepared)

    async def _submit(self, item: Any) -> Any:
        return await self.batcher.submit((item, time.perf_counter()))

    async def segment_image(
        self, body: ImageInput, content_type: str | None, options: SegmentOptions
    ) -> SegmentResult:
        """Bytes in, encoded answer out. Decode and encode run in worker threads (Pillow, numpy and zlib
        release the GIL), so the event loop keeps forming batches while they run."""
        if self.codec is None:
            raise RuntimeError("segment_image needs a codec (fused topology)")
        if self.capacity is not None and self.admitted >= self.capacity:
            raise Overloaded(f"model {self.spec.name!r} is at capacity; retry after a short wait")
        self.admitted += 1
        try:
            # The whole request, decoding and encoding too, marks this replica's cores as in use.
            with self.cores.busy() if self.cores is not None else contextlib.nullcontext():
                prepared = await asyncio.to_thread(self.codec.prepare, body, content_type, options, self.spec)
                segmentation = await self.segment(prepared)
                return await asyncio.to_thread(self.codec.encode, segmentation, self.spec)
        finally:
            self.admitted -= 1

    async def _run_batch(self, queued: list[tuple[Any, float]]) -> list[Any]:
        """One batch: (prepared image or tile, time it was queued) pairs in, one result or error per item
        out (a tile's result is its logits, ``TileLogits``)."""
        self.metrics.queue_length(self.batcher.queued())
        # Work whose deadline already passed is dropped here, before it costs a forward pass.
        now = time.time()
        live = [
            i for i, (it, _) in enumerate(queued) if it.options.deadline is None or it.options.deadline >= now
        ]
        results: list[Segmentation | Exception] = [
            DeadlineExceeded("the deadline passed while the request waited for the model")
        ] * len(queued)
        if not live:
            return results
        items = [queued[i][0] for i in live]
        try:
            # The forward runs in a worker thread so the event loop keeps queueing the next batch.
            done = await asyncio.to_thread(self._forward, items, [queued[i][1] for i in live])
        except Exception as e:  # a model failure on valid input: report it, mark the worker broken
            self.broken = f"{type(e).__name__}: {e}"
            self.metrics.batch_failed(items, e)
            done = [ModelFailure(f"model {self.spec.name!r} failed: {self.broken}")] * len(live)
        for i, r in zip(live, done, strict=True):
            results[i] = r
        self.metrics.after_batch(self.runner, healthy=self.broken is None)
        return results

    def _forward(self, items: list, queued_at: list[float]) -> list:
        if not self.borrows:
            return self.runner.run(items, queued_at)
        assert self.cores is not None
        return self.cores.run(self.runner.run, items, queued_at)

    def _timed_forward_ms(self) -> float:
        """One forward at the model's input size, on this replica's own threads, after its warm-up."""
        started = time.perf_counter()
        self.runner.warm_up()
        return (time.perf_counter() - started) * 1000

    def ready(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "device": str(self.runner.device),
            "borrows_idle_cores": self.borrows,
        }

    def check_health(self) -> None:
        """Refresh the gauges (Ray drops idle ones) and fail when the model is broken."""
        self.metrics.update(self.runner, healthy=self.broken is None)
        self.metrics.queue_length(self.batcher.queued())
        if self.broken is not None:
            raise RuntimeError(f"model {self.spec.name!r} is broken: {self.broken}")


class LocalModels:
    """The fused topology's models: every served model in this process, called without a hop."""

    def __init__(self, workers: Mapping[str, ModelWorker]) -> None:
        self.workers = dict(workers)

    @classmethod
    def load(
        cls,
        specs: Mapping[str, ModelSpec],
        weights: Mapping[str, Path | None],
        limits: Limits,
        cores: CoreShare | None = None,
    ):
        codec = CodecStage(limits)
        return cls({name: ModelWorker(spec, weights[name], codec, cores) for name, spec in specs.items()})

    async def segment(
        self, body: ImageInput, content_type: str | None, options: SegmentOptions, spec: ModelSpec
    ) -> SegmentResult:
        return await self.workers[spec.name].segment_image(body, content_type, options)

    async def ready(self) -> list[dict[str, Any]]:
        return [w.ready() for w in self.workers.values()]

    def check_health(self) -> None:
        for worker in self.workers.values():
            worker.check_health()
