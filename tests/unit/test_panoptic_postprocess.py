"""Panoptic-DeepLab post-processing on hand-built tensors with known answers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from service.imaging.encode import decode_rle, encode_rle
from service.imaging.panoptic import (
    PanopticOutput,
    _segment_rle,
    find_instance_centers,
    group_pixels,
    merge_semantic_and_instance,
    panoptic_from_centers,
    to_coco_segments,
)


def panoptic_segmentation(
    semantic_logits: torch.Tensor,
    center_heatmap: torch.Tensor,
    offsets: torch.Tensor,
    *,
    thing_ids: Sequence[int],
    center_threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int | None = 200,
    stuff_area: int = 64,
    label_divisor: int = 1000,
    void: int = -1,
) -> PanopticOutput:
    """Panoptic-DeepLab post-processing of ONE image, every input at the same resolution (the tests'
    entry point; the runner finds centres at the model's scale and groups at the client's).

    semantic_logits: float ``[C, H, W]``; center_heatmap: float ``[1, H, W]`` (regressed Gaussians,
    peak ~1 at instance centres); offsets: float ``[2, H, W]``, (dy, dx) in pixels from each pixel to
    its centre. Returns a ``PanopticOutput`` (panoptic values, semantic argmax, centres, scores).
    """
    if semantic_logits.dim() != 3 or semantic_logits.shape[1:] != center_heatmap.shape[1:]:
        raise ValueError(
            f"semantic_logits [C, H, W] and center_heatmap [1, H, W] must share H, W, got "
            f"{list(semantic_logits.shape)} and {list(center_heatmap.shape)}"
        )
    centers = find_instance_centers(center_heatmap, center_threshold, nms_kernel, top_k)
    center_scores = center_heatmap[0, centers[:, 0], centers[:, 1]]
    return panoptic_from_centers(
        semantic_logits,
        centers,
        center_scores,
        offsets,
        thing_ids=thing_ids,
        stuff_area=stuff_area,
        label_divisor=label_divisor,
        void=void,
    )


THINGS = (1, 2, 3)
H, W = 12, 16


def gaussian(peaks: list[tuple[int, int, float]], h: int = H, w: int = W, sigma: float = 1.0) -> torch.Tensor:
    """A [1, H, W] heatmap: the pixel-wise max of Gaussians with the given (y, x, peak)."""
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    heat = torch.zeros(h, w)
    for y, x, peak in peaks:
        heat = torch.maximum(heat, peak * torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)))
    return heat[None]


def offsets_to(centers_map: torch.Tensor) -> torch.Tensor:
    """Offsets [2, H, W] pointing every pixel at the (y, x) stored in centers_map [2, H, W]."""
    h, w = centers_map.shape[1:]
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.stack([centers_map[0] - yy, centers_map[1] - xx])


def logits_for(labels: torch.Tensor, num_classes: int = 5) -> torch.Tensor:
    """Confident logits [C, H, W] whose argmax is ``labels``."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).permute(2, 0, 1).float() * 10


def run(labels, heat, offsets, **kwargs):
    params = {"thing_ids": THINGS, "center_threshold": 0.1, "nms_kernel": 3, "top_k": 200, "stuff_area": 4}
    return panoptic_segmentation(logits_for(labels), heat, offsets, **{**params, **kwargs})


# --- find_instance_centers ---------------------------------------------------------------------------


def test_centers_are_local_maxima_above_threshold_highest_first():
    heat = gaussian([(3, 3, 0.8), (8, 12, 0.95), (9, 2, 0.05)])
    centers = find_instance_centers(heat, threshold=0.1, nms_kernel=3, top_k=None)
    assert centers.tolist() == [[8, 12], [3, 3]]  # the 0.05 peak is below the threshold


def test_nms_suppresses_a_lower_peak_inside_the_kernel():
    heat = torch.zeros(1, 9, 9)
    heat[0, 4, 4], heat[0, 4, 6] = 0.9, 0.8
    assert find_instance_centers(heat, 0.1, nms_kernel=5, top_k=None).tolist() == [[4, 4]]
    assert find_instance_centers(heat, 0.1, nms_kernel=3, top_k=None).tolist() == [[4, 4], [4, 6]]


def test_top_k_larger_than_the_candidates_returns_them_all():
    # detectron2 raises "selected index k out of range" here (k > pixels) and would drop the k-th.
    heat = torch.tensor([[[0.9, 0.0], [0.0, 0.5]]])
    centers = find_instance_centers(heat, threshold=0.1, nms_kernel=1, top_k=200)
    assert centers.tolist() == [[0, 0], [1, 1]]


def test_top_k_keeps_exactly_the_k_best():
    heat = gaussian([(2, 2, 0.5), (2, 8, 0.9), (8, 2, 0.7), (8, 12, 0.6)])
    assert find_instance_centers(heat, 0.1, 3, top_k=2).tolist() == [[2, 8], [8, 2]]


def test_even_kernel_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="odd"):
        find_instance_centers(torch.zeros(1, 4, 4), 0.1, nms_kernel=4, top_k=1)
    with pytest.raises(ValueError, match=r"\[1, H, W\]"):
        find_instance_centers(torch.zeros(2, 4, 4), 0.1, nms_kernel=3, top_k=1)


# --- group_pixels / merge --------------------------------------------------------------------------


def test_group_pixels_takes_the_nearest_centre_to_where_the_offset_points():
    centers = torch.tensor([[1, 1], [1, 6]])
    target = torch.zeros(2, 3, 8)
    target[1, :, :4], target[1, :, 4:] = 6.0, 1.0  # left half points right, right half points left
    target[0] = 1.0
    ids = group_pixels(centers, offsets_to(target))
    assert (ids[:, :4] == 2).all() and (ids[:, 4:] == 1).all()


def test_group_pixels_without_centres_is_all_zero():
    assert not group_pixels(torch.zeros(0, 2), torch.zeros(2, 5, 6)).any()


def test_merge_votes_the_majority_class_and_counts_per_class():
    labels = torch.tensor([[1, 1, 2, 0], [1, 2, 2, 0], [3, 3, 0, 4]])
    ids = torch.tensor([[1, 1, 2, 0], [1, 2, 2, 0], [3, 3, 0, 0]])
    ids[0, 1] = 2  # instance 2 now has two classes: 2 (3 pixels) beats 1 (1 pixel)
    panoptic = merge_semantic_and_instance(labels, ids, THINGS, stuff_area=2, label_divisor=1000)
    expected = torch.tensor([[1001, 2001, 2001, 0], [1001, 2001, 2001, 0], [3001, 3001, 0, -1]])
    assert panoptic.tolist() == expected.tolist()  # stripes (4): one pixel < stuff_area -> void


def test_merge_thing_pixels_without_an_instance_are_void():
    labels = torch.tensor([[1, 1], [0, 0]])
    panoptic = merge_semantic_and_instance(labels, torch.zeros(2, 2, dtype=torch.long), THINGS, 0, 1000)
    assert panoptic.tolist() == [[-1, -1], [0, 0]]


# --- panoptic_segmentation scenarios ---------------------------------------------------------------


def test_empty_image_without_centres_is_stuff_and_void():
    labels = torch.zeros(H, W, dtype=torch.long)
    labels[:, 10:] = 1  # a thing class but no centre predicted
    labels[:2, :4] = 4
    out = run(labels, torch.zeros(1, H, W), torch.zeros(2, H, W))
    assert out.centers.shape == (0, 2)
    assert (out.panoptic[:, 10:] == -1).all()
    assert (out.panoptic[:2, :4] == 4000).all()
    assert (out.panoptic[2:, :10] == 0).all()


def test_one_instance():
    labels = torch.zeros(H, W, dtype=torch.long)
    labels[3:8, 4:9] = 2
    target = torch.zeros(2, H, W)
    target[0], target[1] = 5.0, 6.0
    out = run(labels, gaussian([(5, 6, 0.9)]), offsets_to(target))
    assert out.centers.tolist() == [[5.0, 6.0]]
    assert (out.panoptic[3:8, 4:9] == 2001).all()
    assert int((out.panoptic == 2001).sum()) == 25 and int((out.panoptic == 0).sum()) == H * W - 25
    assert out.scores[2001] == pytest.approx(0.9, abs=1e-4)
    assert out.scores[0] == pytest.approx(1.0, abs=1e-3)  # mean softmax of very confident logits


def test_two_touching_instances_of_one_class_are_split_by_their_offsets():
    labels = torch.zeros(H, W, dtype=torch.long)
    labels[2:8, 2:14] = 1  # one connected circle-class region made of two instances
    target = torch.zeros(2, H, W)
    target[0] = 4.0
    target[1, :, :8], target[1, :, 8:] = 5.0, 11.0
    out = run(labels, gaussian([(4, 5, 1.0), (4, 11, 0.8)]), offsets_to(target))
    assert (out.panoptic[2:8, 2:8] == 1001).all()
    assert (out.panoptic[2:8, 8:14] == 1002).all()
    _, segments = to_coco_segments(out.panoptic, THINGS, 1000, out.scores)
    assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in segments] == [
        (1, 0, False, H * W - 72),
        (2, 1, True, 36),
        (3, 1, True, 36),
    ]
    assert segments[1]["bbox"] == [2, 2, 6, 6] and segments[2]["bbox"] == [8, 2, 6, 6]
    assert segments[1]["score"] == pytest.approx(1.0) and segments[2]["score"] == pytest.approx(0.8)


def test_an_instance_cut_by_the_border_groups_to_its_centre_at_the_edge():
    labels = torch.zeros(H, W, dtype=torch.long)
    labels[4:9, :3] = 3  # the visible part of a triangle leaving the image on the left
    labels[4:9, 10:14] = 3  # another triangle, well inside
    target = torch.zeros(2, H, W)
    target[0] = 6.0
    target[1, :, :7] = -1.5  # offsets point just outside the image, where the full shape's centre is
    target[1, :, 7:] = 12.0
    out = run(labels, gaussian([(6, 0, 0.7), (6, 12, 0.9)]), offsets_to(target))
    assert (out.panoptic[4:9, :3] == 3002).all()  # the weaker centre is found second
    assert (out.panoptic[4:9, 10:14] == 3001).all()


def test_top_k_larger_than_candidates_in_the_full_pipeline():
    labels = torch.zeros(H, W, dtype=torch.long)
    labels[2:6, 2:6] = 1
    target = torch.zeros(2, H, W)
    target[0], target[1] = 3.0, 3.0
    out = run(labels, gaussian([(3, 3, 0.9)]), offsets_to(target), top_k=10_000)
    assert (out.panoptic[2:6, 2:6] == 1001).all()


def test_stuff_below_the_area_threshold_is_void():
    labels = torch.zeros(H, W, dtype=torch.long)
    labels[0, :3] = 4  # 3 pixels of stripes
    out = run(labels, torch.zeros(1, H, W), torch.zeros(2, H, W), stuff_area=4)
    assert (out.panoptic[0, :3] == -1).all() and int((out.panoptic == 0).sum()) == H * W - 3
    ids, segments = to_coco_segments(out.panoptic, THINGS, 1000, out.scores)
    assert (ids[0, :3] == 0).all() and len(segments) == 1 and segments[0]["category_id"] == 0


# --- to_coco_segments ------------------------------------------------------------------------------


def test_coco_segments_describe_the_id_map():
    panoptic = torch.full((6, 7), -1, dtype=torch.long)
    panoptic[:3] = 0
    panoptic[3:, :2] = 1001
    panoptic[4:, 4:] = 4000
    ids, segments = to_coco_segments(panoptic, THINGS, 1000, {0: 0.5, 1001: 0.75})
    assert ids.dtype == np.int32 and set(np.unique(ids)) == {0, 1, 2, 3}
    assert (ids == 0).sum() == (panoptic == -1).sum().item()
    for s in segments:
        mask = ids == s["id"]
        assert s["area"] == mask.sum() and np.array_equal(decode_rle(s["rle"]), mask)
        assert s["rle"] == encode_rle(mask)
    assert [s["score"] for s in segments] == [0.5, 0.75, 0.0]
    assert [s["bbox"] for s in segments] == [[0, 0, 7, 3], [0, 3, 2, 3], [4, 4, 3, 2]]


@pytest.mark.parametrize("seed", range(5))
def test_segment_rle_matches_encode_rle_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 4, (9, 11)).astype(np.int32)
    for seg_id in range(4):
        cols = np.flatnonzero((ids == seg_id).any(0))
        if cols.size:
            assert _segment_rle(ids, seg_id, int(cols[0]), int(cols[-1])) == encode_rle(ids == seg_id)
