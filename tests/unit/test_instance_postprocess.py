"""Instance post-processing on hand-built detections: RLE, boxes, the id map, polygons, COCO results.

The COCO checks go through pycocotools itself: ``COCO.loadRes`` must accept what we produce, and
``COCOeval`` (segm) must score it against a ground truth built here by hand.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from service.imaging.encode import decode_label_png, decode_rle, encode_label_png, encode_polygons, rle_area
from service.imaging.instance import (
    class_pixels,
    coco_bbox,
    describe_instances,
    full_mask,
    instance_id_map,
    instance_polygons,
    instance_rles,
    make_instances,
    to_coco_results,
)

H, W = 40, 60
NAMES = {0: "background", 1: "circle", 2: "square"}


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def block(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def crop_of(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A mask's tight crop and its (x0, y0), the form the segmenter hands over."""
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return mask[y0:y1, x0:x1], (int(x0), int(y0))


def hand_built(masks: list[np.ndarray], classes: list[int], scores: list[float]):
    crops, origins = zip(*(crop_of(m) for m in masks), strict=True)
    boxes = [
        [x - 0.5, y - 0.25, x + c.shape[1] + 0.5, y + c.shape[0]]
        for c, (x, y) in zip(crops, origins, strict=True)
    ]
    return make_instances(H, W, classes, scores, boxes, list(crops), list(origins))


@pytest.fixture
def scene():
    """Three instances, given out of score order; the square and the second circle overlap."""
    masks = [disc(12, 14, 7), block(20, 34, 30, 50), disc(24, 44, 6)]
    return masks, hand_built(masks, [1, 2, 1], [0.6, 0.9, 0.75])


def test_instances_are_sorted_by_score_with_everything_that_belongs_to_them(scene):
    masks, inst = scene
    assert inst.scores.tolist() == pytest.approx([0.9, 0.75, 0.6])
    assert inst.class_ids.tolist() == [2, 1, 1]
    for k, original in enumerate([masks[1], masks[2], masks[0]]):
        np.testing.assert_array_equal(full_mask(inst, k), original)


def test_rle_round_trips_to_the_exact_mask_with_its_area(scene):
    masks, inst = scene
    rles = instance_rles(inst)
    for k, original in enumerate([masks[1], masks[2], masks[0]]):
        rle = rles[k]
        assert rle["size"] == [H, W] and isinstance(rle["counts"], str)
        np.testing.assert_array_equal(decode_rle(rle), original)
        assert rle_area(rle) == original.sum()


def test_described_instances_carry_class_score_box_area_and_the_asked_payload(scene):
    masks, inst = scene
    described = describe_instances(inst, NAMES, "rle")
    assert [d["id"] for d in described] == [1, 2, 3]
    assert [(d["category_id"], d["name"]) for d in described] == [(2, "square"), (1, "circle"), (1, "circle")]
    assert [d["area"] for d in described] == [int(m.sum()) for m in (masks[1], masks[2], masks[0])]
    # The box of the square block rows 20..33, cols 30..49, as hand_built widened it: COCO [x, y, w, h].
    assert described[0]["bbox"] == [29.5, 19.75, 21.0, 14.25]
    assert all("polygons" not in d for d in described)
    assert all("rle" not in d and "polygons" not in d for d in describe_instances(inst, NAMES, "png"))
    polygons = describe_instances(inst, NAMES, "polygons")
    assert all(d["polygons"] and "rle" not in d for d in polygons)


def test_coco_bbox_is_float32_arithmetic():
    box = np.array([1.1, 2.2, 10.3, 7.9], np.float32)
    *_, w, h = coco_bbox(box)
    assert (w, h) == (float(box[2] - box[0]), float(box[3] - box[1]))
    assert np.float32(w) == w  # representable exactly in a protobuf float


def test_the_id_map_numbers_instances_by_score_and_gives_overlaps_to_the_higher_score(scene):
    masks, inst = scene
    ids = instance_id_map(inst)
    assert ids.dtype == np.uint8
    overlap = masks[1] & masks[2]
    assert overlap.any()
    assert np.all(ids[overlap] == 1)  # the square (0.9) beats the circle (0.75)
    assert np.all(ids[masks[2] & ~masks[1]] == 2)
    assert np.all(ids[masks[0]] == 3)
    assert np.all(ids[~(masks[0] | masks[1] | masks[2])] == 0)
    np.testing.assert_array_equal(decode_label_png(encode_label_png(ids)), ids)
    assert class_pixels(inst, ids) == {
        0: int((ids == 0).sum()),
        1: int(((ids == 2) | (ids == 3)).sum()),
        2: int(masks[1].sum()),
    }


def test_past_255_instances_the_id_map_is_16_bit_and_round_trips():
    n = 300
    crops = [np.ones((1, 1), bool)] * n
    origins = [(k % W, k // W) for k in range(n)]
    boxes = [[x, y, x + 1, y + 1] for x, y in origins]
    inst = make_instances(H, W, [1] * n, np.linspace(1, 0.1, n), boxes, crops, origins)
    ids = instance_id_map(inst)
    assert ids.dtype == np.uint16 and int(ids.max()) == n
    decoded = decode_label_png(encode_label_png(ids))
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, ids)


def test_polygons_from_the_crop_equal_polygons_from_the_whole_mask(scene):
    _, inst = scene
    for k in range(len(inst)):
        assert instance_polygons(inst, k) == encode_polygons(full_mask(inst, k))


def test_an_empty_mask_and_no_instances_are_valid():
    inst = make_instances(H, W, [1], [0.5], [[3, 3, 4, 4]], [np.zeros((0, 0), bool)], [(3, 3)])
    (only,) = describe_instances(inst, NAMES, "rle")
    assert only["area"] == 0 and decode_rle(only["rle"]).sum() == 0
    assert instance_polygons(inst, 0) == []
    none = make_instances(H, W, [], [], np.zeros((0, 4)), [], np.zeros((0, 2)))
    assert describe_instances(none, NAMES, "rle") == []
    assert not instance_id_map(none).any()
    assert class_pixels(none, instance_id_map(none)) == {0: H * W}


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (
            lambda: make_instances(H, W, [1, 2], [0.5], [[0, 0, 1, 1]], [np.ones((1, 1), bool)], [(0, 0)]),
            "one of",
        ),
        (
            lambda: make_instances(H, W, [1], [0.5], [[0, 0, 1, 1]], [np.ones((2, 2), bool)], [(W - 1, 0)]),
            "leaves",
        ),
        (lambda: make_instances(H, W, [1], [0.5], [[0, 0, 1, 1]], [np.ones(3, bool)], [(0, 0)]), "[h, w]"),
    ],
)
def test_inconsistent_detections_are_refused(build, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        build()


# --- COCO: loadRes and COCOeval -------------------------------------------------------------------------


def ground_truth(masks: list[np.ndarray], classes: list[int], image_id: int = 7) -> COCO:
    """A COCO object made by hand: one image, one annotation per mask (RLE via pycocotools)."""
    from service.imaging.encode import encode_rle, rle_bbox

    annotations = []
    for i, (mask, category) in enumerate(zip(masks, classes, strict=True), start=1):
        rle = encode_rle(mask)
        annotations.append(
            {
                "id": i,
                "image_id": image_id,
                "category_id": category,
                "segmentation": rle,
                "area": float(mask.sum()),
                "bbox": [float(v) for v in rle_bbox(rle)],
                "iscrowd": 0,
            }
        )
    gt = COCO()
    gt.dataset = {
        "images": [{"id": image_id, "height": H, "width": W, "file_name": "scene.png"}],
        "annotations": annotations,
        "categories": [{"id": c, "name": NAMES[c]} for c in (1, 2)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def segm_ap(gt: COCO, results: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        detections = gt.loadRes(results)
        evaluator = COCOeval(gt, detections, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def test_load_res_accepts_our_results_and_keeps_masks_and_scores(scene):
    masks, inst = scene
    gt = ground_truth(masks, [1, 2, 1])
    results = to_coco_results(describe_instances(inst, NAMES, "rle"), image_id=7)
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = gt.loadRes(results)
    anns = loaded.loadAnns(loaded.getAnnIds(imgIds=[7]))
    assert len(anns) == 3
    for ann, k in zip(sorted(anns, key=lambda a: -a["score"]), range(3), strict=True):
        np.testing.assert_array_equal(loaded.annToMask(ann).astype(bool), full_mask(inst, k))
        # Area and box from the mask (segm results carry no bbox, see to_coco_results).
        rows, cols = np.nonzero(full_mask(inst, k))
        assert ann["area"] == rows.size
        assert list(ann["bbox"]) == [cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1]


def test_identical_detections_score_ap_1_and_a_wrong_one_does_not(scene):
    masks, inst = scene
    gt = ground_truth(masks, [1, 2, 1])
    described = describe_instances(inst, NAMES, "rle")
    assert segm_ap(gt, to_coco_results(described, 7)) == pytest.approx(1.0)
    # The square reported as a circle: its class now has a false positive and a miss.
    wrong = [dict(d, category_id=1) if d["category_id"] == 2 else d for d in described]
    assert segm_ap(gt, to_coco_results(wrong, 7)) < 0.9


def test_coco_results_need_the_rle():
    inst = make_instances(H, W, [1], [0.5], [[0, 0, 2, 2]], [np.ones((2, 2), bool)], [(0, 0)])
    with pytest.raises(ValueError, match="format rle"):
        to_coco_results(describe_instances(inst, NAMES, "png"), 1)
