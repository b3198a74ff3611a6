"""Model outputs back to the original image: crop the padding off, resize, argmax (torch, on the
model's device), undoing the ``Geometry`` that ``service.imaging.geometry.fit_to_policy`` recorded."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from service.imaging.geometry import Geometry


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
