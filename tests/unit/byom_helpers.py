"""Shared by the bring-your-own-model tests: entries with random weights, served vs direct label maps."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from service.config import ModelSpec
from service.imaging.geometry import fit_to_policy
from service.types import PreparedImage, SegmentOptions


def spec_of(entry: dict[str, Any]) -> ModelSpec:
    return ModelSpec.model_validate(entry)


def images(seed: int = 0, scale: int = 1) -> list[np.ndarray]:
    """Three images, two of one size and one of another: one batch holds two groups."""
    rng = np.random.default_rng(seed)
    a, b = (50 * scale, 70 * scale, 3), (64 * scale, 64 * scale, 3)
    return [
        rng.integers(0, 256, a, np.uint8),
        rng.integers(0, 256, b, np.uint8),
        rng.integers(0, 256, a, np.uint8),
    ]


def prepared(image: np.ndarray, spec: ModelSpec) -> PreparedImage:
    pixels, geometry = fit_to_policy(image, spec.input)
    return PreparedImage(pixels=pixels, geometry=geometry, options=SegmentOptions(model=spec.name))


def served(runner, items: list[PreparedImage]) -> list[np.ndarray]:
    return [r.labels for r in runner.run(items, [time.perf_counter()] * len(items))]


def direct_scores(
    model: torch.nn.Module, item: PreparedImage, spec: ModelSpec, key: str | None = None
) -> torch.Tensor:
    """The network called by hand: RGB 0-1, ImageNet mean/std written out here, the dict key picked here,
    padding cropped and scores resized to the original size. [C, H, W]."""
    x = torch.from_numpy(item.pixels.copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor(spec.input.mean).view(3, 1, 1)
    std = torch.tensor(spec.input.std).view(3, 1, 1)
    with torch.inference_mode():
        out = model(((x - mean) / std)[None])
    if isinstance(out, dict):
        out = out[key or spec.output.key]
    g = item.geometry
    crop = out[0, :, : g.scaled[0], : g.scaled[1]]
    return F.interpolate(crop[None].float(), size=g.original, mode="bilinear", align_corners=False)[0]


def assert_labels_match(labels: np.ndarray, scores: torch.Tensor, tolerance: float = 1e-4) -> None:
    """``labels`` are the argmax of ``scores``, except where the two best scores are within
    ``tolerance`` (of the scores' range) of each other: there float rounding of another kernel (a batch
    of two, ONNX Runtime) may pick either. Such near-ties must stay rare (<= 0.5 % of pixels)."""
    expected = scores.max(0).indices.numpy()
    top2 = scores.topk(2, dim=0).values
    margin = (top2[0] - top2[1]).numpy()
    scale = float(scores.abs().max()) or 1.0
    differ = labels != expected
    assert labels.shape == expected.shape
    assert np.all(margin[differ] <= tolerance * scale), f"{differ.sum()} pixels differ beyond a near-tie"
    assert differ.mean() <= 0.005, f"{differ.mean():.4f} of the pixels differ"
