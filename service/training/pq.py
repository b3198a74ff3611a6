"""Panoptic quality (Kirillov et al., 2019) with the COCO reference semantics, on COCO panoptic files.

A port of ``cocodataset/panopticapi`` ``panopticapi/evaluation.py`` (``pq_compute``), which is not on
PyPI. Per image: a predicted and a ground-truth segment of the same category match when their IoU is
*strictly* above 0.5 (then the match is unique); the union leaves out predicted pixels that fall on
void (id 0) in the ground truth; crowd ground truth (``iscrowd: 1``) is never matched and never a false
negative; an unmatched prediction is not a false positive when more than half of it lies on void or on
a crowd region of its own category. PQ = sum(IoU of matches) / (TP + FP/2 + FN/2) = SQ * RQ per
category, averaged over the categories with TP + FP + FN > 0, for All, Things and Stuff.

Differences from torchmetrics' ``PanopticQuality`` (1.9): it has no crowd, so crowd regions count as
ordinary segments; it also leaves void-predicted pixels out of the union, and it does not count an
unmatched ground-truth segment as a false negative when more than half of it is predicted as void.
panopticapi counts that false negative (void predictions earn nothing), so scores can differ.

Files (as the service writes them): an RGB PNG per image with ``id = R + 256 G + 256^2 B`` (0 = void)
and a JSON ``{"annotations": [{"image_id", "file_name", "segments_info": [{"id", "category_id",
"iscrowd", "area", "bbox"}]}], "categories": [{"id", "name", "isthing"}]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.imaging.panoptic_format import decode_panoptic_png, encode_panoptic_png
from service.training.shapes import PANOPTIC_CLASSES, SHAPE_CLASSES, Sample

VOID = 0
# gt * OFFSET + pred keys a pair of segment ids uniquely (ids are below 256**3).
OFFSET = 256**3

SHAPES_CATEGORIES: tuple[dict, ...] = tuple(
    {"id": i, "name": name, "isthing": int(i in SHAPE_CLASSES)} for i, name in enumerate(PANOPTIC_CLASSES)
)


@dataclass
class ClassStat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


@dataclass
class PQStat:
    """Matching statistics per category id, accumulated over images."""

    per_class: dict[int, ClassStat] = field(default_factory=dict)
    images: int = 0

    def stat(self, category: int) -> ClassStat:
        return self.per_class.setdefault(category, ClassStat())

    def add_image(
        self,
        gt_ids: np.ndarray,
        gt_segments: Sequence[dict],
        pred_ids: np.ndarray,
        pred_segments: Sequence[dict],
    ) -> None:
        """Match one image's segments (ids ``[H, W]``, 0 = void) as panopticapi ``pq_compute_single_core``."""
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(f"ground truth {gt_ids.shape} and prediction {pred_ids.shape} differ in size")
        gt = {int(s["id"]): dict(s) for s in gt_segments}
        pred = _checked_predictions(pred_ids, pred_segments)
        for seg_id, area in zip(*np.unique(gt_ids, return_counts=True), strict=True):
            if int(seg_id) in gt and "area" not in gt[int(seg_id)]:
                gt[int(seg_id)]["area"] = int(area)
        pairs = gt_ids.astype(np.uint64) * OFFSET + pred_ids.astype(np.uint64)
        keys, counts = np.unique(pairs, return_counts=True)
        overlap = {(int(k // OFFSET), int(k % OFFSET)): int(n) for k, n in zip(keys, counts, strict=True)}
        gt_matched, pred_matched = self._matches(gt, pred, overlap)
        crowd_of_class: dict[int, int] = {}
        for gt_id, info in gt.items():
            if gt_id in gt_matched:
                continue
            if info.get("iscrowd", 0) == 1:
                crowd_of_class[info["category_id"]] = gt_id
                continue
            self.stat(info["category_id"]).fn += 1
        for pred_id, info in pred.items():
            if pred_id in pred_matched:
                continue
            ignored = overlap.get((VOID, pred_id), 0)
            if info["category_id"] in crowd_of_class:
                ignored += overlap.get((crowd_of_class[info["category_id"]], pred_id), 0)
            if ignored / info["area"] > 0.5:  # mostly on void or same-class crowd: not a false positive
                continue
            self.stat(info["category_id"]).fp += 1
        self.images += 1

    def _matches(self, gt: dict, pred: dict, overlap: dict) -> tuple[set[int], set[int]]:
        gt_matched: set[int] = set()
        pred_matched: set[int] = set()
        for (gt_id, pred_id), intersection in overlap.items():
            if gt_id not in gt or pred_id not in pred:
                continue
            g, p = gt[gt_id], pred[pred_id]
            if g.get("iscrowd", 0) == 1 or g["category_id"] != p["category_id"]:
                continue
            union = p["area"] + g["area"] - intersection - overlap.get((VOID, pred_id), 0)
            iou = intersection / union
            if iou > 0.5:  # strictly: IoU exactly 0.5 is not a match
                stat = self.stat(g["category_id"])
                stat.tp += 1
                stat.iou += iou
                gt_matched.add(gt_id)
                pred_matched.add(pred_id)
        return gt_matched, pred_matched

    def report(self, categories: Sequence[Mapping]) -> PQReport:
        return PQReport.from_stat(self, categories)


def _checked_predictions(pred_ids: np.ndarray, pred_segments: Sequence[dict]) -> dict[int, dict]:
    """Predicted segments by id with their area from the PNG; PNG and JSON must list the same ids."""
    pred = {int(s["id"]): dict(s) for s in pred_segments}
    if len(pred) != len(pred_segments):
        raise KeyError("duplicate segment ids in the predicted segments")
    listed = set(pred)
    for seg_id, area in zip(*np.unique(pred_ids, return_counts=True), strict=True):
        seg_id = int(seg_id)
        if seg_id not in pred:
            if seg_id == VOID:
                continue
            raise KeyError(f"segment {seg_id} is in the id map but not in the segments")
        pred[seg_id]["area"] = int(area)
        listed.discard(seg_id)
    if listed:
        raise KeyError(f"segments {sorted(listed)} are listed but absent from the id map")
    return pred


@dataclass(frozen=True)
class Quality:
    pq: float
    sq: float
    rq: float
    n: int

    def as_dict(self) -> dict:
        return {"pq": round(self.pq, 4), "sq": round(self.sq, 4), "rq": round(self.rq, 4), "n": self.n}


@dataclass(frozen=True)
class PQReport:
    all: Quality
    things: Quality
    stuff: Quality
    per_class: dict[str, dict]
    images: int

    @property
    def pq(self) -> float:
        return self.all.pq

    def as_dict(self) -> dict:
        return {
            "all": self.all.as_dict(),
            "things": self.things.as_dict(),
            "stuff": self.stuff.as_dict(),
            "per_class": self.per_class,
            "images": self.images,
        }

    @classmethod
    def from_stat(cls, stat: PQStat, categories: Sequence[Mapping]) -> PQReport:
        per_class = {}
        for c in categories:
            s = stat.per_class.get(c["id"], ClassStat())
            pq, sq, rq = _class_quality(s)
            per_class[str(c.get("name", c["id"]))] = {
                "pq": round(pq, 4), "sq": round(sq, 4), "rq": round(rq, 4), "tp": s.tp, "fp": s.fp, "fn": s.fn
            }  # fmt: skip
        return cls(
            all=_average(stat, categories, None),
            things=_average(stat, categories, True),
            stuff=_average(stat, categories, False),
            per_class=per_class,
            images=stat.images,
        )


def _class_quality(s: ClassStat) -> tuple[float, float, float]:
    denominator = s.tp + 0.5 * s.fp + 0.5 * s.fn
    if denominator == 0:
        return 0.0, 0.0, 0.0
    sq = s.iou / s.tp if s.tp else 0.0
    rq = s.tp / denominator
    return s.iou / denominator, sq, rq


def _average(stat: PQStat, categories: Sequence[Mapping], isthing: bool | None) -> Quality:
    """Mean over the categories (of the kind asked) with TP + FP + FN > 0; zeros when there are none."""
    rows = []
    for c in categories:
        if isthing is not None and bool(c.get("isthing", 0)) != isthing:
            continue
        s = stat.per_class.get(c["id"], ClassStat())
        if s.tp + s.fp + s.fn > 0:
            rows.append(_class_quality(s))
    if not rows:
        return Quality(0.0, 0.0, 0.0, 0)
    pq, sq, rq = (float(np.mean(v)) for v in zip(*rows, strict=True))
    return Quality(pq, sq, rq, len(rows))


def pq_from_arrays(
    gt_ids: np.ndarray,
    gt_segments: Sequence[dict],
    pred_ids: np.ndarray,
    pred_segments: Sequence[dict],
    categories: Sequence[Mapping],
) -> PQReport:
    """PQ of one image given as id maps ``[H, W]`` (0 = void) and their segments_info lists."""
    stat = PQStat()
    stat.add_image(np.asarray(gt_ids), gt_segments, np.asarray(pred_ids), pred_segments)
    return stat.report(categories)


def pq_compute_folders(gt_json: Path, gt_dir: Path, pred_json: Path, pred_dir: Path) -> PQReport:
    """PQ over every ground-truth image; categories come from the ground-truth JSON.

    Raises ``KeyError`` when an image has no prediction (as panopticapi does).
    """
    gt = json.loads(Path(gt_json).read_text())
    pred = json.loads(Path(pred_json).read_text())
    predictions = {a["image_id"]: a for a in pred["annotations"]}
    stat = PQStat()
    for annotation in gt["annotations"]:
        if annotation["image_id"] not in predictions:
            raise KeyError(f"no prediction for image {annotation['image_id']}")
        p = predictions[annotation["image_id"]]
        gt_ids = decode_panoptic_png((Path(gt_dir) / annotation["file_name"]).read_bytes())
        pred_ids = decode_panoptic_png((Path(pred_dir) / p["file_name"]).read_bytes())
        stat.add_image(gt_ids, annotation["segments_info"], pred_ids, p["segments_info"])
    return stat.report(gt["categories"])


# --- writing COCO panoptic files -------------------------------------------------------------------


def sample_segments(sample: Sample) -> tuple[np.ndarray, list[dict]]:
    """Ground truth of a shapes sample: ids int32 ``[H, W]`` (one per shape, one per stuff class present)
    and segments_info ``{"id", "category_id", "iscrowd", "area", "bbox"}``; no void, no crowd."""
    ids = np.zeros(sample.semantic.shape, np.int32)
    segments: list[tuple[np.ndarray, int]] = [
        (sample.instances == i, c) for i, c in sorted(sample.instance_classes.items())
    ]
    stuff = sample.instances == 0
    for c in sorted(set(np.unique(sample.semantic[stuff]).tolist())):
        segments.append((stuff & (sample.semantic == c), int(c)))
    info = []
    for seg_id, (mask, category) in enumerate(segments, start=1):
        ids[mask] = seg_id
        info.append({"id": seg_id, "category_id": category, "iscrowd": 0, **_area_bbox(mask)})
    return ids, info


def _area_bbox(mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {"area": int(ys.size), "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]}


def write_annotation(folder: Path, image_id: int, ids: np.ndarray, segments: Iterable[dict]) -> dict:
    """Write ``{image_id}.png`` into ``folder``; returns its annotation (JSON-ready segments_info).

    Keeps the COCO keys of each segment (id, category_id, iscrowd, area, bbox) plus ``score`` when
    present; the service's RLE is left out (the PNG holds the masks).
    """
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{image_id:012d}.png"
    (folder / name).write_bytes(encode_panoptic_png(ids))
    info = []
    for s in segments:
        row = {k: s[k] for k in ("id", "category_id", "area", "bbox", "score") if k in s}
        info.append({**row, "iscrowd": int(s.get("iscrowd", 0))})
    return {"image_id": image_id, "file_name": name, "segments_info": info}


def write_panoptic_json(path: Path, annotations: list[dict], categories: Sequence[Mapping]) -> Path:
    images = [{"id": a["image_id"], "file_name": a["file_name"]} for a in annotations]
    payload = {"images": images, "annotations": annotations, "categories": [dict(c) for c in categories]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def write_coco_panoptic(
    samples: Iterable[tuple[int, Sample]], folder: Path, categories: Sequence[Mapping] = SHAPES_CATEGORIES
) -> Path:
    """Ground truth of (image_id, shapes sample) pairs as COCO panoptic: ``folder/panoptic/*.png`` and
    ``folder/panoptic.json``; returns the JSON path."""
    folder = Path(folder)
    annotations = []
    for image_id, sample in samples:
        ids, info = sample_segments(sample)
        annotations.append(write_annotation(folder / "panoptic", image_id, ids, info))
    return write_panoptic_json(folder / "panoptic.json", annotations, categories)
