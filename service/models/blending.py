"""Blending the logits of overlapping tiles into a label map, band by band, on the model's device.

``service/imaging/tiling.py`` plans where the tiles go and which output pixels each feeds; this module
does the tensor work for one column block (``Region``) of one request. Each tile's logits are brought
to the original resolution (bilinear, the arithmetic of ``restore_labels``, identity at scale 1),
multiplied by the tile's weights (resampled the same way) and added into a band of float32 rows; rows
no later tile can reach are reduced to labels (first maximum, as ``restore_labels``) and written into the
request's label map, and the band moves down. The weighted average is never divided out: the weights
of a pixel sum to a positive number, and dividing by it does not change which class is largest.

Not thread-safe: one request's tiles are added one at a time (the worker awaits each ``add``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from service.imaging.tiling import AxisMap, Region, TilePlan, inner_edges, tile_weights


class RegionBlender:
    """Accumulates one region's tiles and writes the labels of its finished rows into ``labels``."""

    def __init__(
        self,
        plan: TilePlan,
        region: Region,
        channels: int,
        labels: np.ndarray,
        window: np.ndarray,
        device: torch.device,
    ) -> None:
        self.grid, self.band, self.region = plan.grid, plan.band, region
        self.rows, self.cols = plan.rows, plan.cols
        self.labels = labels
        self.window = window
        self.device = device
        self.width = region.right - region.left
        shape = (channels, self.band.height, self.width)
        with torch.inference_mode():  # tile logits are inference tensors: their sums are made in this mode
            self.buffer = torch.zeros(shape, dtype=torch.float32, device=device)
        self.origin = 0  # the original row at the buffer's first row: every row above it is final
        self.next_row = 0  # the tile row whose rows are finalized next
        self.added = [0] * len(self.grid.ys)
        self._weights: dict[tuple[bool, ...], torch.Tensor] = {}
        self._pending_s = 0.0

    def admits(self, i: int) -> bool:
        """Whether tile row ``i`` fits the band now (it holds two consecutive tile rows)."""
        return i <= self.next_row + 1

    @property
    def finished(self) -> bool:
        return self.next_row == len(self.grid.ys)

    def add(self, i: int, j: int, logits: torch.Tensor) -> list[float]:
        """Blend tile (i, j)'s logits ``[C, th, tw]``; returns the time of each band it finished."""
        with torch.inference_mode():
            return self._add(i, j, logits)

    def _add(self, i: int, j: int, logits: torch.Tensor) -> list[float]:
        t0 = time.perf_counter()
        if not self.admits(i):
            raise RuntimeError(f"tile row {i} added before row {self.next_row} was finished")
        y, x = self.grid.ys[i], self.grid.xs[j]
        th, tw = self.grid.tile
        (a, b), (c, e) = self.rows.span(y, th), self.cols.span(x, tw)
        weights = self._tile_weights(i, j)
        part = _resample(logits.float(), self.rows, y, a, b, self.cols, x, c, e)
        w = _resample(weights[None], self.rows, y, a, b, self.cols, x, c, e)[0]
        self.buffer[:, a - self.origin : b - self.origin, c - self.region.left : e - self.region.left] += (
            part * w
        )
        self.added[i] += 1
        self._pending_s += time.perf_counter() - t0
        return self._finish_rows()

    def _tile_weights(self, i: int, j: int) -> torch.Tensor:
        inner = inner_edges(self.grid, i, j)
        if inner not in self._weights:
            window = tile_weights(self.window, self.grid.margin, inner)
            self._weights[inner] = torch.from_numpy(np.ascontiguousarray(window)).to(self.device)
        return self._weights[inner]

    def _finish_rows(self) -> list[float]:
        finished = []
        while not self.finished and self.added[self.next_row] == len(self.region.cols):
            t0 = time.perf_counter()
            until = self.band.final_until(self.next_row, self.grid.original[0])
            self._write_labels(until)
            self._move_down(until)
            self.next_row += 1
            finished.append(self._pending_s + time.perf_counter() - t0)
            self._pending_s = 0.0
        return finished

    def _write_labels(self, until: int) -> None:
        r = self.region
        rows = self.buffer[:, : until - self.origin, r.own0 - r.left : r.own1 - r.left]
        self.labels[self.origin : until, r.own0 : r.own1] = rows.max(0).indices.to("cpu").numpy()

    def _move_down(self, until: int) -> None:
        """Start the buffer at row ``until``: the rows not final yet move up, the rest start at zero."""
        shift = until - self.origin
        if shift <= 0:
            return
        keep = self.band.height - shift
        moved = torch.zeros_like(self.buffer)
        if keep > 0:
            moved[:, :keep] = self.buffer[:, shift:]
        self.buffer = moved
        self.origin = until


def _resample(
    maps: torch.Tensor, rows: AxisMap, y: int, a: int, b: int, cols: AxisMap, x: int, c: int, e: int
) -> torch.Tensor:
    """Tile maps ``[K, th, tw]`` (starting at (y, x) of the tile-scale image) -> output rows [a, b) and
    columns [c, e) at the original resolution (bilinear, align_corners=False); a crop at scale 1."""
    out = maps
    if rows.identity:
        out = out[:, a - y : b - y]
    else:
        out = _lerp(out, 1, rows.lo[a:b] - y, rows.hi[a:b] - y, rows.frac[a:b])
    if cols.identity:
        return out[:, :, c - x : e - x]
    return _lerp(out, 2, cols.lo[c:e] - x, cols.hi[c:e] - x, cols.frac[c:e])


def _lerp(maps: torch.Tensor, dim: int, lo: np.ndarray, hi: np.ndarray, frac: np.ndarray) -> torch.Tensor:
    device = maps.device
    lo_t = torch.from_numpy(lo).to(device)
    hi_t = torch.from_numpy(hi).to(device)
    f = torch.from_numpy(frac).to(device)
    f = f.view(-1, 1) if dim == 1 else f.view(1, -1)
    a = maps.index_select(dim, lo_t)
    return a + (maps.index_select(dim, hi_t) - a) * f
