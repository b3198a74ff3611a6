"""Panoptic-DeepLab post-processing as vectorized torch functions, and conversion to COCO segments.

Follows detectron2's ``projects/Panoptic-DeepLab/panoptic_deeplab/post_processing.py`` for ONE
image, corrected where it misbehaves (see ``find_instance_centers``). Everything runs on the device
the tensors are on; only ``to_coco_segments`` brings the final int ids to the CPU for RLE encoding.

Value conventions:

- semantic labels: int64 class ids ``[H, W]``;
- instance ids: int64 ``[H, W]``, 0 = no instance, ``1..K`` = the k-th centre (``group_pixels``);
- panoptic values (detectron2 / Cityscapes style): int64 ``[H, W]``, ``class * label_divisor + k`` for
  the k-th instance (k >= 1) of a thing class, ``class * label_divisor`` for a stuff class, ``void``
  (-1) for pixels that belong to nothing (thing pixels without a centre, stuff below ``stuff_area``);
- COCO ids: int32 ``[H, W]``, 0 = void, ``1..N`` one id per segment, described by ``segments``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F

# group_pixels holds a [pixels, K] distance block at a time; this bounds it (floats, 64 MiB).
_DISTANCE_BUDGET = 1 << 24


@dataclass
class PanopticOutput:
    """One image's panoptic result, on the device of its inputs."""

    panoptic: torch.Tensor  # int64 [H, W], class * label_divisor + k, stuff class * label_divisor, void
    labels: torch.Tensor  # int64 [H, W], semantic argmax
    centers: torch.Tensor  # float [K, 2], (y, x) of each instance centre, in pixels
    scores: dict[int, float]  # panoptic value -> confidence (see ``segment_scores``)


def find_instance_centers(
    heatmap: torch.Tensor, threshold: float = 0.1, nms_kernel: int = 7, top_k: int | None = 200
) -> torch.Tensor:
    """Peaks of a centre heatmap ``[1, H, W]`` -> long ``[K, 2]`` (y, x), highest score first.

    A pixel is a centre when its value is above ``max(threshold, 0)`` and equals the maximum of the
    ``nms_kernel`` x ``nms_kernel`` window around it (max-pool NMS, odd kernel). At most ``top_k`` (the
    highest; ``None`` = no limit) are kept. Ties in a window (a plateau) all survive, as in detectron2.

    Deliberate difference from detectron2: it keeps the pixels *strictly above* the k-th score, which
    returns k - 1 centres (fewer on ties) when there are more than k candidates and raises "selected
    index k out of range" when k exceeds the number of pixels. Here k is clamped to the number of
    candidates and exactly ``min(top_k, candidates)`` centres come back.
    """
    if heatmap.dim() != 3 or heatmap.shape[0] != 1:
        raise ValueError(f"heatmap must be [1, H, W], got {list(heatmap.shape)}")
    if nms_kernel < 1 or nms_kernel % 2 == 0:
        raise ValueError(f"nms_kernel must be odd and >= 1, got {nms_kernel}")
    scores = heatmap.float()
    pooled = F.max_pool2d(scores[None], nms_kernel, stride=1, padding=nms_kernel // 2)[0]
    keep = (scores > max(threshold, 0.0)) & (scores == pooled)
    ys, xs = keep[0].nonzero(as_tuple=True)
    # Stable sort: equal scores keep raster order, so the result is deterministic.
    order = scores[0, ys, xs].argsort(descending=True, stable=True)
    if top_k is not None:
        order = order[: max(0, top_k)]
    return torch.stack([ys[order], xs[order]], dim=1)


def group_pixels(centers: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Assign each pixel to the centre nearest to where its offset points.

    centers: ``[K, 2]`` (y, x), int or float pixels; offsets: float ``[2, H, W]``, ``(dy, dx)`` from
    the pixel to its instance centre. Returns int64 ``[H, W]`` ids ``1..K`` (index into ``centers``
    plus one; ties go to the lower index), or all zeros when there are no centres.
    """
    if offsets.dim() != 3 or offsets.shape[0] != 2:
        raise ValueError(f"offsets must be [2, H, W], got {list(offsets.shape)}")
    if centers.dim() != 2 or centers.shape[1] != 2:
        raise ValueError(f"centers must be [K, 2], got {list(centers.shape)}")
    _, h, w = offsets.shape
    device = offsets.device
    if centers.shape[0] == 0:
        return torch.zeros((h, w), dtype=torch.int64, device=device)
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] + offsets[0].float()
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :] + offsets[1].float()
    targets = torch.stack([ys, xs], dim=-1).reshape(-1, 2)  # predicted centre per pixel [HW, 2]
    points = centers.to(device=device, dtype=torch.float32)
    ids = torch.empty(h * w, dtype=torch.int64, device=device)
    # Chunks over pixels bound the [pixels, K] distance block on large images.
    chunk = max(1, _DISTANCE_BUDGET // points.shape[0])
    for start in range(0, h * w, chunk):
        block = targets[start : start + chunk]
        distance = (block[:, None, :] - points[None, :, :]).square().sum(-1)
        ids[start : start + chunk] = distance.argmin(1) + 1
    return ids.view(h, w)


def merge_semantic_and_instance(
    semantic_labels: torch.Tensor,
    instance_ids: torch.Tensor,
    thing_ids: Sequence[int],
    stuff_area: int,
    label_divisor: int,
    void: int = -1,
) -> torch.Tensor:
    """Semantic labels ``[H, W]`` + instance ids ``[H, W]`` -> panoptic values int64 ``[H, W]``.

    Thing pixels (semantic label in ``thing_ids``) with an instance id take the majority class of
    their instance's thing pixels (ties: the lower class id, as ``torch.mode``) and a per-class counter
    ``k = 1, 2, ...`` in instance-id order: ``class * label_divisor + k``. Thing pixels without an
    instance (id 0) are ``void``. Each stuff class becomes ``class * label_divisor`` where its area
    is at least ``stuff_area`` pixels, else ``void``.
    """
    if semantic_labels.shape != instance_ids.shape or semantic_labels.dim() != 2:
        raise ValueError(
            f"semantic_labels and instance_ids must both be [H, W], got "
            f"{list(semantic_labels.shape)} and {list(instance_ids.shape)}"
        )
    device = semantic_labels.device
    labels = semantic_labels.long()
    ids = instance_ids.long()
    num_classes = max(int(labels.max()) + 1, max(thing_ids, default=-1) + 1)
    is_thing = torch.zeros(num_classes, dtype=torch.bool, device=device)
    is_thing[list(thing_ids)] = True
    panoptic = torch.full_like(labels, void)

    thing_pixel = is_thing[labels] & (ids > 0)
    if thing_pixel.any():
        values = _instance_values(labels[thing_pixel], ids[thing_pixel], num_classes, label_divisor)
        panoptic[thing_pixel] = values[ids[thing_pixel]]

    stuff_pixel = ~is_thing[labels]
    stuff_labels = labels[stuff_pixel]
    area = torch.bincount(stuff_labels, minlength=num_classes)
    classes = torch.arange(num_classes, device=device)
    stuff_value = torch.where(area >= stuff_area, classes * label_divisor, torch.full_like(classes, void))
    panoptic[stuff_pixel] = stuff_value[stuff_labels]
    return panoptic


def _instance_values(
    labels: torch.Tensor, ids: torch.Tensor, num_classes: int, label_divisor: int
) -> torch.Tensor:
    """Panoptic value per instance id ``[K + 1]`` from the thing pixels' (labels, ids) ``[P]``."""
    count = int(ids.max()) + 1
    votes = torch.bincount(ids * num_classes + labels, minlength=count * num_classes).view(count, num_classes)
    present = votes.sum(1) > 0
    # argmax returns the first maximum: ties go to the lower class id, like torch.mode.
    cls = votes.argmax(1)
    rank = (F.one_hot(cls, num_classes) * present[:, None]).cumsum(0).gather(1, cls[:, None])[:, 0]
    if int(rank.max()) >= label_divisor:
        raise ValueError(f"more than {label_divisor - 1} instances of one class: raise label_divisor")
    return cls * label_divisor + rank


def segment_scores(
    panoptic: torch.Tensor,
    instance_ids: torch.Tensor,
    center_scores: torch.Tensor,
    confidence: torch.Tensor,
    label_divisor: int,
    void: int = -1,
) -> dict[int, float]:
    """Confidence of each panoptic segment: ``{panoptic value: score}`` (void excluded).

    Things: the centre heatmap value at the instance's centre (``center_scores [K]``, indexed by
    ``instance_ids [H, W] - 1``). Stuff: the mean over the segment's pixels of ``confidence [H, W]``,
    the softmax probability of the predicted class. Both are in [0, 1] for a calibrated model; the
    heatmap is a regression, so its value is clamped to [0, 1].
    """
    is_thing = (panoptic != void) & (panoptic % label_divisor != 0)
    pixel_score = confidence.float()
    if center_scores.numel():
        at_center = center_scores.float().clamp(0, 1)[(instance_ids - 1).clamp(min=0)]
        pixel_score = torch.where(is_thing, at_center, pixel_score)
    values, inverse, counts = torch.unique(panoptic, return_inverse=True, return_counts=True)
    sums = torch.zeros(values.shape[0], device=panoptic.device).index_add_(
        0, inverse.view(-1), pixel_score.view(-1)
    )
    means = (sums / counts).tolist()
    return {int(v): round(float(s), 4) for v, s in zip(values.tolist(), means, strict=True) if v != void}


def panoptic_from_centers(
    semantic_logits: torch.Tensor,
    centers: torch.Tensor,
    center_scores: torch.Tensor,
    offsets: torch.Tensor,
    *,
    thing_ids: Sequence[int],
    stuff_area: int,
    label_divisor: int,
    void: int = -1,
) -> PanopticOutput:
    """Group, merge and score, given centres found already (possibly at another resolution).

    semantic_logits ``[C, H, W]``; centers float ``[K, 2]`` (y, x) in this image's pixels;
    center_scores ``[K]``; offsets ``[2, H, W]`` (dy, dx) in this image's pixels.
    """
    confidence, labels = semantic_logits.float().softmax(0).max(0)
    instance_ids = group_pixels(centers, offsets)
    panoptic = merge_semantic_and_instance(labels, instance_ids, thing_ids, stuff_area, label_divisor, void)
    scores = segment_scores(panoptic, instance_ids, center_scores, confidence, label_divisor, void)
    return PanopticOutput(panoptic, labels, centers.float(), scores)


def to_coco_segments(
    panoptic: torch.Tensor,
    thing_ids: Sequence[int],
    label_divisor: int,
    scores: dict[int, float] | None = None,
    void: int = -1,
) -> tuple[np.ndarray, list[dict]]:
    """Panoptic values ``[H, W]`` (any device) -> COCO ids (CPU int32 ``[H, W]``) and their segments.

    Ids number the segments ``1..N`` in increasing panoptic value; 0 = void. Each segment is a
    JSON-ready ``{"id", "category_id", "isthing", "area", "bbox": [x, y, w, h], "score", "rle"}``
    (``category_id = value // label_divisor``; ``score`` from ``scores``, 0.0 where missing; ``rle``
    COCO compressed RLE of the segment's mask at full size). Areas and boxes are reduced on the device;
    only the int32 id map crosses to the CPU.
    """
    values, inverse, areas = torch.unique(panoptic, return_inverse=True, return_counts=True)
    real = values != void
    renumber = (real.cumsum(0) * real).to(torch.int32)  # unique index -> COCO id (0 for void)
    ids = renumber[inverse]
    boxes = _boxes(ids.long(), int(real.sum()))
    ids_cpu = ids.cpu().numpy()
    things = set(thing_ids)
    scores = scores or {}
    segments = []
    rows = zip(values[real].tolist(), areas[real].tolist(), boxes[1:].tolist(), strict=True)
    for seg_id, (value, area, (x0, y0, x1, y1)) in enumerate(rows, start=1):
        category = value // label_divisor
        segments.append(
            {
                "id": seg_id,
                "category_id": category,
                "isthing": category in things,
                "area": area,
                "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                "score": float(scores.get(value, 0.0)),
                "rle": _segment_rle(ids_cpu, seg_id, x0, x1),
            }
        )
    return ids_cpu, segments


def _boxes(ids: torch.Tensor, count: int) -> torch.Tensor:
    """Inclusive boxes ``[count + 1, 4]`` (x0, y0, x1, y1) of ids ``0..count`` in an id map ``[H, W]``."""
    h, w = ids.shape
    flat = ids.reshape(-1)
    ys = torch.arange(h, device=ids.device).repeat_interleave(w)
    xs = torch.arange(w, device=ids.device).repeat(h)
    lo = torch.full((count + 1,), max(h, w), dtype=torch.int64, device=ids.device)
    hi = torch.full((count + 1,), -1, dtype=torch.int64, device=ids.device)
    x0 = lo.scatter_reduce(0, flat, xs, "amin")
    y0 = lo.scatter_reduce(0, flat, ys, "amin")
    x1 = hi.scatter_reduce(0, flat, xs, "amax")
    y1 = hi.scatter_reduce(0, flat, ys, "amax")
    return torch.stack([x0, y0, x1, y1], dim=1)


def _segment_rle(ids: np.ndarray, seg_id: int, x0: int, x1: int) -> dict:
    """COCO compressed RLE of ``ids == seg_id`` at full size, looking only at columns x0..x1.

    COCO RLE runs column-major, starting with a run of zeros: the columns left of the box add to the
    first zero run and those right of it to the last, so the mask is never built at full width.
    """
    h, w = ids.shape
    flat = (ids[:, x0 : x1 + 1] == seg_id).T.reshape(-1)
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    if flat[0]:
        runs = np.concatenate([[0], runs])
    runs[0] += x0 * h
    trailing = (w - 1 - x1) * h
    if len(runs) % 2:  # the last run is a zero run
        runs[-1] += trailing
    elif trailing:
        runs = np.concatenate([runs, [trailing]])
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": [int(r) for r in runs]}, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}
