"""Mask payloads -> numpy arrays, the inverse of the service's encodings (service/imaging/encode.py).

``service.imaging.encode`` (OpenCV, pycocotools) is imported on first use, so ``import
service.client`` stays light.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

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
    from service.imaging.encode import decode_label_png

    return decode_label_png(png), None


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
    from service.imaging.encode import decode_rle

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


def encode_png(labels: np.ndarray) -> bytes:
    from service.imaging.encode import encode_label_png

    return encode_label_png(labels)
