"""Instance segmentation results: detections with box-local masks, and their encodings.

Pure numpy (and pycocotools / OpenCV through ``encode``), no torch: the segmenter builds an
``Instances`` per image, the codec turns it into the answer.

Conventions:
- Boxes are ``[x1, y1, x2, y2]`` float32 in the original image's continuous pixel coordinates (pixel
  ``(row r, column c)`` covers ``[c, c + 1) x [r, r + 1)``), as torchvision's detectors give them;
  the answer's ``bbox`` is COCO's ``[x, y, width, height]`` of that box.
- Masks are kept as crops: ``masks[k]`` is a bool ``[h_k, w_k]`` array whose top-left pixel is
  ``origins[k] = (x0, y0)`` in the image; every pixel outside the crop is outside the instance. A
  whole-image mask per instance would cost ``N x H x W`` bytes to move between replicas.
- Instances are in score order, highest first; instance ``k`` (0-based) has id ``k + 1`` in the
  instance id map, where 0 is background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils

from service.imaging.encode import encode_polygons

# The id map is 8-bit while every id fits, as encode_label_png writes uint8 maps 8-bit and uint16 16-bit.
_MAX_8BIT_ID = 255


@dataclass
class Instances:
    """One image's detections at its original resolution (see the module docstring for conventions)."""

    height: int
    width: int
    class_ids: np.ndarray  # int64 [N], 1.. (0 is background and never detected)
    scores: np.ndarray  # float32 [N], descending
    boxes: np.ndarray  # float32 [N, 4], x1, y1, x2, y2
    masks: list[np.ndarray]  # bool [h_k, w_k] crops
    origins: np.ndarray  # int64 [N, 2], (x0, y0) of each crop

    def __len__(self) -> int:
        return len(self.class_ids)


def make_instances(
    height: int,
    width: int,
    class_ids: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    boxes: Sequence[Sequence[float]] | np.ndarray,
    masks: Sequence[np.ndarray],
    origins: Sequence[Sequence[int]] | np.ndarray,
) -> Instances:
    """Checked ``Instances``, sorted by score (highest first; ties keep their order)."""
    class_ids = np.asarray(class_ids, np.int64).reshape(-1)
    scores = np.asarray(scores, np.float32).reshape(-1)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    origins = np.asarray(origins, np.int64).reshape(-1, 2)
    n = len(class_ids)
    if not (len(scores) == len(boxes) == len(origins) == len(masks) == n):
        raise ValueError(
            f"{n} class ids, {len(scores)} scores, {len(boxes)} boxes, {len(masks)} masks, "
            f"{len(origins)} origins: one of each per instance"
        )
    for mask, (x0, y0) in zip(masks, origins, strict=True):
        _check_crop(mask, int(x0), int(y0), height, width)
    order = np.argsort(-scores, kind="stable")
    return Instances(
        height=height,
        width=width,
        class_ids=class_ids[order],
        scores=scores[order],
        boxes=boxes[order],
        masks=[np.asarray(masks[i], bool) for i in order],
        origins=origins[order],
    )


def _check_crop(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> None:
    if mask.ndim != 2:
        raise ValueError(f"a mask crop is [h, w], got shape {list(mask.shape)}")
    h, w = mask.shape
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise ValueError(f"mask crop {w}x{h} at ({x0}, {y0}) leaves the {width}x{height} image")


def full_mask(instances: Instances, k: int) -> np.ndarray:
    """Instance ``k``'s mask over the whole image, bool ``[H, W]``."""
    mask = np.zeros((instances.height, instances.width), bool)
    _paste(mask, instances, k, True)
    return mask


def _paste(target: np.ndarray, instances: Instances, k: int, value: int | bool) -> None:
    """Write ``value`` into ``target [H, W]`` where instance ``k``'s mask is set."""
    crop = instances.masks[k]
    x0, y0 = (int(v) for v in instances.origins[k])
    region = target[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
    region[crop] = value


def instance_id_map(instances: Instances) -> np.ndarray:
    """The instance id map ``[H, W]``: 0 background, ``k + 1`` for instance ``k``.

    uint8 up to 255 instances, else uint16. Where masks overlap the pixel goes to the higher score
    (the lower id): masks are painted from the lowest score up. Lossy where masks overlap; the
    per-instance RLE is exact.
    """
    dtype = np.uint8 if len(instances) <= _MAX_8BIT_ID else np.uint16
    ids = np.zeros((instances.height, instances.width), dtype)
    for k in reversed(range(len(instances))):
        _paste(ids, instances, k, k + 1)
    return ids


def class_pixels(instances: Instances, ids: np.ndarray) -> dict[int, int]:
    """Pixels per class in the id map ``ids`` (from ``instance_id_map``), only classes with pixels;
    class 0 counts the background."""
    per_id = np.bincount(ids.reshape(-1), minlength=len(instances) + 1)
    counts: dict[int, int] = {0: int(per_id[0])}
    for k, category in enumerate(instances.class_ids):
        counts[int(category)] = counts.get(int(category), 0) + int(per_id[k + 1])
    return {c: n for c, n in sorted(counts.items()) if n > 0}


def coco_bbox(box: np.ndarray) -> list[float]:
    """``[x1, y1, x2, y2]`` -> COCO ``[x, y, width, height]`` (float32 maths, so protobuf floats match)."""
    x1, y1, x2, y2 = np.asarray(box, np.float32)
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def instance_rles(instances: Instances) -> list[dict]:
    """Every instance's mask as COCO compressed RLE ``{"size": [H, W], "counts": str}``, in order.

    One Fortran-ordered image buffer is reused: each crop is written in, encoded and cleared, instead
    of a whole-image mask built (and copied to column order) per instance.
    """
    buffer = np.zeros((instances.height, instances.width), np.uint8, order="F")
    size = [instances.height, instances.width]
    rles = []
    for crop, (x0, y0) in zip(instances.masks, instances.origins, strict=True):
        region = buffer[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
        region[...] = crop
        rles.append({"size": list(size), "counts": mask_utils.encode(buffer)["counts"].decode("ascii")})
        region[...] = 0
    return rles


def instance_polygons(instances: Instances, k: int) -> list[list[float]]:
    """Instance ``k``'s mask as COCO polygons in image coordinates (lossy, see ``encode_polygons``).

    Traced on the crop with one pixel of background around it (the same contours as on the whole
    image, at the cost of the crop), then moved to image coordinates.
    """
    crop = np.pad(instances.masks[k], 1)
    x0, y0 = (int(v) - 1 for v in instances.origins[k])
    shift = np.array([x0, y0], float)
    return [(np.asarray(p).reshape(-1, 2) + shift).reshape(-1).tolist() for p in encode_polygons(crop)]


def describe_instances(instances: Instances, names: dict[int, str], mask_format: str = "png") -> list[dict]:
    """The answer's ``instances`` list, in score order.

    Each: ``id`` (value in the instance id map), ``category_id``, ``name``, ``score``, ``bbox``
    (``[x, y, w, h]`` of the detector's box), ``area`` (mask pixels), plus ``rle`` for
    ``mask_format="rle"`` or ``polygons`` for ``"polygons"``.
    """
    rles = instance_rles(instances) if mask_format == "rle" else None
    out = []
    for k in range(len(instances)):
        category = int(instances.class_ids[k])
        item = {
            "id": k + 1,
            "category_id": category,
            "name": names.get(category, str(category)),
            "score": float(instances.scores[k]),
            "bbox": coco_bbox(instances.boxes[k]),
            "area": int(instances.masks[k].sum()),
        }
        if rles is not None:
            item["rle"] = rles[k]
        elif mask_format == "polygons":
            item["polygons"] = instance_polygons(instances, k)
        out.append(item)
    return out


def to_coco_results(described: Sequence[dict], image_id: int) -> list[dict]:
    """``describe_instances(..., "rle")`` -> COCO segmentation results for one image, the format
    ``COCO.loadRes`` and ``COCOeval(iouType="segm")`` read: ``image_id``, ``category_id``,
    ``segmentation`` (RLE, counts as str), ``score``.

    No ``bbox``: given one, ``loadRes`` takes the results for box results and sets each ``area`` to the
    box's, which would put instances in the wrong COCO area range; without it, area and box come from
    the mask (as torchvision's reference evaluation sends them).
    """
    results = []
    for item in described:
        if "rle" not in item:
            raise ValueError("COCO instance results need the masks: describe the instances with format rle")
        results.append(
            {
                "image_id": image_id,
                "category_id": item["category_id"],
                "segmentation": item["rle"],
                "score": item["score"],
            }
        )
    return results
