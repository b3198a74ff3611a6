"""Batched inference for one model on one device: the tensor work a segmenter replica does.

No Ray here: ``service.worker.ModelWorker`` feeds ``Runner.run`` from its batcher. A batch of
prepared images is grouped by input shape and split by a pixel budget; each group is normalized on
the device, run through the network (fp16/bf16 autocast and channels_last on CUDA) and brought back
to each image's original geometry before the argmax. Stage timings synchronize the device so GPU
numbers are honest.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from service.config import ModelSpec
from service.imaging.restore import restore_labels
from service.models.registry import normalize, select_output
from service.types import PreparedImage, Segmentation, SegmentOptions


def select_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def select_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def configure_threads(threads: int) -> int:
    """Torch intra-op threads for this process (Ray sets OMP_NUM_THREADS=1 in replicas)."""
    torch.set_num_threads(threads)
    return threads


@dataclass
class TileInput:
    """One tile of a tiled request (``service.worker``): a batch item beside ``PreparedImage``s. Its
    forward's logits come back as a ``TileLogits`` instead of being reduced to labels."""

    pixels: np.ndarray  # uint8 [th, tw, 3]
    options: SegmentOptions
    index: tuple[int, int]  # (tile row, tile column) in its request's grid
    is_tile: ClassVar[bool] = True  # what the metrics look at (they import no torch)


@dataclass
class TileLogits:
    """A tile's class scores ``[C, th, tw]`` on the model's device, and what its forward cost."""

    logits: torch.Tensor
    index: tuple[int, int]
    queue_s: float
    forward_s: float
    batch_size: int
    started: float  # when its forward started (perf_counter): tiles of one forward share it


Item = PreparedImage | TileInput


@dataclass
class GroupOutput:
    """Per-item outputs of one forward: label maps plus optional extras (panoptic)."""

    labels: list[np.ndarray]
    extras: list[dict]


class Runner:
    """Holds a network on its device and segments groups of prepared images."""

    def __init__(self, spec: ModelSpec, model: nn.Module, device: torch.device | None = None) -> None:
        self.spec = spec
        self.device = device or select_device(spec.deployment.device)
        self.autocast_dtype = select_dtype(self.device, spec.deployment.precision)
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.label_dtype = np.uint8 if spec.num_classes <= 256 else np.uint16
        # Metrics hook, called after each forward pass with (items, queue s, forward s, postprocess s).
        self.on_group: Callable[[list[PreparedImage], list[float], float, float], None] | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, items: Sequence[Item]) -> torch.Tensor:
        if items[0].pixels.dtype == np.float32:  # already normalized (groups never mix dtypes)
            return self._normalized_to_device(items)
        batch = torch.from_numpy(np.stack([item.pixels for item in items]))
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with work already queued on the GPU.
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        x = normalize(batch, self.spec.input)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _normalized_to_device(self, items: Sequence[PreparedImage]) -> torch.Tensor:
        """float32 [H, W, 3] inputs the caller already normalized (Open Inference Protocol FP32)."""
        batch = torch.from_numpy(np.stack([item.pixels for item in items]))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        # NHWC memory seen as NCHW: the channels_last layout the uint8 path gives the network too.
        return batch.permute(0, 3, 1, 2)

    def postprocess(self, logits: torch.Tensor, items: list[PreparedImage]) -> GroupOutput:
        """Network output of a group -> per-item results at the original geometry (semantic: labels)."""
        labels = [
            restore_labels(logits[i].float(), item.geometry).to("cpu").numpy().astype(self.label_dtype)
            for i, item in enumerate(items)
        ]
        return GroupOutput(labels, [{} for _ in items])

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict:
        with torch.inference_mode(), self._autocast():
            return self.outputs(self.model(x))

    def outputs(self, raw: object) -> torch.Tensor | dict:
        """What ``postprocess`` takes from the network's return: the class scores the entry names."""
        return select_output(raw, self.spec.output)

    def run(self, items: list[Item], queued_at: list[float]) -> list[Segmentation | TileLogits]:
        """Segment a batch; results come back in the order of ``items`` (tiles: their logits)."""
        started = time.perf_counter()
        results: list[Segmentation | TileLogits | None] = [None] * len(items)
        for group in self.groups(items):
            t0 = time.perf_counter()
            members = [items[i] for i in group]
            with torch.inference_mode():
                x = self._to_device(members)
                out = self.forward(x)
                self._sync()
                t1 = time.perf_counter()
                images = [k for k, item in enumerate(members) if not isinstance(item, TileInput)]
                output = self._postprocess_images(out, members, images)
                self._sync()
            t2 = time.perf_counter()
            if self.on_group is not None:
                self.on_group(members, [started - queued_at[i] for i in group], t1 - t0, t2 - t1)
            for k, i in enumerate(group):
                item = items[i]
                if isinstance(item, TileInput):
                    # Tiles leave the logits on the device; the request's blender weighs and adds them.
                    queue_s = started - queued_at[i]
                    results[i] = TileLogits(out[k], item.index, queue_s, t1 - t0, len(group), t0)
                    continue
                n = images.index(k)
                results[i] = self._segmentation(
                    item, output, n, len(group), started - queued_at[i], t1 - t0, t2 - t1
                )
        return results  # type: ignore[return-value]

    @staticmethod
    def _segmentation(
        item: PreparedImage,
        output: GroupOutput,
        n: int,
        batch: int,
        queue_s: float,
        forward_s: float,
        post_s: float,
    ) -> Segmentation:
        extras = output.extras[n]
        return Segmentation(
            labels=output.labels[n],
            options=item.options,
            original=item.original,
            timings_ms={
                **item.timings_ms,
                "queue": queue_s * 1000,
                "forward": forward_s * 1000,
                "postprocess": post_s * 1000,
            },
            batch_size=batch,
            panoptic=extras.get("panoptic"),
            segments=extras.get("segments", []),
            instances=extras.get("instances"),
        )

    def _postprocess_images(
        self, out: torch.Tensor | dict, members: list[Item], images: list[int]
    ) -> GroupOutput:
        """``postprocess`` for the whole images of a group (only semantic models have tiles to leave out)."""
        if len(images) == len(members):
            return self.postprocess(out, members)  # type: ignore[arg-type]
        if not images:
            return GroupOutput([], [])
        assert isinstance(out, torch.Tensor)
        picked = out[torch.tensor(images, device=out.device)]
        return self.postprocess(picked, [members[k] for k in images])  # type: ignore[misc]

    def groups(self, items: Sequence[Item]) -> Iterator[list[int]]:
        """Indices grouped by input shape, each group within max_batch_size and the pixel budget.

        Groups holding a whole image run before groups of tiles only, so a small request that shares a
        batch with large requests' tiles does not wait for their forward as well as its own.
        """
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            # The dtype too: uint8 images and already normalized float tensors are stacked apart.
            by_shape[(*item.pixels.shape, item.pixels.dtype.str)].append(i)
        budget = self.spec.batching.max_batch_pixels
        limit = self.spec.batching.max_batch_size
        chunks = []
        for shape, indices in by_shape.items():
            per_batch = max(1, min(limit, budget // max(1, shape[0] * shape[1])))
            chunks += [indices[start : start + per_batch] for start in range(0, len(indices), per_batch)]
        tiles_only = [all(isinstance(items[i], TileInput) for i in chunk) for chunk in chunks]
        yield from (c for c, only in zip(chunks, tiles_only, strict=True) if not only)
        yield from (c for c, only in zip(chunks, tiles_only, strict=True) if only)

    def warm_up(self) -> None:
        """One forward at the input size, so the first request does not pay for lazy initialisation."""
        size = self.spec.input.size
        d = self.spec.input.size_divisor
        side = -(-size // d) * d
        x = torch.zeros((1, 3, side, side), device=self.device)
        self.forward(x)
        self._sync()

    def memory_bytes(self) -> tuple[int, int]:
        """(in use, peak) bytes of device memory; process RSS on the CPU."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device), torch.cuda.max_memory_allocated(self.device)
        import resource

        import psutil

        rss = psutil.Process().memory_info().rss
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return rss, peak
