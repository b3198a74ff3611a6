"""Seeded synthetic "shapes" images where the class is decided by geometry, not by colour.

No datasets can be downloaded here, so the demo models learn from these. Each sample has random
colours, textured and noisy backgrounds, gradients, varied sizes and rotations, touching,
overlapping and partly occluded shapes, and shapes cut by the image border. The same seed always
gives the same sample.

Classes (semantic ids): 0 background, 1 circle, 2 rectangle, 3 triangle; with ``stripes=True``
(the panoptic variant) also 4 stripes: irregular regions filled with a striped texture ("stuff").
Instance ids number the visible shapes 1..N (0 = no shape); stuff has no instance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND, CIRCLE, RECTANGLE, TRIANGLE, STRIPES = 0, 1, 2, 3, 4
SEMANTIC_CLASSES = ("background", "circle", "rectangle", "triangle")
PANOPTIC_CLASSES = (*SEMANTIC_CLASSES, "stripes")
SHAPE_CLASSES = (CIRCLE, RECTANGLE, TRIANGLE)

# Sizes (height, width) drawn from for a sample when none is given: squares, landscape, portrait.
DEFAULT_SIZES = ((128, 128), (96, 128), (128, 96), (112, 128), (128, 80), (80, 128), (128, 112))


@dataclass(frozen=True)
class ShapesConfig:
    min_shapes: int = 2
    max_shapes: int = 7
    min_radius: float = 0.085
    """Shape radius as a fraction of the image's longer side."""
    max_radius: float = 0.2
    touch_prob: float = 0.35
    """Chance that a new shape is placed against an existing one (touching or slightly overlapping)."""
    min_visible: float = 0.55
    """A shape is never covered beyond this visible fraction, so its geometry stays recognisable."""
    stripes: bool = False
    """Add striped "stuff" regions (class 4): the panoptic variant."""


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8 [H, W, 3]
    semantic: np.ndarray  # uint8 [H, W], class ids
    instances: np.ndarray  # int32 [H, W], 0 = no instance, 1..N visible shapes
    instance_classes: dict[int, int]  # instance id -> class id


def make_sample(
    seed: int, size: tuple[int, int] | None = None, config: ShapesConfig = ShapesConfig()
) -> Sample:
    """One deterministic sample; ``size`` is (height, width), drawn from DEFAULT_SIZES when None."""
    rng = np.random.default_rng(seed)
    if size is None:
        size = DEFAULT_SIZES[rng.integers(len(DEFAULT_SIZES))]
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = _background(rng, h, w, yy, xx)
    semantic = np.zeros((h, w), np.uint8)
    instances = np.zeros((h, w), np.int32)

    if config.stripes:
        for _ in range(rng.integers(0, 3)):
            region = _blob(rng, h, w)
            image[region] = _stripes(rng, h, w, yy, xx)[region]
            semantic[region] = STRIPES

    masks: list[np.ndarray] = []
    classes: list[int] = []
    radii: list[tuple[float, float, float]] = []  # (cy, cx, r) of placed shapes, for touching
    scale = max(h, w)
    for _ in range(rng.integers(config.min_shapes, config.max_shapes + 1)):
        for _attempt in range(8):
            cls = int(rng.choice(SHAPE_CLASSES))
            r = rng.uniform(config.min_radius, config.max_radius) * scale
            cy, cx = _center(rng, h, w, r, radii, config.touch_prob)
            mask = _shape_mask(rng, cls, cy, cx, r, yy, xx)
            if mask.sum() < 30 or not _keeps_visible(masks, mask, config.min_visible):
                continue
            fill = _fill(rng, image, mask, h, w, yy, xx)
            image[mask] = fill[mask]
            masks.append(mask)
            classes.append(cls)
            radii.append((cy, cx, r))
            break

    for i, (mask, cls) in enumerate(zip(masks, classes, strict=True)):
        semantic[mask] = cls  # later shapes overwrite earlier ones: occlusion
        instances[mask] = i + 1
    present = np.unique(instances)
    instance_classes = {int(i): classes[i - 1] for i in present if i > 0}
    image = _finish(rng, image)
    return Sample(image, semantic, instances, instance_classes)


def make_batch(
    seeds: list[int] | range, size: tuple[int, int], config: ShapesConfig = ShapesConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack samples of one size: images [B,H,W,3] uint8, semantic [B,H,W] uint8, instances int32."""
    samples = [make_sample(s, size, config) for s in seeds]
    return (
        np.stack([s.image for s in samples]),
        np.stack([s.semantic for s in samples]),
        np.stack([s.instances for s in samples]),
    )


# --- drawing helpers ------------------------------------------------------------------------------


def _color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _gradient(rng, h, w, yy, xx) -> np.ndarray:
    """A linear gradient between two random colours in a random direction, [H, W, 3] float."""
    a, b = _color(rng), _color(rng)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    return a + (b - a) * t[..., None]


def _smooth_noise(rng, h, w, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: random values on a coarse grid, bilinearly upsampled."""
    grid = rng.uniform(0, 1, (cells + 1, cells + 1)).astype(np.float32)
    gy = np.linspace(0, cells, h, dtype=np.float32)
    gx = np.linspace(0, cells, w, dtype=np.float32)
    y0, x0 = np.minimum(gy.astype(int), cells - 1), np.minimum(gx.astype(int), cells - 1)
    fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng, h, w, yy, xx) -> np.ndarray:
    image = _gradient(rng, h, w, yy, xx)
    kind = rng.integers(4)
    if kind == 1:  # cloudy texture in a second colour
        noise = _smooth_noise(rng, h, w, int(rng.integers(3, 9)))[..., None]
        image = image * (1 - noise) + _color(rng) * noise
    elif kind == 2:  # fine grain
        image = image + rng.normal(0, rng.uniform(10, 30), (h, w, 1)).astype(np.float32)
    elif kind == 3:  # dots
        dots = rng.uniform(0, 1, (h, w)) < rng.uniform(0.02, 0.08)
        image[dots] = _color(rng)
    return image


def _stripes(rng, h, w, yy, xx) -> np.ndarray:
    period = rng.uniform(4, 9)
    angle = rng.uniform(0, np.pi)
    phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
    on = (np.floor(phase) % 2 == 0)[..., None]
    return np.where(on, _color(rng), _color(rng)).astype(np.float32)


def _blob(rng, h, w) -> np.ndarray:
    """An irregular region covering roughly 10-30 % of the image."""
    noise = _smooth_noise(rng, h, w, int(rng.integers(2, 5)))
    return noise > np.quantile(noise, rng.uniform(0.7, 0.9))


def _center(rng, h, w, r, placed, touch_prob) -> tuple[float, float]:
    if placed and rng.uniform() < touch_prob:
        cy, cx, r0 = placed[rng.integers(len(placed))]
        angle = rng.uniform(0, 2 * np.pi)
        dist = (r + r0) * rng.uniform(0.75, 1.0)
        return cy + dist * np.sin(angle), cx + dist * np.cos(angle)
    # Centres near the edges give shapes cut by the image border.
    return rng.uniform(0.05 * h, 0.95 * h), rng.uniform(0.05 * w, 0.95 * w)


def _shape_mask(rng, cls, cy, cx, r, yy, xx) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if cls == CIRCLE:
        return dy * dy + dx * dx <= r * r
    angle = rng.uniform(0, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if cls == RECTANGLE:
        aspect = rng.uniform(0.45, 1.0)
        half_a = r * 0.95
        return (np.abs(u) <= half_a) & (np.abs(v) <= half_a * aspect)
    # Triangle: three vertices around the centre, jittered but never degenerate.
    base = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
    radius = r * rng.uniform(1.0, 1.3, 3)
    vy, vx = radius * np.sin(base), radius * np.cos(base)
    inside = np.ones_like(u, dtype=bool)
    for i in range(3):
        j = (i + 1) % 3
        inside &= (vx[j] - vx[i]) * (v - vy[i]) - (vy[j] - vy[i]) * (u - vx[i]) >= 0
    return inside


def _keeps_visible(masks: list[np.ndarray], new: np.ndarray, min_visible: float) -> bool:
    for m in masks:
        area = m.sum()
        if area and (m & ~new).sum() < min_visible * area:
            return False
    return True


def _fill(rng, image, mask, h, w, yy, xx) -> np.ndarray:
    """A fill that contrasts with the background under the shape: solid, gradient or textured."""
    under = image[mask].mean(axis=0)
    for _ in range(20):
        base = _color(rng)
        if np.abs(base - under).sum() > 120:
            break
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    if kind == 1:
        shade = _color(rng) * 0.3 + base * 0.7
        t = _smooth_noise(rng, h, w, 2)[..., None]
        return base * (1 - t) + shade * t
    return base + rng.normal(0, 18, (h, w, 1)).astype(np.float32)


def _finish(rng, image: np.ndarray) -> np.ndarray:
    """Sensor-like noise and a soft edge (a 3-tap blur), then back to uint8."""
    image = image + rng.normal(0, rng.uniform(2, 10), image.shape).astype(np.float32)
    if rng.uniform() < 0.5:
        image = (image + np.roll(image, 1, 0) + np.roll(image, 1, 1)) / 3
    return np.clip(image, 0, 255).astype(np.uint8)
