"""One large image through a model's batcher: its tiles queue as ordinary items, a few at a time.

``ModelWorker.segment`` hands a tiled ``PreparedImage`` (the codec decided: ``wants_tiles``) to a
``TiledRequest``. It plans the grid and the column blocks (``service/imaging/tiling.py``), then per
block submits tiles in row order through the worker's batcher, never more than
``tile.tiles_per_request`` queued or running at once: every batch holds at most that many of its tiles,
and a small request of another client that queued meanwhile runs in the next forward (the runner also
runs groups holding whole images before groups of tiles only). Each tile's logits are blended as they
come back (``service/models/blending.py``) in a worker thread, while the next tiles run; the label map
is written band by band. A tile's error (deadline passed while queued, model failure) is the request's,
and the tiles still queued are withdrawn.

No Ray here; the same code runs in a fused ingress replica and in a split topology's segmenter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.config import ModelSpec
from service.imaging.geometry import pad_value
from service.imaging.tiling import blend_window, cut_tile, plan_tiling
from service.models.blending import RegionBlender
from service.models.inference import Runner, TileInput, TileLogits
from service.types import PreparedImage, Segmentation

Submit = Callable[[Any], Awaitable[Any]]


@dataclass
class TileStats:
    """What a tiled request's tiles cost, for its timings and metrics."""

    tiles: int = 0
    first_queue_s: float | None = None
    forwards: dict[float, float] = field(default_factory=dict)  # forward start -> its duration
    largest_forward: int = 0
    blend_s: float = 0.0
    bands_s: list[float] = field(default_factory=list)

    def add(self, result: TileLogits, bands: list[float], blend_s: float) -> None:
        self.tiles += 1
        if self.first_queue_s is None:
            self.first_queue_s = result.queue_s
        self.forwards[result.started] = result.forward_s
        self.largest_forward = max(self.largest_forward, result.batch_size)
        self.blend_s += blend_s
        self.bands_s += bands


class TiledRequest:
    def __init__(self, spec: ModelSpec, runner: Runner, prepared: PreparedImage, metrics: Any = None) -> None:
        tile = spec.input.tile
        assert tile is not None and prepared.tiled, "a tiled request needs a tile policy and a tiled input"
        self.spec, self.tile, self.runner, self.prepared, self.metrics = spec, tile, runner, prepared, metrics
        geometry = prepared.geometry
        self.plan = plan_tiling(geometry.original, geometry.scaled, spec.input, spec.num_classes)
        self.grid = self.plan.grid
        self.window = blend_window(*self.grid.tile, tile.blend, tile.sigma)
        self.fill = pad_value(spec.input)
        self.stats = TileStats()

    async def run(self, submit: Submit) -> Segmentation:
        started = time.perf_counter()
        labels = np.empty(self.grid.original, self.runner.label_dtype)
        for region in self.plan.regions:
            channels, device = self.spec.num_classes, self.runner.device
            blender = RegionBlender(self.plan, region, channels, labels, self.window, device)
            await self._blend_region(blender, submit)
        return self._segmentation(labels, time.perf_counter() - started)

    async def _blend_region(self, blender: RegionBlender, submit: Submit) -> None:
        order = [(i, j) for i in range(len(self.grid.ys)) for j in blender.region.cols]
        quota = self.tile.tiles_per_request
        pending: set[asyncio.Future] = set()
        k = 0
        try:
            while k < len(order) or pending:
                while k < len(order) and len(pending) < quota and blender.admits(order[k][0]):
                    pending.add(asyncio.ensure_future(submit(self._tile(*order[k]))))
                    k += 1
                if not pending:  # cannot happen: a row waits only for tiles still pending
                    raise RuntimeError(f"tiling stalled at tile {order[k]}")
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                errors = [f.exception() for f in done if f.exception() is not None]
                if errors:
                    raise errors[0]  # a tile's error is the request's (the others are the same kind)
                for future in done:
                    result: TileLogits = future.result()
                    t0 = time.perf_counter()
                    bands = await asyncio.to_thread(blender.add, *result.index, result.logits)
                    self.stats.add(result, bands, time.perf_counter() - t0)
        finally:
            for future in pending:
                future.cancel()  # queued tiles leave the batcher; a running forward finishes unused

    def _tile(self, i: int, j: int) -> TileInput:
        grid = self.grid
        pixels = cut_tile(self.prepared.pixels, grid.ys[i], grid.xs[j], *grid.tile, self.fill)
        return TileInput(pixels, self.prepared.options, (i, j))

    def _segmentation(self, labels: np.ndarray, wall_s: float) -> Segmentation:
        stats = self.stats
        timings = {
            **self.prepared.timings_ms,
            "queue": (stats.first_queue_s or 0.0) * 1000,
            "forward": sum(stats.forwards.values()) * 1000,
            "postprocess": stats.blend_s * 1000,
            "tiles": wall_s * 1000,
        }
        if self.metrics is not None:
            self.metrics.tiled_request(stats.tiles, timings, stats.bands_s)
        return Segmentation(
            labels=labels,
            options=self.prepared.options,
            original=self.prepared.original,
            timings_ms=timings,
            batch_size=stats.largest_forward,
        )
