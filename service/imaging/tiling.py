"""Large images at full resolution: where the tiles go, how much each counts, and which pixels each feeds.

Pure numpy, no torch: the codec asks ``wants_tiles`` and scales the image; the model worker plans the
tiles (``plan_tiles``), cuts them (``cut_tile``) and hands their logits to the blender
(``service/models/blending.py``), which weighs them with ``tile_weights`` and resamples them with the
``AxisMap`` of each axis.

The grid is laid on the image *at the tile scale* (``TilePolicy.scale``), padded at the bottom and right
to a multiple of ``input.size_divisor`` with the colour that normalizes to zero, exactly as the whole
image would be padded for one forward. Tiles start on multiples of the divisor, so a network that pools
``log2(divisor)`` times sees the same pixel grid in every tile as on the whole image: for a fully
convolutional network whose receptive field fits in the dropped ``margin``, the tiled label map is the
whole-image one (tests/unit/test_tiled_inference.py).

Blending happens at the *original* resolution, band by band (``Band``): the output rows of a tile row
are final once its tiles and the previous rows' are in, so only a band of rows of float logits is ever
held, never ``C x H x W``; when even a band of the whole width is over the entry's memory budget, the
image is blended in column blocks (``Region``), and the tiles on a block border run once per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from service.config import InputPolicy, TilePolicy
from service.imaging.geometry import Geometry

# --- which path -----------------------------------------------------------------------------------


def scaled_size(height: int, width: int, tile: TilePolicy) -> tuple[int, int]:
    """The image's size at the tile scale (the codec resizes to it; 1.0 keeps it)."""
    if tile.scale == 1.0:
        return height, width
    return max(1, round(height * tile.scale)), max(1, round(width * tile.scale))


def wants_tiles(height: int, width: int, policy: InputPolicy) -> bool:
    """Whether an image of this size takes the tiled path: its longer side at the tile scale is at
    least ``tile.min_side`` (smaller images take the input mode's path, as without a tile section)."""
    tile = policy.tile
    return tile is not None and max(scaled_size(height, width, tile)) >= tile.min_side


def scale_for_tiles(image: np.ndarray, policy: InputPolicy) -> tuple[np.ndarray, Geometry]:
    """The codec's step for a tiled image: resize to the tile scale (bilinear, antialiased, as
    ``fit_to_policy``) when it is not 1, no padding (tiles are padded as they are cut). The geometry's
    ``padded`` is the scaled size rounded up to ``size_divisor``, the canvas the grid is laid on."""
    assert policy.tile is not None
    height, width = image.shape[:2]
    scaled = scaled_size(height, width, policy.tile)
    if scaled != (height, width):
        image = np.asarray(Image.fromarray(image).resize(scaled[::-1], Image.Resampling.BILINEAR))
    d = policy.size_divisor
    padded = (-(-scaled[0] // d) * d, -(-scaled[1] // d) * d)
    return image, Geometry((height, width), scaled, padded)


# --- the grid -------------------------------------------------------------------------------------


def axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of the tiles along one axis of ``length`` (a multiple of the divisor, as are ``tile`` and
    ``stride``): every ``stride``, the last one flush with the end (it overlaps its neighbour more)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


@dataclass(frozen=True)
class TileGrid:
    """Tiles over an image of ``scaled`` size (tile scale), padded to ``padded``; each tile is
    ``tile`` = (th, tw) and starts at (ys[i], xs[j])."""

    original: tuple[int, int]
    scaled: tuple[int, int]
    padded: tuple[int, int]
    tile: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    margin: int

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def plan_tiles(original: tuple[int, int], scaled: tuple[int, int], policy: InputPolicy) -> TileGrid:
    """The grid of a tiled image: ``original`` as sent, ``scaled`` at the tile scale."""
    tile = policy.tile
    assert tile is not None, "plan_tiles needs a tile section"
    d = policy.size_divisor
    padded = (-(-scaled[0] // d) * d, -(-scaled[1] // d) * d)
    th, tw = min(tile.size, padded[0]), min(tile.size, padded[1])
    stride = tile.size - tile.overlap_pixels(d)
    ys = tuple(axis_starts(padded[0], th, stride))
    xs = tuple(axis_starts(padded[1], tw, stride))
    return TileGrid(original, scaled, padded, (th, tw), ys, xs, tile.margin)


def cut_tile(image: np.ndarray, y: int, x: int, th: int, tw: int, fill: tuple[int, int, int]) -> np.ndarray:
    """The [th, tw, 3] tile at (y, x) of ``image`` [H, W, 3]; where it passes the image's bottom or right
    edge (the padding to the divisor), ``fill``. A view when inside the image, else a small copy."""
    h, w = image.shape[:2]
    if y + th <= h and x + tw <= w:
        return image[y : y + th, x : x + tw]
    out = np.empty((th, tw, 3), np.uint8)
    out[...] = fill
    part = image[y : min(h, y + th), x : min(w, x + tw)]
    out[: part.shape[0], : part.shape[1]] = part
    return out


# --- weights --------------------------------------------------------------------------------------


def blend_window(th: int, tw: int, blend: str, sigma: float) -> np.ndarray:
    """float32 [th, tw] importance of each tile pixel: 1 everywhere (``constant``), or a Gaussian centred
    on the tile with ``sigma`` x the side as its standard deviation, scaled to a peak of 1 and clamped
    below at 1e-3 (MONAI's ``compute_importance_map``): corners still count where only one tile covers."""
    if blend == "constant":
        return np.ones((th, tw), np.float32)

    def axis(n: int) -> np.ndarray:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        return np.exp(-0.5 * (x / (sigma * n)) ** 2)

    window = np.outer(axis(th), axis(tw))
    window /= window.max()
    return np.maximum(window, 1e-3).astype(np.float32)


def tile_weights(window: np.ndarray, margin: int, inner: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """``window`` with ``margin`` rows / columns set to 0 along each inner edge (top, bottom, left, right:
    True where a neighbouring tile covers that side): the border where zero padding changed the
    network's answer, which the neighbour sees with real context."""
    if margin == 0 or not any(inner):
        return window
    out = window.copy()
    top, bottom, left, right = inner
    if top:
        out[:margin] = 0
    if bottom:
        out[-margin:] = 0
    if left:
        out[:, :margin] = 0
    if right:
        out[:, -margin:] = 0
    return out


def inner_edges(grid: TileGrid, i: int, j: int) -> tuple[bool, bool, bool, bool]:
    """Which sides of tile (i, j) have a neighbouring tile: (top, bottom, left, right)."""
    return (i > 0, i < len(grid.ys) - 1, j > 0, j < len(grid.xs) - 1)


# --- tile scale -> original resolution ------------------------------------------------------------


@dataclass(frozen=True)
class AxisMap:
    """Bilinear resampling along one axis from ``n_in`` tile-scale pixels to ``n_out`` original pixels,
    with ``torch.nn.functional.interpolate``'s arithmetic (``align_corners=False``): output pixel k reads
    inputs ``lo[k]`` and ``hi[k]`` with weight ``frac[k]`` on ``hi``. Identity when the sizes agree."""

    n_in: int
    n_out: int
    lo: np.ndarray = field(repr=False)
    hi: np.ndarray = field(repr=False)
    frac: np.ndarray = field(repr=False)

    @property
    def identity(self) -> bool:
        return self.n_in == self.n_out

    def span(self, start: int, length: int) -> tuple[int, int]:
        """Output pixels [a, b) fed only by inputs in [start, start + length): a tile's footprint."""
        if self.identity:
            return max(0, min(start, self.n_out)), max(0, min(start + length, self.n_out))
        last = start + length - 1
        a = int(np.searchsorted(self.lo, start, side="left"))
        b = int(np.searchsorted(self.hi, last, side="right"))
        return a, max(a, b)


def axis_map(n_in: int, n_out: int) -> AxisMap:
    """The resampling of one axis (``n_in`` = the image's tile-scale side, ``n_out`` its original side)."""
    if n_in == n_out:
        empty = np.zeros(0, np.int64)
        return AxisMap(n_in, n_out, empty, empty, np.zeros(0, np.float32))
    # In float32, as torch's CPU kernel computes source positions for float tensors.
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = np.clip(src - lo.astype(np.float32), 0, 1).astype(np.float32)
    return AxisMap(n_in, n_out, lo, hi, frac)


# --- regions and bands ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A column block of the output: it owns original columns [own0, own1), blends in a buffer over
    columns [left, right) and needs the tile columns ``cols``."""

    own0: int
    own1: int
    left: int
    right: int
    cols: tuple[int, ...]


@dataclass(frozen=True)
class Band:
    """Rows of a tiled image, in original pixels: tile row i feeds rows [top[i], bottom[i]); rows
    [top[i], top[i + 1]) are final once tile rows 0..i are blended. ``height`` is the band buffer's:
    the rows of two consecutive tile rows, so one tile row can run while the previous one finishes."""

    top: tuple[int, ...]
    bottom: tuple[int, ...]
    height: int

    def final_until(self, i: int, rows: int) -> int:
        """The first row not final after tile row ``i`` is blended (``rows`` at the end)."""
        return self.top[i + 1] if i + 1 < len(self.top) else rows


def plan_band(grid: TileGrid, rows: AxisMap) -> Band:
    spans = [rows.span(y, grid.tile[0]) for y in grid.ys]
    top = tuple(0 if i == 0 else a for i, (a, _) in enumerate(spans))
    bottom = tuple(b for _, b in spans)
    pairs = [bottom[i + 1] - top[i] for i in range(len(top) - 1)] or [bottom[0] - top[0]]
    return Band(top, bottom, max(max(pairs), 1))


def plan_regions(grid: TileGrid, cols: AxisMap, band: Band, channels: int, budget_bytes: int) -> list[Region]:
    """Column blocks whose blending buffers (two bands of float32 logits while one band hands over to the
    next) fit ``budget_bytes``; at least one tile column per block, whatever the budget."""
    spans = [cols.span(x, grid.tile[1]) for x in grid.xs]
    n = len(spans)
    per_column = 2 * 4 * channels * band.height  # bytes per buffer column
    regions: list[Region] = []
    j = 0
    while j < n:
        own0 = 0 if j == 0 else spans[j][0]
        k = j + 1  # block of tile columns j..k-1 owns up to the next block's first footprint
        while k < n and _buffer_width(spans, j, k + 1, own0, n) * per_column <= budget_bytes:
            k += 1
        own1 = spans[k][0] if k < n else grid.original[1]
        needed = tuple(c for c in range(n) if spans[c][0] < own1 and spans[c][1] > own0)
        left = min(spans[c][0] for c in needed)
        right = max(spans[c][1] for c in needed)
        regions.append(Region(own0, own1, left, right, needed))
        j = k
    return regions


def _buffer_width(spans: list[tuple[int, int]], j: int, k: int, own0: int, n: int) -> int:
    """Width of the buffer of a block owning tile columns j..k-1 (with the neighbours it needs)."""
    own1 = spans[k][0] if k < n else spans[-1][1]
    needed = [c for c in range(n) if spans[c][0] < own1 and spans[c][1] > own0]
    return max(spans[c][1] for c in needed) - min(spans[c][0] for c in needed)


def blend_bytes(grid: TileGrid, band: Band, region: Region, channels: int) -> int:
    """What one region's blending holds at most: two bands of float32 logits."""
    return 2 * 4 * channels * band.height * (region.right - region.left)


@dataclass(frozen=True)
class TilePlan:
    """Everything about a tiled image that does not depend on its pixels."""

    grid: TileGrid
    rows: AxisMap
    cols: AxisMap
    band: Band
    regions: tuple[Region, ...]

    @property
    def forwards(self) -> int:
        """Tiles to run: the grid's, plus the border columns that two column blocks both need."""
        return len(self.grid.ys) * sum(len(r.cols) for r in self.regions)


def plan_tiling(
    original: tuple[int, int], scaled: tuple[int, int], policy: InputPolicy, channels: int
) -> TilePlan:
    """Grid, resampling maps, band and column blocks of an image (``original`` as sent, ``scaled`` at
    the tile scale) for a model with ``channels`` classes."""
    assert policy.tile is not None
    grid = plan_tiles(original, scaled, policy)
    rows, cols = axis_map(scaled[0], original[0]), axis_map(scaled[1], original[1])
    band = plan_band(grid, rows)
    regions = plan_regions(grid, cols, band, channels, policy.tile.memory_budget_bytes)
    return TilePlan(grid, rows, cols, band, tuple(regions))
