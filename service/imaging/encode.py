"""Encode label maps and masks: PNG, COCO RLE and polygons.

Exactness: PNG label maps and COCO RLE are lossless, decoding them gives back every pixel. Polygons are
lossy and only offered as an extra: OpenCV traces contours through pixel *centres*, so the polygon of a
block of pixels covers only about half of its boundary pixels (a 3x4 block has polygon area 6 against a
mask area of 12), and regions thinner than 3 contour points (single pixels, 1-pixel lines) vanish.

Shapes: label maps are integer ``[H, W]`` arrays of class ids; masks are bool or uint8 ``[H, W]``.
RLE is COCO's compressed form, column-major, ``{"size": [H, W], "counts": str}`` (ascii, JSON-ready).
Polygons are COCO flat ``[x1, y1, x2, y2, ...]`` lists in pixel coordinates (x = column, y = row).
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

# Output encoding dominates the serving cost of a label map (zlib at the default level 6 is several
# times slower than level 1 on large maps, for a few percent of size on flat label images).
_PNG_COMPRESS_LEVEL = 1
# class_pixel_counts works in strips so a 20-megapixel uint8 map is never copied whole to int64.
_COUNT_CHUNK = 1 << 20
_MAX_HISTOGRAM = 1 << 16


def encode_label_png(labels: np.ndarray) -> bytes:
    """Integer label map ``[H, W]`` -> PNG bytes: 8-bit grey ("L") below 256, else 16-bit ("I;16").

    uint8 stays 8-bit and uint16 stays 16-bit; other integer (or bool) dtypes take the smallest of
    the two that holds their values. Raises ``ValueError`` for other dtypes, other ranks, an empty
    map, negative values or values above 65535.
    """
    labels = _as_png_labels(labels)
    buffer = io.BytesIO()
    Image.fromarray(labels).save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode_label_png(data: bytes) -> np.ndarray:
    """PNG bytes -> label map ``[H, W]``: uint8 for 8-bit (L or palette indices), uint16 for 16-bit.

    The exact inverse of ``encode_label_png``. Raises ``ValueError`` for non-PNG data or a mode that
    is not a single channel of integer labels.
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


def encode_rgb_png(image: np.ndarray) -> bytes:
    """RGB ``uint8 [H, W, 3]`` (an overlay, a panoptic id image) -> PNG bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(
        buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL
    )
    return buffer.getvalue()


def class_pixel_counts(labels: np.ndarray, num_classes: int) -> dict[int, int]:
    """Pixels per class id of a label map ``[H, W]`` (non-negative integers), only ids with count > 0.

    ``num_classes`` sizes the histogram; ids at or above it are still counted, not dropped.
    """
    flat = _check_label_map(labels).reshape(-1)
    top = int(flat.max())
    if top >= _MAX_HISTOGRAM:  # sparse large ids (e.g. panoptic): a histogram would be mostly empty
        ids, found = np.unique(flat, return_counts=True)
        return {int(c): int(n) for c, n in zip(ids, found, strict=True)}
    counts = np.zeros(max(num_classes, top + 1), np.int64)
    for start in range(0, flat.size, _COUNT_CHUNK):
        counts += np.bincount(flat[start : start + _COUNT_CHUNK].astype(np.intp), minlength=counts.size)
    return {int(c): int(counts[c]) for c in np.flatnonzero(counts)}


def encode_rle(mask: np.ndarray) -> dict:
    """Bool/uint8 mask ``[H, W]`` -> COCO compressed RLE ``{"size": [H, W], "counts": str}``."""
    if mask.ndim != 2:
        raise ValueError(f"expected a mask [H, W], got shape {list(mask.shape)}")
    fortran = np.asfortranarray(mask != 0).view(np.uint8)
    return _rle_to_json(mask_utils.encode(fortran))


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (compressed, counts as str or bytes; or uncompressed, counts as a list) -> bool [H, W]."""
    return mask_utils.decode(_rle_for_coco(rle)).astype(bool)


def rle_area(rle: dict) -> int:
    """Number of foreground pixels of a COCO RLE."""
    return int(mask_utils.area(_rle_for_coco(rle)))


def rle_bbox(rle: dict) -> list[int]:
    """Bounding box ``[x, y, w, h]`` (pixels, ints) of a COCO RLE; ``[0, 0, 0, 0]`` when empty."""
    return [int(v) for v in mask_utils.toBbox(_rle_for_coco(rle))]


def encode_class_rles(labels: np.ndarray, class_ids: Iterable[int] | None = None) -> list[dict]:
    """One ``{"class_id": int, "rle": {...}}`` per class present in ``labels [H, W]``, by class id.

    ``class_ids`` restricts the output to those ids (absent ones are skipped).
    """
    present = _present_classes(labels, class_ids)
    # Comparing a Fortran-ordered map gives Fortran-ordered masks: no transpose copy per class.
    fortran = np.asfortranarray(labels)
    return [
        {"class_id": c, "rle": _rle_to_json(mask_utils.encode((fortran == c).view(np.uint8)))}
        for c in present
    ]


def encode_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[float]]:
    """Bool/uint8 mask ``[H, W]`` -> COCO polygons, flat ``[x1, y1, x2, y2, ...]`` float lists (lossy).

    Contours come from ``cv2.findContours`` with ``RETR_CCOMP``: outer boundaries *and* hole
    boundaries are returned, each as its own ring (COCO polygons cannot say "hole", so a consumer that
    fills every ring fills the holes; the ring orientation tells them apart: holes run the opposite way
    to outer rings). ``CHAIN_APPROX_SIMPLE`` keeps only the corners of straight runs; ``tolerance > 0``
    further simplifies with ``cv2.approxPolyDP`` (max distance in pixels). Rings with fewer than three
    points are dropped.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a mask [H, W], got shape {list(mask.shape)}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    binary = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        ring = cv2.approxPolyDP(contour, tolerance, True) if tolerance > 0 else contour
        if len(ring) >= 3:
            polygons.append(ring.reshape(-1).astype(float).tolist())
    return polygons


def encode_class_polygons(
    labels: np.ndarray, class_ids: Iterable[int] | None = None, tolerance: float = 0.0
) -> list[dict]:
    """One ``{"class_id": int, "polygons": [[...], ...]}`` per class present in ``labels [H, W]``.

    A class whose regions are all too thin for a polygon is still listed, with an empty list.
    """
    return [
        {"class_id": c, "polygons": encode_polygons(labels == c, tolerance)}
        for c in _present_classes(labels, class_ids)
    ]


def _as_png_labels(labels: np.ndarray) -> np.ndarray:
    """Validate a label map and pick its PNG dtype: uint8 [H, W] or uint16 [H, W], C-contiguous."""
    labels = _check_label_map(labels)
    if labels.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(labels)
    top = int(labels.max())
    if top < 256:
        return labels.astype(np.uint8)
    if top < 65536:
        return labels.astype(np.uint16)
    raise ValueError(f"label {top} does not fit a 16-bit PNG (max 65535)")


def _check_label_map(labels: np.ndarray) -> np.ndarray:
    """A non-empty [H, W] array of non-negative integers (bool is taken as 0/1) -> the same array."""
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty [H, W] array, got shape {list(labels.shape)}")
    if np.issubdtype(labels.dtype, np.signedinteger) and int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    return labels


def _present_classes(labels: np.ndarray, class_ids: Iterable[int] | None) -> list[int]:
    """Sorted class ids with at least one pixel, restricted to ``class_ids`` when given."""
    present = sorted(class_pixel_counts(labels, num_classes=1))
    if class_ids is None:
        return present
    wanted = {int(c) for c in class_ids}
    return [c for c in present if c in wanted]


def _rle_to_json(rle: dict) -> dict:
    """pycocotools RLE (counts bytes) -> JSON-ready ``{"size": [H, W], "counts": str}``."""
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _rle_for_coco(rle: dict) -> dict:
    """Our (or any COCO) RLE dict -> the compressed form pycocotools expects (counts as bytes)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE, as in COCO crowd annotations
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [height, width], "counts": counts}
