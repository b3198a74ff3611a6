"""Tiling's pure functions (service/imaging/tiling.py) and the tile policy's validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.config import ConfigError, InputPolicy, ModelSpec, TilePolicy
from service.imaging.tiling import (
    axis_map,
    axis_starts,
    blend_window,
    cut_tile,
    inner_edges,
    plan_tiling,
    scale_for_tiles,
    tile_weights,
    wants_tiles,
)

CLASSES = [{"id": i, "name": f"c{i}", "color": [i, i, i]} for i in range(4)]


def policy(divisor: int = 16, **tile) -> InputPolicy:
    return InputPolicy(size=128, size_divisor=divisor, tile=TilePolicy(**{"min_side": 512, **tile}))


@pytest.mark.parametrize(
    "length,tile,stride", [(16, 16, 16), (512, 256, 192), (1040, 256, 192), (4096, 512, 384)]
)
def test_axis_starts_cover_the_axis_on_the_stride_and_end_flush(length, tile, stride):
    starts = axis_starts(length, tile, stride)
    assert starts[0] == 0 and starts[-1] == max(0, length - tile)
    steps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(step == stride for step in steps[:-1]) and all(0 < step <= stride for step in steps)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


@pytest.mark.parametrize(
    "size,tile,divisor",
    [((3000, 2000), {"size": 256, "overlap": 64}, 16), ((5000, 300), {"size": 256, "overlap": 0.25}, 32),
     ((700, 9000), {"size": 512, "overlap": 100}, 16), ((100, 100), {"size": 256}, 16)],
)  # fmt: skip
def test_grid_starts_on_the_divisor_and_covers_the_padded_image(size, tile, divisor):
    p = policy(divisor, **tile)
    grid = plan_tiling(size, size, p, 4).grid
    assert grid.padded == tuple(-(-s // divisor) * divisor for s in size)
    th, tw = grid.tile
    assert th % divisor == 0 and tw % divisor == 0 and th <= p.tile.size and tw <= p.tile.size
    assert all(y % divisor == 0 for y in grid.ys) and all(x % divisor == 0 for x in grid.xs)
    assert grid.ys[-1] + th == grid.padded[0] and grid.xs[-1] + tw == grid.padded[1]
    overlap = p.tile.overlap_pixels(divisor)
    asked = p.tile.overlap * p.tile.size if p.tile.overlap < 1 else p.tile.overlap
    assert overlap >= asked and (p.tile.size - overlap) % divisor == 0


def test_which_images_are_tiled():
    p = policy(min_side=2048)
    assert not wants_tiles(2047, 1000, p) and wants_tiles(1000, 2048, p)
    assert not wants_tiles(5000, 5000, InputPolicy())  # no tile section: never
    half = policy(min_side=2048, scale=0.5)
    assert not wants_tiles(4000, 100, half) and wants_tiles(4096, 100, half)


def test_scale_for_tiles_keeps_or_resizes_and_records_the_geometry():
    image = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    kept, geometry = scale_for_tiles(image, policy())
    assert (
        kept is image and geometry.original == geometry.scaled == (300, 500) and geometry.padded == (304, 512)
    )
    half, geometry = scale_for_tiles(image, policy(scale=0.5))
    assert half.shape == (150, 250, 3) and geometry.scaled == (150, 250) and geometry.padded == (160, 256)


def test_cut_tile_is_a_view_inside_and_padded_outside():
    image = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    inside = cut_tile(image, 16, 16, 16, 16, (1, 2, 3))
    assert np.shares_memory(inside, image) and inside.shape == (16, 16, 3)
    edge = cut_tile(image, 32, 32, 16, 32, (1, 2, 3))
    assert edge.shape == (16, 32, 3)
    np.testing.assert_array_equal(edge[:8, :18], image[32:40, 32:50])
    assert (edge[8:] == (1, 2, 3)).all() and (edge[:, 18:] == (1, 2, 3)).all()


def test_blend_windows():
    constant = blend_window(64, 32, "constant", 0.125)
    assert constant.shape == (64, 32) and (constant == 1).all()
    g = blend_window(64, 64, "gaussian", 0.125)
    assert g.max() == pytest.approx(1.0) and g.min() == pytest.approx(1e-3)
    np.testing.assert_allclose(g, g[::-1, :])
    np.testing.assert_allclose(g, g.T)
    assert g[32, 32] > g[32, 48] > g[32, 63]


def test_margins_are_dropped_only_along_inner_edges():
    grid = plan_tiling((600, 600), (600, 600), policy(size=256, overlap=64, margin=16), 4).grid
    window = blend_window(*grid.tile, "constant", 0.125)
    corner = tile_weights(window, 16, inner_edges(grid, 0, 0))
    assert inner_edges(grid, 0, 0) == (False, True, False, True)
    assert (corner[:, -16:] == 0).all() and (corner[-16:] == 0).all() and (corner[:-16, :-16] == 1).all()
    middle = tile_weights(window, 16, inner_edges(grid, 1, 1))
    assert (middle[16:-16, 16:-16] == 1).all() and middle[:16].sum() == middle[:, -16:].sum() == 0


@pytest.mark.parametrize("n_in,n_out", [(100, 100), (50, 100), (100, 37), (128, 333), (333, 128)])
def test_axis_map_is_torch_bilinear(n_in, n_out):
    """AxisMap reproduces F.interpolate(mode="bilinear", align_corners=False) along one axis."""
    values = torch.randn(1, 2, n_in, 3)
    expected = F.interpolate(values, size=(n_out, 3), mode="bilinear", align_corners=False)[0]
    m = axis_map(n_in, n_out)
    if m.identity:
        got = values[0]
    else:
        lo, hi, frac = (torch.from_numpy(a) for a in (m.lo, m.hi, m.frac))
        got = values[0][:, lo] * (1 - frac.view(-1, 1)) + values[0][:, hi] * frac.view(-1, 1)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "size,scale,tile",
    [((1000, 700), 1.0, {"size": 256, "overlap": 64, "margin": 16}),
     ((1000, 700), 0.5, {"size": 128, "overlap": 48, "margin": 16}),
     ((600, 900), 1.7, {"size": 256, "overlap": 64, "margin": 31}),
     ((2000, 3000), 1.0, {"size": 512, "overlap": 0, "margin": 0})],
)  # fmt: skip
def test_every_pixel_gets_weight_and_bands_finish_every_row_once(size, scale, tile):
    """Summing every tile's resampled weights over the original image leaves no pixel at 0, and the
    bands' final rows partition the image (each row is written once, after its last tile)."""
    p = policy(scale=scale, **tile)
    scaled = (round(size[0] * scale), round(size[1] * scale)) if scale != 1 else size
    plan = plan_tiling(size, scaled, p, 4)
    grid, rows, cols = plan.grid, plan.rows, plan.cols
    window = blend_window(*grid.tile, "gaussian", 0.125)
    total = np.zeros(size)
    for i, y in enumerate(grid.ys):
        for j, x in enumerate(grid.xs):
            w = tile_weights(window, grid.margin, inner_edges(grid, i, j))
            (a, b), (c, e) = rows.span(y, grid.tile[0]), cols.span(x, grid.tile[1])
            total[a:b, c:e] += _resample(w, rows, y, a, b, cols, x, c, e)
            assert b - a <= plan.band.height
    assert (total > 0).all()
    finals = [0] + [plan.band.final_until(i, size[0]) for i in range(len(grid.ys))]
    assert finals == sorted(finals) and finals[-1] == size[0]


def _resample(w, rows, y, a, b, cols, x, c, e):
    def axis(m, start, lo_, hi_):
        if m.identity:
            return np.arange(lo_, hi_) - start, np.arange(lo_, hi_) - start, np.zeros(hi_ - lo_)
        return m.lo[lo_:hi_] - start, m.hi[lo_:hi_] - start, m.frac[lo_:hi_]

    r0, r1, rf = axis(rows, y, a, b)
    c0, c1, cf = axis(cols, x, c, e)
    w = w[r0] * (1 - rf[:, None]) + w[r1] * rf[:, None]
    return w[:, c0] * (1 - cf[None]) + w[:, c1] * cf[None]


@pytest.mark.parametrize("budget_mb", [1, 8, 64, 1024])
def test_column_blocks_fit_the_budget_and_own_every_column_once(budget_mb):
    p = policy(size=256, overlap=64, margin=16, memory_budget_bytes=budget_mb * 1024 * 1024)
    size = (3000, 9000)
    plan = plan_tiling(size, size, p, 21)
    owned = np.zeros(size[1], int)
    for region in plan.regions:
        owned[region.own0 : region.own1] += 1
        width = region.right - region.left
        buffer_bytes = 2 * 4 * 21 * plan.band.height * width
        assert buffer_bytes <= p.tile.memory_budget_bytes or len(region.cols) <= 2  # one column + neighbour
        for c in region.cols:  # every tile the block needs feeds one of its columns
            x0, x1 = plan.cols.span(plan.grid.xs[c], plan.grid.tile[1])
            assert x0 < region.own1 and x1 > region.own0 and region.left <= x0 and x1 <= region.right
    assert (owned == 1).all()
    extra = plan.forwards - plan.grid.count
    assert (extra == 0) == (len(plan.regions) == 1)


def spec_entry(**changes) -> dict:
    entry = {"name": "m", "task": "semantic", "architecture": "null", "classes": CLASSES}
    return {**entry, **changes}


@pytest.mark.parametrize(
    "changes,message",
    [({"input": {"size_divisor": 32, "tile": {"size": 240}}}, "multiple of size_divisor 32"),
     ({"input": {"tile": {"size": 256, "overlap": 32, "margin": 17}}}, "overlap of at least 34"),
     ({"input": {"tile": {"overlap": 32, "margin": 16, "scale": 0.5}}}, "overlap of at least 34"),
     ({"input": {"tile": {"blend": "linear"}}}, "blend"),
     ({"input": {"tile": {"sizes": 256}}}, "sizes"),
     ({"input": {"max_pixels": 0}}, "max_pixels")],
)  # fmt: skip
def test_bad_tile_policies_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.model_validate(spec_entry(**changes))


def test_tiles_are_for_semantic_models_only(tmp_path):
    from service.config import load_repository

    entry = {
        "name": "p",
        "task": "panoptic",
        "architecture": "panoptic_unet",
        "weights": "p.safetensors",
        "classes": CLASSES,
        "panoptic": {},
        "input": {"tile": {}},
    }
    import yaml

    (tmp_path / "repository.yaml").write_text(yaml.safe_dump({"models": [entry]}))
    with pytest.raises(ConfigError, match=r"input\.tile is for semantic models"):
        load_repository(tmp_path / "repository.yaml")


def test_shipped_models_tile_or_refuse_large_images():
    from service.config import load_repository
    from tests.unit.test_config import ROOT

    repository = load_repository(ROOT / "models" / "repository.yaml")
    for spec in repository.models:
        if spec.task == "semantic":
            assert spec.input.tile is not None and spec.input.tile.scale == 1.0, spec.name
        else:
            assert spec.input.tile is None and spec.input.max_pixels is not None, spec.name
