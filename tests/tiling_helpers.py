"""Independent computations the tiled answers are checked against, shared by unit and integration tests.

``whole_labels`` runs the network once on the whole image (padded as a single input would be): what
tiling must reproduce for a network whose receptive field fits in the dropped margin. ``tiled_labels``
runs the service's own tiling without a batcher or a service (each tile alone through ``Runner.run``).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import torch

from service.config import ModelSpec
from service.imaging.geometry import Geometry, pad_value
from service.imaging.restore import restore_labels
from service.imaging.tiling import scale_for_tiles
from service.models.inference import Runner
from service.models.registry import normalize, select_output
from service.tiled import TiledRequest
from service.types import PreparedImage, SegmentOptions


def with_tile(spec: ModelSpec, **tile) -> ModelSpec:
    """``spec`` with this tile section (validated; min_side 16 unless given: every image is tiled)."""
    data = spec.model_dump()
    data["input"]["tile"] = {"min_side": 16, **tile}
    return ModelSpec.model_validate(data)


def whole_logits(spec: ModelSpec, model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    """Class scores [C, h, w] of the whole image as given: one forward, padded to the divisor."""
    d = spec.input.size_divisor
    h, w = image.shape[:2]
    canvas = np.empty((-(-h // d) * d, -(-w // d) * d, 3), np.uint8)
    canvas[...] = pad_value(spec.input)
    canvas[:h, :w] = image
    with torch.inference_mode():
        out = select_output(model(normalize(torch.from_numpy(canvas)[None], spec.input)), spec.output)
    return out[0, :, :h, :w].float()


def whole_labels(spec: ModelSpec, model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Labels at the original size of whole-image inference at the tile scale (then bilinear back)."""
    tile = spec.input.tile
    assert tile is not None
    scaled, geometry = scale_for_tiles(image, spec.input)
    logits = whole_logits(spec, model, scaled)
    g = Geometry(geometry.original, geometry.scaled, geometry.scaled)
    return restore_labels(logits, g).numpy()


def tiled_request(spec: ModelSpec, runner: Runner, image: np.ndarray) -> TiledRequest:
    scaled, geometry = scale_for_tiles(image, spec.input)
    return TiledRequest(
        spec, runner, PreparedImage(scaled, geometry, SegmentOptions(model=spec.name), tiled=True)
    )


def tiled_labels(spec: ModelSpec, runner: Runner, image: np.ndarray) -> tuple[np.ndarray, TiledRequest]:
    """The service's tiling, each tile run alone (no batcher): labels and the request (its plan, stats)."""

    async def direct(item):
        return runner.run([item], [time.perf_counter()])[0]

    request = tiled_request(spec, runner, image)
    return asyncio.run(request.run(direct)).labels, request


def miou(pred: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """Mean IoU over the classes (the training's dataset mIoU, torchmetrics' Jaccard index)."""
    from service.training.metrics import DatasetIoU

    metric = DatasetIoU([str(c) for c in range(classes)])
    metric.update(torch.from_numpy(pred), torch.from_numpy(truth))
    return metric.compute().miou
