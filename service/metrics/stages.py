"""Stage recorders: the codec's decode/preprocess/encode, and a segmenter's forward passes and state."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.metrics.catalogue import (
    BATCH_PIXELS,
    BATCH_QUEUE,
    BATCH_SIZE,
    BLEND_DURATION,
    DEVICE_MEMORY,
    DEVICE_MEMORY_PEAK,
    IMAGE_PIXELS,
    INPUT_BYTES,
    INPUT_PIXELS,
    MODEL_READY,
    STAGE_DURATION,
    TILES,
    TILES_PER_FORWARD,
    TILES_PER_REQUEST,
)
from service.metrics.sinks import Sink, _record

logger = logging.getLogger("ray.serve")

# --- codec --------------------------------------------------------------------------------------


def _stage(model: str, stage: str, seconds: float, sink: Sink | None) -> None:
    _record(STAGE_DURATION, seconds, {"model": model, "stage": stage}, sink)


def record_prepared(prepared: Any, body_bytes: int, sink: Sink | None = None) -> None:
    """After ``prepare_image``: decode and preprocess times, the image's pixels and encoded size."""
    model = prepared.options.model
    for stage in ("decode", "preprocess"):
        if stage in prepared.timings_ms:
            _stage(model, stage, prepared.timings_ms[stage] / 1000, sink)
    height, width = prepared.geometry.original
    _record(INPUT_PIXELS, height * width, {"model": model}, sink)
    _record(IMAGE_PIXELS, height * width, {"model": model}, sink)
    _record(INPUT_BYTES, body_bytes, {"model": model}, sink)


def record_encoded(result: Any, sink: Sink | None = None) -> None:
    """After ``encode_result``: the encode time."""
    if "encode" in result.timings_ms:
        _stage(result.model, "encode", result.timings_ms["encode"] / 1000, sink)


# --- segmenter ----------------------------------------------------------------------------------


def _is_tile(item: Any) -> bool:
    return getattr(item, "is_tile", False)  # service.models.inference.TileInput (no torch import here)


def weights_digest(path: str | None) -> str:
    """The weights' digest label ("" for the null model or an unreadable file)."""
    if not path:
        return ""
    from service.config import file_digest

    try:
        return file_digest(Path(path))
    except OSError:
        return ""


class SegmenterMetrics:
    """A segmenter replica's metrics: per forward pass (``on_group``, given to ``Runner.on_group``),
    and its state (``update``: model-ready and memory gauges, after each batch and health check)."""

    def __init__(self, spec: Any, device: Any, weights: str | None, sink: Sink | None = None) -> None:
        self.model = spec.name
        self.device = str(device)
        self.sink = sink
        self.ready_tags = {
            "model": spec.name,
            "task": spec.task,
            "version": str(spec.version),
            "weights_digest": weights_digest(weights),
            "device": self.device,
        }
        self._updated_at = 0.0

    def on_group(
        self, items: Sequence[Any], queued_s: Sequence[float], forward_s: float, postprocess_s: float
    ) -> None:
        """One forward pass of ``items``: batch size and pixels, and each item's stage times (a tile's
        are its request's, observed once by ``tiled_request``)."""
        tags = {"model": self.model}
        _record(BATCH_SIZE, len(items), tags, self.sink)
        pixels = sum(int(it.pixels.shape[0]) * int(it.pixels.shape[1]) for it in items)
        _record(BATCH_PIXELS, pixels, tags, self.sink)
        tiles = sum(1 for it in items if _is_tile(it))
        if tiles:
            _record(TILES, tiles, tags, self.sink)
            _record(TILES_PER_FORWARD, tiles, tags, self.sink)
        for item, queued in zip(items, queued_s, strict=True):
            if _is_tile(item):
                continue
            _stage(self.model, "queue", max(queued, 0.0), self.sink)
            _stage(self.model, "forward", forward_s, self.sink)
            _stage(self.model, "postprocess", postprocess_s, self.sink)

    def tiled_request(self, tiles: int, timings_ms: dict[str, float], bands_s: Sequence[float]) -> None:
        """A tiled request done: its tiles, its stage times (queue: its first tile's wait; postprocess: its
        blending; no forward: its tiles' forwards are counted as tiles, see ``TILES``) and each band's
        blending time."""
        tags = {"model": self.model}
        _record(TILES_PER_REQUEST, tiles, tags, self.sink)
        for stage in ("queue", "postprocess"):
            _stage(self.model, stage, timings_ms[stage] / 1000, self.sink)
        for seconds in bands_s:
            _record(BLEND_DURATION, seconds, tags, self.sink)

    def after_batch(self, runner: Any, healthy: bool = True) -> None:
        """After each batch: ``update`` at most once a second (under load, batches come every few
        milliseconds and the gauges need not follow each one)."""
        now = time.monotonic()
        if not healthy or now - self._updated_at >= 1.0:
            self._updated_at = now
            self.update(runner, healthy)

    def queue_length(self, waiting: int) -> None:
        _record(BATCH_QUEUE, waiting, {"model": self.model}, self.sink)

    def update(self, runner: Any, healthy: bool = True) -> None:
        """Model-ready gauge and device memory (cheap: a few counters read from torch or the OS)."""
        _record(MODEL_READY, 1.0 if healthy else 0.0, self.ready_tags, self.sink)
        try:
            in_use, peak = runner.memory_bytes()
        except Exception:
            return
        tags = {"model": self.model, "device": self.device}
        _record(DEVICE_MEMORY, in_use, tags, self.sink)
        _record(DEVICE_MEMORY_PEAK, peak, tags, self.sink)

    def batch_failed(self, items: Sequence[Any], error: BaseException) -> None:
        """A forward pass raised: one error line naming every request id of the batch."""
        logger.error(
            "model %s failed on a batch of %d: %s: %s",
            self.model,
            len(items),
            type(error).__name__,
            error,
            extra={"model": self.model, "request_ids": [it.options.request_id for it in items]},
            exc_info=error,
        )
