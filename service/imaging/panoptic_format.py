"""COCO panoptic id images: ``id = R + 256 * G + 256**2 * B`` in an RGB PNG, 0 = void.

As ``cocodataset/panopticapi`` ``panopticapi/utils.py`` (``id2rgb``, ``rgb2id``). PNG only: JPEG would
corrupt the ids. Ids run up to ``256**3 - 1``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.imaging.encode import encode_rgb_png

MAX_ID = 256**3 - 1


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Integer ids ``[H, W]`` in ``0..256**3 - 1`` -> uint8 ``[H, W, 3]`` (R, G, B)."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got {ids.dtype}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > MAX_ID):
        raise ValueError(f"ids must be in 0..{MAX_ID}, got {int(ids.min())}..{int(ids.max())}")
    ids = ids.astype(np.uint32)
    shifts = np.array([0, 8, 16], np.uint32)
    return ((ids[..., None] >> shifts) & 0xFF).astype(np.uint8)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` (R, G, B) -> int32 ids ``[H, W]``."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected [H, W, 3], got {list(rgb.shape)}")
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def encode_panoptic_png(ids: np.ndarray) -> bytes:
    """Segment ids ``[H, W]`` (0 = void) -> COCO panoptic RGB PNG bytes."""
    if np.asarray(ids).ndim != 2:
        raise ValueError(f"ids must be [H, W], got {list(np.asarray(ids).shape)}")
    return encode_rgb_png(id2rgb(ids))


def decode_panoptic_png(data: bytes) -> np.ndarray:
    """COCO panoptic PNG bytes -> int32 ids ``[H, W]``; the exact inverse of ``encode_panoptic_png``."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format != "PNG":
            raise ValueError(f"expected a PNG, got {image.format}")
        if image.mode != "RGB":
            raise ValueError(f"a COCO panoptic PNG is RGB, got mode {image.mode}")
        return rgb2id(np.asarray(image))
