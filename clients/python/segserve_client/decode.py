"""Mask payloads -> numpy arrays, the inverse of the service's encodings (its ``imaging/encode.py``).

Pillow and numpy only: the client does not install the service's OpenCV and pycocotools. The
service's tests check these functions against its own encoders and pycocotools.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from segserve_client.rle import decode_rle

VOID_LABEL = 255
"""``labels`` value of void pixels when a panoptic id map is turned back into classes (65535 for
uint16 maps). The COCO convention "0 = void" cannot be used: class 0 is usually a real class here."""


def decode_mask_png(png: bytes, segments: list[dict]) -> tuple[np.ndarray, np.ndarray | None]:
    """The service's PNG mask -> ``(labels, panoptic)``.

    An 8/16-bit grey PNG is a label map (``panoptic`` is ``None``); an RGB PNG is the COCO panoptic id
    PNG, decoded to int32 ids and mapped to classes through ``segments``.
    """
    with Image.open(io.BytesIO(png)) as image:
        mode = image.mode
        if mode == "RGB":
            rgb = np.asarray(image, dtype=np.uint8)
            panoptic = panoptic_ids_from_rgb(rgb)
            return labels_from_panoptic(panoptic, segments), panoptic
    return decode_label_png(png), None


def decode_label_png(data: bytes) -> np.ndarray:
    """A PNG label map -> ``[H, W]``: uint8 for 8-bit grey (or palette indices), uint16 for 16-bit.

    Raises ``ValueError`` for non-PNG data or a mode that is not one channel of integer labels.
    """
    with Image.open(io.BytesIO(data)) as image:
        if image.format != "PNG":
            raise ValueError(f"expected a PNG label map, got {image.format}")
        if image.mode in ("L", "P"):
            return np.array(image, dtype=np.uint8)
        if image.mode.startswith("I;16"):
            return np.array(image).astype(np.uint16)
        if image.mode == "I":
            values = np.array(image)
            if values.min() >= 0 and values.max() <= 65535:
                return values.astype(np.uint16)
        raise ValueError(f"PNG mode {image.mode} is not a label map (expected 8- or 16-bit grey)")


def encode_label_png(labels: np.ndarray) -> bytes:
    """Integer label map ``[H, W]`` -> PNG: 8-bit grey when every id is below 256, else 16-bit.

    Raises ``ValueError`` for other dtypes or ranks, an empty map, or ids outside ``0..65535``.
    """
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"expected a non-empty integer [H, W] map, got {labels.dtype} {list(labels.shape)}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > 65535:
        raise ValueError(f"label ids must be in 0..65535 for a PNG, got {low}..{high}")
    if labels.dtype not in (np.uint8, np.uint16):
        labels = labels.astype(np.uint8 if high < 256 else np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def panoptic_ids_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic id image uint8 ``[H, W, 3]`` -> int32 ids ``R + 256 G + 256² B``."""
    ids = rgb[..., 0].astype(np.int32)
    ids += rgb[..., 1].astype(np.int32) << 8
    ids += rgb[..., 2].astype(np.int32) << 16
    return ids


def labels_from_panoptic(panoptic: np.ndarray, segments: list[dict]) -> np.ndarray:
    """Segment ids ``[H, W]`` -> class ids via each segment's ``category_id``; unknown ids/void -> VOID."""
    top = max((int(s["category_id"]) for s in segments), default=0)
    dtype, void = (np.uint8, VOID_LABEL) if top < VOID_LABEL else (np.uint16, 65535)
    if not segments:
        return np.full(panoptic.shape, void, dtype)
    pairs = sorted((int(s["id"]), int(s["category_id"])) for s in segments)
    ids = np.array([p[0] for p in pairs], np.int64)
    categories = np.array([p[1] for p in pairs], dtype)
    index = np.minimum(np.searchsorted(ids, panoptic), len(ids) - 1)
    found = ids[index] == panoptic
    return np.where(found, categories[index], dtype(void)).astype(dtype)


def labels_from_raw(data: bytes, dtype: str, height: int, width: int) -> np.ndarray:
    """Row-major label bytes -> ``[H, W]`` of ``dtype`` (a writable copy)."""
    expected = height * width * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise ValueError(f"raw mask has {len(data)} bytes, expected {expected} ({height}x{width} {dtype})")
    return np.frombuffer(data, dtype=dtype).reshape(height, width).copy()


def labels_from_rles(rles: list[dict], height: int, width: int) -> np.ndarray:
    """Per-class COCO RLE (``[{"class_id", "rle": {"size", "counts"}}]``) -> label map ``[H, W]``."""
    top = max((int(r["class_id"]) for r in rles), default=0)
    labels = np.zeros((height, width), np.uint8 if top < 256 else np.uint16)
    for item in rles:
        labels[decode_rle(item["rle"])] = int(item["class_id"])
    return labels


def decode_labels(
    fmt: str,
    height: int,
    width: int,
    segments: list[dict],
    png: bytes | None = None,
    raw: bytes | None = None,
    dtype: str = "uint8",
    rles: list[dict] | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Whatever mask payload came back -> ``(labels, panoptic)``; ``(None, None)`` for polygons."""
    if png:
        return decode_mask_png(png, segments)
    if raw:
        return labels_from_raw(raw, dtype, height, width), None
    if rles is not None and fmt == "rle":
        return labels_from_rles(rles, height, width), None
    return None, None
