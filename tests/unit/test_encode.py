"""Label map PNG, COCO RLE and polygon encodings."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from service.imaging.encode import (
    class_pixel_counts,
    decode_label_png,
    decode_rle,
    encode_class_polygons,
    encode_class_rles,
    encode_label_png,
    encode_polygons,
    encode_rgb_png,
    encode_rle,
    rle_area,
    rle_bbox,
)

# pycocotools 2.0.11's Cython decode trips numpy 2's __array__(copy=) deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def random_labels(seed: int, shape: tuple[int, int] = (37, 53), classes: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, shape).astype(np.uint8)


# --- PNG -------------------------------------------------------------------------------------------


def test_png_8bit_round_trip() -> None:
    labels = random_labels(0, classes=256)
    data = encode_label_png(labels)
    assert Image.open(io.BytesIO(data)).mode == "L"
    out = decode_label_png(data)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)


def test_png_16bit_round_trip() -> None:
    labels = np.random.default_rng(1).integers(0, 65536, (19, 23)).astype(np.uint16)
    labels[0, 0] = 65535
    data = encode_label_png(labels)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_label_png(data)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, labels)


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [([0, 255], np.int64, np.uint8), ([0, 256], np.int32, np.uint16), ([1, 0], np.bool_, np.uint8)],
)
def test_png_other_dtypes_pick_the_smallest(values: list[int], dtype: type, expected: type) -> None:
    labels = np.array([values], dtype=dtype)
    out = decode_label_png(encode_label_png(labels))
    assert out.dtype == expected
    np.testing.assert_array_equal(out, labels.astype(np.int64))


@pytest.mark.parametrize(
    "labels",
    [
        np.array([[0, 65536]], np.int64),
        np.array([[-1, 0]], np.int16),
        np.zeros((2, 2), np.float32),
        np.zeros((2, 2, 3), np.uint8),
        np.zeros((0, 4), np.uint8),
    ],
)
def test_png_refuses_what_it_cannot_hold(labels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_label_png(labels)


def test_png_accepts_non_contiguous_views() -> None:
    labels = random_labels(2)[::2, ::3]
    np.testing.assert_array_equal(decode_label_png(encode_label_png(labels)), labels)


def test_rgb_png_round_trip() -> None:
    image = np.random.default_rng(3).integers(0, 256, (9, 11, 3)).astype(np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_rgb_png(image))))
    np.testing.assert_array_equal(decoded, image)
    with pytest.raises(ValueError):
        encode_rgb_png(image[:, :, 0])


# --- counts ----------------------------------------------------------------------------------------


def test_class_pixel_counts() -> None:
    labels = np.array([[0, 0, 2], [2, 2, 5]], np.uint8)
    assert class_pixel_counts(labels, num_classes=3) == {0: 2, 2: 3, 5: 1}
    big = np.array([[0, 70000, 70000]], np.int64)  # sparse large ids take the unique() path
    assert class_pixel_counts(big, num_classes=3) == {0: 1, 70000: 2}


def test_class_pixel_counts_match_numpy_on_large_maps() -> None:
    labels = np.random.default_rng(4).integers(0, 19, (1200, 1000)).astype(np.uint8)  # > one chunk
    ids, counts = np.unique(labels, return_counts=True)
    assert class_pixel_counts(labels, 19) == dict(zip(ids.tolist(), counts.tolist(), strict=True))


# --- RLE -------------------------------------------------------------------------------------------


def test_rle_hand_built_case() -> None:
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    rle = encode_rle(mask)
    # Column-major runs: 5 zeros, 2 ones, 2 zeros, 2 ones, 2 zeros, 2 ones, 5 zeros (LEB-style chars).
    assert rle == {"size": [4, 5], "counts": "5220003"}
    assert rle_area(rle) == 6
    assert rle_bbox(rle) == [1, 1, 3, 2]
    out = decode_rle(rle)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, mask)


def test_rle_is_json_ready_and_accepts_bytes_and_uncompressed() -> None:
    import json

    mask = random_labels(5) == 3
    rle = encode_rle(mask.astype(np.uint8))
    assert json.loads(json.dumps(rle)) == rle
    np.testing.assert_array_equal(decode_rle({**rle, "counts": rle["counts"].encode()}), mask)
    # Uncompressed COCO RLE: column-major run lengths starting with zeros.
    column_major = np.array([[0, 1], [1, 1]], np.uint8).flatten(order="F")  # 0, 1, 1, 1
    assert decode_rle({"size": [2, 2], "counts": [1, 3]}).flatten(order="F").tolist() == column_major.tolist()


def test_rle_of_empty_and_full_masks() -> None:
    empty = encode_rle(np.zeros((3, 4), bool))
    assert rle_area(empty) == 0 and rle_bbox(empty) == [0, 0, 0, 0]
    full = encode_rle(np.ones((3, 4), np.uint8))
    assert rle_area(full) == 12 and rle_bbox(full) == [0, 0, 4, 3]


@pytest.mark.parametrize("seed", range(5))
def test_class_rles_round_trip_random_maps(seed: int) -> None:
    labels = random_labels(seed, classes=5 + seed)
    labels[labels == 2] = 0  # a class that is absent must not be listed
    entries = encode_class_rles(labels)
    assert [e["class_id"] for e in entries] == sorted(set(np.unique(labels).tolist()))
    rebuilt = np.full(labels.shape, -1)
    for entry in entries:
        mask = decode_rle(entry["rle"])
        assert rle_area(entry["rle"]) == int((labels == entry["class_id"]).sum())
        assert (rebuilt[mask] == -1).all()
        rebuilt[mask] = entry["class_id"]
    np.testing.assert_array_equal(rebuilt, labels)


def test_class_rles_filter() -> None:
    labels = np.array([[0, 1], [3, 3]], np.uint16)
    assert [e["class_id"] for e in encode_class_rles(labels, class_ids=[3, 4, 1])] == [1, 3]


# --- polygons --------------------------------------------------------------------------------------


def test_polygon_of_a_rectangle_is_its_corners_and_lossy() -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:6, 3:9] = 1  # rows 2..5, cols 3..8
    polygons = encode_polygons(mask)
    assert len(polygons) == 1
    corners = {tuple(p) for p in np.array(polygons[0]).reshape(-1, 2).tolist()}
    assert corners == {(3.0, 2.0), (8.0, 2.0), (8.0, 5.0), (3.0, 5.0)}  # (x, y) on pixel centres
    polygon_area = cv2.contourArea(np.array(polygons[0], np.float32).reshape(-1, 1, 2))
    assert polygon_area == 15 < mask.sum() == 24  # lossy: boundary pixels are cut in half


def test_polygons_keep_holes_as_separate_rings() -> None:
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False
    polygons = encode_polygons(mask)
    assert len(polygons) == 2
    signed = [cv2.contourArea(np.array(p, np.float32).reshape(-1, 1, 2), oriented=True) for p in polygons]
    assert signed[0] * signed[1] < 0  # outer ring and hole run in opposite directions


def test_polygons_drop_degenerate_rings_and_simplify() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[1, 1] = 1  # a single pixel: a one-point contour
    mask[4, 2:6] = 1  # a 1-pixel line: a two-point contour
    assert encode_polygons(mask) == []
    disc = np.zeros((60, 60), np.uint8)
    cv2.circle(disc, (30, 30), 20, 1, -1)
    detailed, simple = encode_polygons(disc)[0], encode_polygons(disc, tolerance=2.0)[0]
    assert 3 <= len(simple) // 2 < len(detailed) // 2
    with pytest.raises(ValueError):
        encode_polygons(disc, tolerance=-1)


def test_class_polygons() -> None:
    labels = np.zeros((6, 6), np.int32)
    labels[1:4, 1:4] = 2
    labels[5, 5] = 7  # present but too small for a polygon
    entries = encode_class_polygons(labels, class_ids=[2, 7])
    assert [e["class_id"] for e in entries] == [2, 7]
    assert len(entries[0]["polygons"]) == 1 and entries[1]["polygons"] == []
