"""Input geometry: fit an image to the model's input policy, and the ``Geometry`` that undoes it.

The codec calls ``fit_to_policy`` (uint8 pixels, CPU, no torch) and records a ``Geometry``; the model's
runner brings its outputs back to the original size with ``service.imaging.restore`` on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.config import InputPolicy


@dataclass(frozen=True)
class Geometry:
    """original: the decoded image (H, W); scaled: after resizing; padded: the model input."""

    original: tuple[int, int]
    scaled: tuple[int, int]
    padded: tuple[int, int]


def plan_geometry(height: int, width: int, policy: InputPolicy) -> Geometry:
    if policy.mode == "resize":
        scaled = (policy.size, policy.size)
    elif policy.mode == "letterbox":
        factor = policy.size / max(height, width)
        scaled = (max(1, round(height * factor)), max(1, round(width * factor)))
    elif policy.mode == "shortest_edge":
        scaled = _shortest_edge(height, width, policy.size, policy.max_size)
    else:  # pad: keep the pixels
        scaled = (height, width)
    d = policy.size_divisor
    padded = (-(-scaled[0] // d) * d, -(-scaled[1] // d) * d)
    return Geometry((height, width), scaled, padded)


def _shortest_edge(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """torchvision's ``GeneralizedRCNNTransform`` sizes: one factor for both sides, the shorter side to
    ``size`` unless the longer would pass ``max_size``, sides floored (its ``interpolate`` with
    ``recompute_scale_factor=True``), so a detector sees images at the scale it was trained at."""
    factor = size / min(height, width)
    if max_size is not None:
        factor = min(factor, max_size / max(height, width))
    return max(1, math.floor(height * factor)), max(1, math.floor(width * factor))


def pad_value(policy: InputPolicy) -> tuple[int, int, int]:
    """The RGB colour that normalizes to zero: padding then carries no signal into the network.

    ``mean`` is in the network's channel order and pixel range (``InputPolicy.channels``, ``pixel_range``).
    """
    scale = 255 if policy.pixel_range == "0-1" else 1
    rgb = policy.mean[::-1] if policy.channels == "BGR" else policy.mean
    return tuple(min(255, max(0, round(m * scale))) for m in rgb)  # type: ignore[return-value]


def fit_to_policy(image: np.ndarray, policy: InputPolicy) -> tuple[np.ndarray, Geometry]:
    """Resize (bilinear, antialiased) and pad an RGB uint8 [H, W, 3] image; returns it and its geometry."""
    geometry = plan_geometry(image.shape[0], image.shape[1], policy)
    if geometry.scaled != geometry.original:
        resized = Image.fromarray(image).resize(geometry.scaled[::-1], Image.Resampling.BILINEAR)
        image = np.asarray(resized)  # read-only: the runner stacks (copies) a batch before torch sees it
    if geometry.padded != geometry.scaled:
        out = np.empty((*geometry.padded, 3), np.uint8)
        out[...] = pad_value(policy)
        out[: geometry.scaled[0], : geometry.scaled[1]] = image
        image = out
    return np.ascontiguousarray(image), geometry
