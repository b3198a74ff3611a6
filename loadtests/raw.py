"""The raw model: the segmenter's per-image work, timed without any serving around it.

"Raw" is what ``Segmenter`` does for a batch (``Runner.run``): stack the prepared inputs, normalize,
forward, and bring the outputs back to the original size with the argmax (or the panoptic
post-processing). Decoding and fitting to the input policy are done once beforehand: in the service
the codec does them, outside the segmenter. This module times it in one process; ``raw_phase.py``
runs it in several (layouts) and picks the best.
Torch is imported inside the functions, so a spawned process sets its threads before anything else.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.images import TestImage


@dataclass(frozen=True)
class RawConfig:
    repository: Path
    model: str
    images: tuple[TestImage, ...]
    batch_sizes: tuple[int, ...]
    threads: int = 1
    duration_s: float = 5.0
    """Timed loop per batch size (at least ``min_iterations`` batches)."""
    min_iterations: int = 3
    warmup_iterations: int = 2


def prepare(spec, images: tuple[TestImage, ...]) -> list:
    """Decode and fit every image to the model's input policy (the codec's part, done once)."""
    from service.imaging.decode import decode_image
    from service.imaging.geometry import fit_to_policy
    from service.types import PreparedImage, SegmentOptions

    items = []
    for image in images:
        pixels, geometry = fit_to_policy(decode_image(image.data, max_pixels=1 << 30), spec.input)
        items.append(PreparedImage(pixels, geometry, SegmentOptions(model=spec.name)))
    return items


def load_runner(config: RawConfig):
    """The model's runner, warmed up, on ``config.threads`` torch threads."""
    import torch

    from service.config import load_repository
    from service.models.runners import build_runner

    torch.set_num_threads(config.threads)
    repository = load_repository(config.repository)
    spec = repository.get(config.model)
    if spec is None:
        raise ValueError(f"model {config.model!r} is not in {config.repository}")
    runner = build_runner(spec, repository.weights_path(spec) if spec.weights else None)
    runner.warm_up()
    return runner


class _Batches:
    """Consecutive batches of ``b`` items, cycling through the prepared inputs."""

    def __init__(self, items: list, b: int) -> None:
        self.items, self.b, self.k = items, b, 0

    def next(self) -> list:
        batch = [self.items[(self.k + j) % len(self.items)] for j in range(self.b)]
        self.k += self.b
        return batch


def time_batch_size(runner, items: list, b: int, config: RawConfig, barrier: Any = None) -> dict[str, Any]:
    """``Runner.run`` at batch size ``b`` for ``config.duration_s`` (after the warm-up and the barrier)."""
    batches = _Batches(items, b)
    for _ in range(config.warmup_iterations):
        runner.run(batches.next(), [time.perf_counter()] * b)
    if barrier is not None:
        barrier.wait(timeout=600)
    times: list[float] = []
    forward: list[float] = []
    post: list[float] = []
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        out = runner.run(batches.next(), [t0] * b)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        forward.append(out[0].timings_ms["forward"])
        post.append(out[0].timings_ms["postprocess"])
        if t1 - started >= config.duration_s and len(times) >= config.min_iterations:
            break
    elapsed = time.perf_counter() - started
    return {
        "batch_size": b,
        "iterations": len(times),
        "images": len(times) * b,
        "elapsed_s": elapsed,
        "images_per_s": len(times) * b / elapsed,
        "batch_ms_mean": statistics.fmean(times) * 1000,
        "batch_ms_p50": statistics.median(times) * 1000,
        "ms_per_image": statistics.fmean(times) * 1000 / b,
        "forward_ms_mean": statistics.fmean(forward),
        "postprocess_ms_mean": statistics.fmean(post),
    }


def measure_in_process(config: RawConfig, barrier: Any = None) -> dict[str, Any]:
    """Time ``Runner.run`` at each batch size in this process; returns per-batch-size numbers."""
    import torch

    runner = load_runner(config)
    items = prepare(runner.spec, config.images)
    batches = {str(b): time_batch_size(runner, items, b, config, barrier) for b in config.batch_sizes}
    return {
        "model": config.model,
        "threads": torch.get_num_threads(),
        "device": str(runner.device),
        "input_shape": list(items[0].pixels.shape),
        "original_shape": list(items[0].geometry.original),
        "batches": batches,
    }
