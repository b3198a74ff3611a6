"""Input geometry: fit an image to the model's input policy, and bring outputs back to the original.

The codec calls ``fit_to_policy`` (uint8 pixels, CPU) and records a ``Geometry``; the segmenter
calls ``restore_logits`` on the device so the argmax happens at the original resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
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


def restore(maps: torch.Tensor, geometry: Geometry, mode: str = "bilinear") -> torch.Tensor:
    """Crop the padding off [C, Hp, Wp] outputs and resize them to the original (H, W)."""
    out = maps[:, : geometry.scaled[0], : geometry.scaled[1]]
    if geometry.scaled != geometry.original:
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        out = F.interpolate(out[None], size=geometry.original, mode=mode, **kwargs)[0]
    return out


# Why `.max(0).indices` and not `.argmax(0)`: on the CPU, torch's argmax over the leading (strided)
# dimension of [C, H, W] is ~10x slower than max(dim=0), which returns the same first-maximum index.


def restore_labels(logits: torch.Tensor, geometry: Geometry, rows_per_chunk: int = 1024) -> torch.Tensor:
    """Argmax at the original resolution: logits [C, Hp, Wp] -> labels [H, W] (int64).

    Works in horizontal strips so a 20-megapixel image never holds all C full-size float planes at
    once. The strip source rows are computed for bilinear resampling with align_corners=False.
    """
    crop = logits[:, : geometry.scaled[0], : geometry.scaled[1]]
    h, w = geometry.original
    if geometry.scaled == geometry.original:
        return crop.max(0).indices
    if h <= rows_per_chunk:
        full = F.interpolate(crop[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
        return full.max(0).indices
    sh = geometry.scaled[0]
    scale = sh / h
    labels = torch.empty((h, w), dtype=torch.int64, device=logits.device)
    for top in range(0, h, rows_per_chunk):
        bottom = min(h, top + rows_per_chunk)
        # Source rows that bilinear interpolation reads for output rows [top, bottom).
        src_top = max(0, int(np.floor((top + 0.5) * scale - 0.5)) - 1)
        src_bottom = min(sh, int(np.ceil((bottom - 0.5) * scale - 0.5)) + 2)
        full = _interpolate_rows(crop, src_top, src_bottom, top, bottom, h, w)
        labels[top:bottom] = full.max(0).indices
    return labels


def _interpolate_rows(
    crop: torch.Tensor, src_top: int, src_bottom: int, top: int, bottom: int, h: int, w: int
) -> torch.Tensor:
    """Bilinear (align_corners=False) output rows [top, bottom) of resizing ``crop`` to (h, w)."""
    sh, _sw = crop.shape[-2:]
    ys = (torch.arange(top, bottom, device=crop.device, dtype=torch.float32) + 0.5) * (sh / h) - 0.5
    ys = ys.clamp(min=0)
    y0 = ys.floor().long().clamp(max=sh - 1)
    y1 = (y0 + 1).clamp(max=sh - 1)
    fy = (ys - y0.float())[:, None]
    rows = crop.float()
    # Resize columns first on the needed source rows only, then blend rows.
    part = F.interpolate(
        rows[None, :, src_top:src_bottom],
        size=(src_bottom - src_top, w),
        mode="bilinear",
        align_corners=False,
    )[0]
    a = part[:, y0 - src_top]
    b = part[:, y1 - src_top]
    return a * (1 - fy) + b * fy
