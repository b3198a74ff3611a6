"""Overlays: blend a label map's class colours over the picture, and colours for instances.

Shapes: images are RGB ``uint8 [H, W, 3]``; label maps are non-negative integer ``[H, W]``;
palettes are ``uint8 [K, 3]`` (row k = colour of class k).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Golden-ratio conjugate: successive multiples mod 1 spread hues as evenly as any sequence can.
_GOLDEN = 0.618033988749895
# Labels below this use a lookup table; above it (sparse ids) colours are computed per unique id.
_MAX_LUT = 1 << 16
# instance_colors works per element below this size (HSV maths makes several float64 copies).
_MAX_DIRECT = 1 << 16


def palette(colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Class colours (r, g, b) in 0..255 -> palette ``uint8 [K, 3]``; raises ``ValueError`` otherwise."""
    table = np.asarray(colors).reshape(len(colors), -1) if len(colors) else np.zeros((0, 3), np.int64)
    valid = np.issubdtype(table.dtype, np.integer) and table.shape[1] == 3
    if not valid or table.min(initial=0) < 0 or table.max(initial=0) > 255:
        raise ValueError(f"colors must be (r, g, b) triples of integers in 0..255, got {colors!r:.200}")
    return table.astype(np.uint8)


def instance_colors(ids: np.ndarray) -> np.ndarray:
    """Deterministic, well-spread colours for integer ids: ``ids [...]`` -> ``uint8 [..., 3]``.

    Hue walks the golden ratio (id * 0.618... mod 1), saturation and value vary a little with the id
    so that ids far apart with nearby hues still differ; id 0 (void / background) is black, and no
    other id is black or white. The same id always gives the same colour, in any process.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size > _MAX_DIRECT:  # a whole id map: colour each distinct id once, then index
        unique, inverse = np.unique(ids, return_inverse=True)
        return instance_colors(unique)[inverse.reshape(ids.shape)]
    hue = np.mod(ids * _GOLDEN, 1.0)
    saturation = 0.65 + 0.3 * np.mod(ids * 0.3819660112501051 + 0.5, 1.0)
    value = 0.75 + 0.25 * np.mod(ids * 0.7548776662466927, 1.0)
    rgb = _hsv_to_rgb(hue, saturation, value)
    rgb[ids == 0] = 0
    return rgb


def blend_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    colors: np.ndarray,
    alpha: float = 0.5,
    skip_class: int | None = 0,
) -> np.ndarray:
    """Blend class colours over ``image``: ``uint8 [H, W, 3]`` + ``labels [H, W]`` -> ``uint8 [H, W, 3]``.

    Each pixel becomes ``(1 - alpha) * image + alpha * colors[label]`` (alpha in [0, 1], exact at 0
    and 1), except pixels of ``skip_class`` (background; ``None`` blends every class), which keep the
    image untouched. Labels at or beyond ``len(colors)`` get ``instance_colors(label)`` instead of
    failing, so an overlay never crashes on an unexpected class id.
    """
    _check_overlay_inputs(image, labels, alpha)
    class_colors = _colors_for(labels, colors)
    weight = round(alpha * 256)  # 8-bit fixed point: uint16 maths instead of a float copy of the image
    blended = (image.astype(np.uint16) * (256 - weight) + class_colors.astype(np.uint16) * weight + 128) >> 8
    out = blended.astype(np.uint8)
    if skip_class is not None:
        np.copyto(out, image, where=(labels == skip_class)[:, :, None])
    return out


def _check_overlay_inputs(image: np.ndarray, labels: np.ndarray, alpha: float) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {list(labels.shape)} do not match the image {list(image.shape[:2])}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and int(labels.min()) < 0:
        raise ValueError("labels must be >= 0")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _colors_for(labels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """The colour of every pixel, ``uint8 [H, W, 3]``: the palette, extended for unknown labels."""
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)  # a bool index would be read as a mask, not as ids 0/1
    top = int(labels.max()) if labels.size else 0
    if top < len(colors):
        return colors[labels]
    if top < _MAX_LUT:
        extra = instance_colors(np.arange(len(colors), top + 1))
        return np.concatenate([colors, extra])[labels]
    ids, inverse = np.unique(labels, return_inverse=True)
    known = ids < len(colors)
    table = instance_colors(ids)
    table[known] = colors[ids[known]]
    return table[inverse.reshape(labels.shape)]


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV (each in [0, 1]) -> ``uint8 [..., 3]``."""
    sector = np.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * frac)
    t = value * (1.0 - saturation * (1.0 - frac))
    sector = sector.astype(np.int64) % 6
    choices_r = [value, q, p, p, t, value]
    choices_g = [t, value, value, q, p, p]
    choices_b = [p, p, t, value, value, q]
    channels = [np.choose(sector, choices) for choices in (choices_r, choices_g, choices_b)]
    return np.rint(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)
