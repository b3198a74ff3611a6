"""PQ with panopticapi semantics on hand-built id maps with known answers, and against torchmetrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics.detection import PanopticQuality

from service.training.pq import (
    SHAPES_CATEGORIES,
    pq_compute_folders,
    pq_from_arrays,
    sample_segments,
    write_annotation,
    write_coco_panoptic,
    write_panoptic_json,
)
from service.training.shapes import ShapesConfig, make_sample

CATEGORIES = [
    {"id": 0, "name": "background", "isthing": 0},
    {"id": 1, "name": "circle", "isthing": 1},
    {"id": 2, "name": "rectangle", "isthing": 1},
]
BG, CIRCLE, RECT = 0, 1, 2


def segments(ids: np.ndarray, categories: dict[int, int], crowd: set[int] = frozenset()) -> list[dict]:
    """segments_info for an id map: ``categories`` maps segment id -> category id."""
    return [
        {"id": i, "category_id": c, "iscrowd": int(i in crowd), "area": int((ids == i).sum())}
        for i, c in categories.items()
    ]


def image(*boxes: tuple[int, int, int, int, int], fill: int = 1, size: int = 10) -> np.ndarray:
    """A size x size id map filled with ``fill``, then (id, y0, y1, x0, x1) boxes (end exclusive)."""
    ids = np.full((size, size), fill, np.int32)
    for seg_id, y0, y1, x0, x1 in boxes:
        ids[y0:y1, x0:x1] = seg_id
    return ids


def test_perfect_prediction_scores_one():
    ids = image((2, 0, 4, 0, 4), (3, 0, 4, 6, 10))
    info = segments(ids, {1: BG, 2: CIRCLE, 3: RECT})
    report = pq_from_arrays(ids, info, ids.copy(), info, CATEGORIES)
    for q in (report.all, report.things, report.stuff):
        assert (q.pq, q.sq, q.rq) == (1.0, 1.0, 1.0)
    assert report.all.n == 3 and report.things.n == 2 and report.stuff.n == 1


def test_one_false_positive_and_one_false_negative():
    gt = image((2, 0, 4, 0, 4), (3, 0, 4, 6, 10))  # background, a circle, a rectangle
    pred = image((2, 0, 4, 0, 4), (3, 6, 8, 6, 8))  # the circle; the rectangle missed; a spurious circle
    report = pq_from_arrays(
        gt,
        segments(gt, {1: BG, 2: CIRCLE, 3: RECT}),
        pred,
        segments(pred, {1: BG, 2: CIRCLE, 3: CIRCLE}),
        CATEGORIES,
    )
    background_iou = 64 / (68 + 80 - 64)
    assert report.per_class["background"] == pytest.approx(
        {"pq": round(background_iou, 4), "sq": round(background_iou, 4), "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    )
    assert report.per_class["circle"] == {"pq": 0.6667, "sq": 1.0, "rq": 0.6667, "tp": 1, "fp": 1, "fn": 0}
    assert report.per_class["rectangle"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert report.things.pq == pytest.approx((2 / 3 + 0) / 2)
    assert report.stuff.pq == pytest.approx(background_iou)
    assert report.all.pq == pytest.approx((background_iou + 2 / 3) / 3)


@pytest.mark.parametrize(("width", "matched"), [(2, False), (3, True)])
def test_iou_of_exactly_one_half_is_not_a_match(width, matched):
    gt = image((2, 0, 2, 0, 4))  # a circle of 8 pixels
    pred = image((2, 0, 2, 0, width))  # 4 of them (IoU 0.5) or 6 (IoU 0.75)
    report = pq_from_arrays(
        gt, segments(gt, {1: BG, 2: CIRCLE}), pred, segments(pred, {1: BG, 2: CIRCLE}), CATEGORIES
    )
    circle = report.per_class["circle"]
    assert (circle["tp"], circle["fp"], circle["fn"]) == ((1, 0, 0) if matched else (0, 1, 1))


def test_prediction_on_ground_truth_void_is_not_a_false_positive():
    gt = image((0, 0, 4, 0, 4))  # void (id 0) in a corner
    pred = image((2, 0, 4, 0, 3))  # a circle lying entirely on the void
    report = pq_from_arrays(gt, segments(gt, {1: BG}), pred, segments(pred, {1: BG, 2: CIRCLE}), CATEGORIES)
    assert report.per_class["circle"]["fp"] == 0 and report.things.n == 0


def test_union_leaves_out_predicted_pixels_on_void():
    gt = image((2, 0, 4, 0, 4), (0, 0, 4, 4, 8))  # a 16-pixel circle next to 16 void pixels
    pred = image((2, 0, 4, 0, 8))  # the circle spills over the void: IoU 16/32 without the rule
    report = pq_from_arrays(
        gt, segments(gt, {1: BG, 2: CIRCLE}), pred, segments(pred, {1: BG, 2: CIRCLE}), CATEGORIES
    )
    assert report.per_class["circle"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}


def test_crowd_is_never_matched_nor_missed_and_covers_same_class_predictions():
    gt = image((2, 0, 4, 0, 4))  # a crowd of circles
    pred = image((2, 0, 4, 0, 3), (3, 6, 8, 6, 8))  # a circle on the crowd; a rectangle elsewhere
    gt_info = segments(gt, {1: BG, 2: CIRCLE}, crowd={2})
    report = pq_from_arrays(gt, gt_info, pred, segments(pred, {1: BG, 2: CIRCLE, 3: RECT}), CATEGORIES)
    assert report.per_class["circle"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
    assert report.per_class["rectangle"]["fp"] == 1
    # The same circle prediction of another class than the crowd's is a false positive.
    pred_rect = segments(pred, {1: BG, 2: RECT, 3: RECT})
    assert pq_from_arrays(gt, gt_info, pred, pred_rect, CATEGORIES).per_class["rectangle"]["fp"] == 2


def test_png_and_json_must_list_the_same_segments():
    ids = image((2, 0, 4, 0, 4))
    with pytest.raises(KeyError, match="not in the segments"):
        pq_from_arrays(ids, segments(ids, {1: BG, 2: CIRCLE}), ids, segments(ids, {1: BG}), CATEGORIES)
    with pytest.raises(KeyError, match="absent from the id map"):
        info = [*segments(ids, {1: BG, 2: CIRCLE}), {"id": 9, "category_id": 1, "iscrowd": 0}]
        pq_from_arrays(ids, segments(ids, {1: BG, 2: CIRCLE}), ids, info, CATEGORIES)


def test_folders_round_trip_of_shapes_ground_truth_scores_one(tmp_path):
    samples = [(seed, make_sample(seed, (48, 64), ShapesConfig(stripes=True))) for seed in range(4)]
    gt_json = write_coco_panoptic(samples, tmp_path / "gt")
    annotations = [write_annotation(tmp_path / "pred", i, *sample_segments(s)) for i, s in samples]
    pred_json = write_panoptic_json(tmp_path / "pred.json", annotations, SHAPES_CATEGORIES)
    report = pq_compute_folders(gt_json, tmp_path / "gt" / "panoptic", pred_json, tmp_path / "pred")
    assert report.all.pq == 1.0 and report.images == 4
    written = json.loads(gt_json.read_text())
    assert [c["isthing"] for c in written["categories"]] == [0, 1, 1, 1, 0]
    assert all(s["iscrowd"] == 0 for a in written["annotations"] for s in a["segments_info"])


def test_ground_truth_of_a_sample_has_one_segment_per_shape_and_stuff_class():
    sample = make_sample(3, (64, 64), ShapesConfig(stripes=True))
    ids, info = sample_segments(sample)
    things = [s for s in info if s["category_id"] in (1, 2, 3)]
    assert len(things) == len(sample.instance_classes)
    assert (ids > 0).all() and sum(s["area"] for s in info) == ids.size


# --- torchmetrics ------------------------------------------------------------------------------------

UNKNOWN = 99  # torchmetrics' void: any category outside things and stuffs


def to_torchmetrics(ids: np.ndarray, info: list[dict]) -> torch.Tensor:
    """COCO ids + segments -> torchmetrics' (1, H, W, 2) of (category_id, instance id); void = UNKNOWN."""
    category = np.full(ids.shape, UNKNOWN)
    for s in info:
        category[ids == s["id"]] = s["category_id"]
    return torch.from_numpy(np.stack([category, ids], -1)[None]).long()


def torchmetrics_pq(gt, gt_info, pred, pred_info) -> list[float]:
    metric = PanopticQuality(
        things={1, 2}, stuffs={0}, allow_unknown_preds_category=True, return_sq_and_rq=True
    )
    return metric(to_torchmetrics(pred, pred_info), to_torchmetrics(gt, gt_info)).tolist()


def test_torchmetrics_agrees_without_void_or_crowd():
    gt = image((2, 0, 4, 0, 4), (3, 0, 4, 6, 10))
    pred = image((2, 0, 4, 0, 5), (3, 6, 8, 6, 8))
    gt_info, pred_info = (
        segments(gt, {1: BG, 2: CIRCLE, 3: RECT}),
        segments(pred, {1: BG, 2: CIRCLE, 3: CIRCLE}),
    )
    ours = pq_from_arrays(gt, gt_info, pred, pred_info, CATEGORIES).all
    assert torchmetrics_pq(gt, gt_info, pred, pred_info) == pytest.approx(
        [ours.pq, ours.sq, ours.rq], abs=1e-6
    )


def test_torchmetrics_differs_on_a_ground_truth_segment_predicted_as_void():
    # panopticapi: the missed circle is a false negative (void predictions earn nothing); torchmetrics
    # skips a ground-truth segment that is more than half predicted as void, so it scores higher.
    gt = image((2, 0, 4, 0, 4), (3, 6, 9, 6, 9))
    pred = image((0, 0, 4, 0, 4), (3, 6, 9, 6, 9))  # the first circle is predicted as void
    gt_info, pred_info = segments(gt, {1: BG, 2: CIRCLE, 3: CIRCLE}), segments(pred, {1: BG, 3: CIRCLE})
    ours = pq_from_arrays(gt, gt_info, pred, pred_info, CATEGORIES)
    assert ours.per_class["circle"]["fn"] == 1 and ours.things.pq == pytest.approx(2 / 3)
    theirs = torchmetrics_pq(gt, gt_info, pred, pred_info)
    assert theirs[0] > ours.all.pq + 0.1


def test_torchmetrics_differs_on_crowd():
    # torchmetrics has no crowd: the crowd region is an ordinary circle segment, a prediction on it
    # is matched (or a false positive) instead of ignored.
    gt = image((2, 0, 4, 0, 4), (3, 6, 9, 6, 9))
    pred = image((3, 6, 9, 6, 9), (4, 0, 4, 0, 2))  # half the crowd predicted as one circle
    gt_info = segments(gt, {1: BG, 2: CIRCLE, 3: CIRCLE}, crowd={2})
    pred_info = segments(pred, {1: BG, 3: CIRCLE, 4: CIRCLE})
    ours = pq_from_arrays(gt, gt_info, pred, pred_info, CATEGORIES)
    assert ours.per_class["circle"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    theirs = torchmetrics_pq(gt, gt_info, pred, pred_info)
    assert theirs[0] < ours.all.pq - 0.1
